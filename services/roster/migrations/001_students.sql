-- Students as the roster holds them, one row per (district, SIS id).
CREATE TABLE students (
    student_id  uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    source_id   text        NOT NULL,
    school_id   text        NOT NULL,
    grade       text        NOT NULL,
    given_name  text        NOT NULL,
    family_name text        NOT NULL,
    birth_date  date,
    email       text,
    state_id    text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, source_id)
);
CREATE INDEX students_by_school ON students (district_id, school_id, student_id);
