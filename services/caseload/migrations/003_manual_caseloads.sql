-- Manual caseloads (seed 000: point persons and supports), provider caseloads (seed 001:
-- mandates, provider authorisations, first attendance) and the change feed.

-- Outside systems name students by their SIS id; the roster events carry it.
ALTER TABLE students ADD COLUMN source_id text;
CREATE INDEX students_by_source_id ON students (district_id, source_id);
CREATE INDEX students_by_school_grade ON students (district_id, school_id, grade) WHERE status = 'active';

ALTER TABLE staff ADD COLUMN school_ids text[] NOT NULL DEFAULT '{}';
CREATE INDEX staff_by_email ON staff (district_id, lower(email));

-- A district's point person types and the school levels each is available at (ES, MS,
-- HS). A district with no rows here uses the seed's defaults (domain.py).
CREATE TABLE point_person_types (
    district_id text        NOT NULL,
    type        text        NOT NULL,
    label       text        NOT NULL,
    levels      text[]      NOT NULL,
    position    int         NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (district_id, type)
);

-- At most one point person of each type per student.
CREATE TABLE point_persons (
    student_id  uuid        NOT NULL,
    type        text        NOT NULL,
    district_id text        NOT NULL,
    owner_email text        NOT NULL,
    assigned_by text        NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (student_id, type)
);

-- Who was each student's point person, until when, and who changed it.
CREATE TABLE point_person_history (
    student_id  uuid        NOT NULL,
    type        text        NOT NULL,
    district_id text        NOT NULL,
    owner_email text        NOT NULL,
    assigned_by text        NOT NULL,
    assigned_at timestamptz NOT NULL,
    ended_by    text        NOT NULL,
    ended_at    timestamptz NOT NULL DEFAULT now(),
    ended_why   text        NOT NULL  -- replaced, removed
);
CREATE INDEX point_person_history_by_student ON point_person_history (student_id, ended_at);

CREATE TABLE supports (
    support_id  uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    school_id   text        NOT NULL,
    name        text        NOT NULL,
    lead_email  text        NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, school_id, name)
);

CREATE TABLE support_members (
    support_id  uuid        NOT NULL REFERENCES supports ON DELETE CASCADE,
    student_id  uuid        NOT NULL,
    added_by    text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (support_id, student_id)
);
CREATE INDEX support_members_by_student ON support_members (student_id);

-- Mandates arrive from the special education system, by the student's SIS id; they may
-- arrive before the roster knows the student.
CREATE TABLE mandates (
    district_id       text        NOT NULL,
    mandate_id        text        NOT NULL,
    student_source_id text        NOT NULL,
    service           text        NOT NULL,
    start_date        date,
    end_date          date,
    active            boolean     NOT NULL,
    recorded_at       timestamptz NOT NULL,
    ended_at          timestamptz,
    ended_why         text,
    PRIMARY KEY (district_id, mandate_id)
);
CREATE INDEX mandates_by_student ON mandates (district_id, student_source_id);

-- Which schools a provider may serve ('*': the whole district).
CREATE TABLE provider_authorisations (
    district_id    text        NOT NULL,
    provider_email text        NOT NULL,
    school_id      text        NOT NULL,
    granted_by     text        NOT NULL,
    granted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (district_id, provider_email, school_id)
);

-- A provider serving a student under a mandate; ended links stay, as history.
CREATE TABLE provider_links (
    link_id           bigserial   PRIMARY KEY,
    district_id       text        NOT NULL,
    student_source_id text        NOT NULL,
    mandate_id        text        NOT NULL,
    provider_email    text        NOT NULL,
    added_via         text        NOT NULL,  -- supervisor, provider, first_attendance
    added_by          text        NOT NULL,
    added_at          timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz,
    ended_by          text,
    ended_why         text
);
CREATE UNIQUE INDEX provider_links_active ON provider_links (district_id, mandate_id, provider_email)
    WHERE ended_at IS NULL;
CREATE INDEX provider_links_by_student ON provider_links (district_id, student_source_id);

-- First attendances, applied at once when a mandate and the provider's authorisation
-- allow it, else kept pending (and applied when they do).
CREATE TABLE first_attendances (
    event_id          uuid        PRIMARY KEY,
    district_id       text        NOT NULL,
    student_source_id text        NOT NULL,
    provider_email    text        NOT NULL,
    service           text        NOT NULL,
    mandate_id        text,
    session_date      date        NOT NULL,
    status            text        NOT NULL,  -- applied, pending
    waiting_for       text,                  -- the rule not yet met, while pending
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX first_attendances_pending ON first_attendances (district_id, student_source_id) WHERE status = 'pending';

-- The change feed: every membership added or removed. A reader pages by (xid, seq) and is
-- served only rows of transactions older than every open one: any row that commits later
-- has a larger xid, so paging never skips one.
CREATE TABLE membership_changes (
    seq         bigserial   PRIMARY KEY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    at          timestamptz NOT NULL DEFAULT now(),
    change      text        NOT NULL,  -- added, removed
    district_id text        NOT NULL,
    owner_email text        NOT NULL,
    student_id  uuid        NOT NULL,
    reason      text        NOT NULL,
    source_ref  text        NOT NULL,
    detail      text        NOT NULL,
    school_id   text        NOT NULL
);
CREATE INDEX membership_changes_by_district ON membership_changes (district_id, xid, seq);
CREATE INDEX membership_changes_by_time ON membership_changes (district_id, at);

-- Statement-level triggers with transition tables: every path that changes memberships
-- feeds the change log, at one INSERT per statement however many rows it touched.
CREATE FUNCTION membership_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO membership_changes (change, district_id, owner_email, student_id, reason, source_ref, detail, school_id)
    SELECT 'added', district_id, owner_email, student_id, reason, source_ref, detail, school_id FROM added_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION membership_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO membership_changes (change, district_id, owner_email, student_id, reason, source_ref, detail, school_id)
    SELECT 'removed', district_id, owner_email, student_id, reason, source_ref, detail, school_id FROM removed_rows;
    RETURN NULL;
END $$;

CREATE TRIGGER memberships_added AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS added_rows FOR EACH STATEMENT EXECUTE FUNCTION membership_added();
CREATE TRIGGER memberships_removed AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS removed_rows FOR EACH STATEMENT EXECUTE FUNCTION membership_removed();
