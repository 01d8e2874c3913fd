-- Access levels (seeds 000, 003). The caseload service is their home: access_held (the kit's
-- table, which every service keeps as its projection of caseload.access.v1) is here the
-- record itself, written with the events it publishes in one transaction.
-- A roster default belongs to the staff record that gives it.
ALTER TABLE access_held ADD COLUMN staff_id uuid;
CREATE INDEX access_held_by_staff ON access_held (staff_id) WHERE held AND staff_id IS NOT NULL;
CREATE INDEX access_held_by_place ON access_held (district_id, school_id, level) WHERE held;

-- Who granted or revoked what, when: every change, never updated.
CREATE TABLE access_history (
    id          bigserial   PRIMARY KEY,
    district_id text        NOT NULL,
    staff_email text        NOT NULL,
    level       text        NOT NULL,
    school_id   text,
    basis       text        NOT NULL,
    change      text        NOT NULL CHECK (change IN ('granted', 'revoked')),
    changed_by  text,
    reason      text,
    at          timestamptz NOT NULL
);
CREATE INDEX access_history_by_district ON access_history (district_id, id DESC);
CREATE INDEX access_history_by_person ON access_history (district_id, staff_email, id DESC);

-- A district's default levels per roster role (absent: the built-in default).
CREATE TABLE access_defaults (
    district_id text        NOT NULL,
    roster_role text        NOT NULL,
    levels      text[]      NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (district_id, roster_role)
);
