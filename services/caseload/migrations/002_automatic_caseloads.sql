-- The rest of the roster the caseload rules read (staff, classes, who is in which class),
-- and the caseloads themselves: one row per (owner, student, reason, what it refers to).
ALTER TABLE students ADD COLUMN status text NOT NULL DEFAULT 'active';

CREATE TABLE staff (
    staff_id    uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    source_id   text        NOT NULL,
    role        text        NOT NULL,
    email       text,
    active      boolean     NOT NULL,
    as_of       timestamptz NOT NULL
);

CREATE TABLE classes (
    class_id    uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    source_id   text        NOT NULL,
    school_id   text        NOT NULL,
    class_type  text        NOT NULL,
    title       text        NOT NULL,
    class_code  text,
    as_of       timestamptz NOT NULL
);

-- Enrolments may arrive before their class or person (other topics): rows are kept by id
-- and joined when the rest arrives.
CREATE TABLE class_members (
    class_id    uuid NOT NULL,
    person_id   uuid NOT NULL,
    role        text NOT NULL,
    district_id text NOT NULL,
    PRIMARY KEY (class_id, person_id)
);
CREATE INDEX class_members_by_person ON class_members (person_id);

CREATE TABLE memberships (
    owner_email text        NOT NULL,
    student_id  uuid        NOT NULL,
    reason      text        NOT NULL,
    source_ref  text        NOT NULL,
    district_id text        NOT NULL,
    school_id   text        NOT NULL,
    detail      text        NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (student_id, owner_email, reason, source_ref)
);
CREATE INDEX memberships_by_owner ON memberships (district_id, owner_email, student_id);
