-- The caseload service's own copy of the roster's students, built from roster events.
-- as_of is the roster event's time: an older event never overwrites a newer one.
CREATE TABLE students (
    student_id  uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    school_id   text        NOT NULL,
    grade       text        NOT NULL,
    given_name  text        NOT NULL,
    family_name text        NOT NULL,
    state_id    text,
    as_of       timestamptz NOT NULL
);
CREATE INDEX students_by_school ON students (district_id, school_id, student_id);
