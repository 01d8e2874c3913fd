-- Every service's own projection of caseload.access.v1: the access levels each staff
-- member holds, per school (NULL: district-wide), on each basis. A revoked grant is kept
-- (held = false) so that an older event read again never brings it back.
CREATE TABLE access_held (
    grant_id    uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    staff_email text        NOT NULL,
    level       text        NOT NULL,
    school_id   text,
    basis       text        NOT NULL,
    granted_by  text,
    held        boolean     NOT NULL,
    as_of       timestamptz NOT NULL
);
CREATE INDEX access_held_by_person ON access_held (district_id, staff_email) WHERE held;
