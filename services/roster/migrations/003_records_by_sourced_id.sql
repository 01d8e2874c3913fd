-- Records follow their sourcedId; "who is in which class" follows the calendar; a student
-- may belong to several schools; reports name each record's sourcedId.

-- Dual enrolment: every school the student belongs to, the home school (school_id) first.
ALTER TABLE students ADD COLUMN school_ids text[];
UPDATE students SET school_ids = ARRAY[school_id];
ALTER TABLE students ALTER COLUMN school_ids SET NOT NULL;
CREATE INDEX students_by_schools ON students USING gin (school_ids);

-- Terms and school years, whose dates give a class its dates.
CREATE TABLE academic_sessions (
    district_id      text NOT NULL,
    source_id        text NOT NULL,
    type             text NOT NULL,
    start_date       date,
    end_date         date,
    parent_source_id text,
    PRIMARY KEY (district_id, source_id)
);

-- A class's terms, and the dates they span (domain.class_span).
ALTER TABLE classes
    ADD COLUMN term_source_ids text[] NOT NULL DEFAULT '{}',
    ADD COLUMN starts date,
    ADD COLUMN ends   date;

-- Who is in which class as the roster has published it (one row per class and person):
-- the table that was `enrollments` before records were kept by their sourcedId.
-- Keyed person first: one key serves "this person's classes" and "this member".
ALTER TABLE enrollments RENAME TO class_members;
ALTER TABLE class_members DROP CONSTRAINT enrollments_pkey;
DROP INDEX enrollments_by_user;
ALTER TABLE class_members ADD CONSTRAINT class_members_pkey PRIMARY KEY (district_id, user_source_id, class_source_id);

-- The district's enrolment records, by sourcedId, as its files state them. Several records
-- may name one person in one class (a re-enrolment under a new sourcedId): they make one
-- class member. A record counts while today is within its dates (each falling back to its
-- class's terms' dates).
CREATE TABLE enrollments (
    district_id     text    NOT NULL,
    source_id       text    NOT NULL,
    class_source_id text    NOT NULL,
    user_source_id  text    NOT NULL,
    role            text    NOT NULL,
    is_primary      boolean NOT NULL,
    begin_date      date,
    end_date        date,
    PRIMARY KEY (district_id, source_id)
);
-- A person's records, and a member's. (Eight million records for a city: every index is
-- paid for by each import; the calendar step and a class's records read by scanning.)
CREATE INDEX enrollments_by_person ON enrollments (district_id, user_source_id, class_source_id);

-- Rows held before records had their sourcedId: one legacy record per class member. The
-- next bulk file replaces them; a delta's tobedeleted row finds one by class and user.
INSERT INTO enrollments (district_id, source_id, class_source_id, user_source_id, role, is_primary)
SELECT district_id, 'legacy:' || class_source_id || '|' || user_source_id, class_source_id, user_source_id, role,
       is_primary
FROM class_members;

-- The day up to which each district's class members follow the calendar.
CREATE TABLE district_calendar (
    district_id  text PRIMARY KEY,
    evaluated_on date NOT NULL
);

-- The district org a district's files name (orgs.csv, type district): a package naming
-- another is held until someone confirms it.
CREATE TABLE district_orgs (
    district_id   text PRIMARY KEY,
    org_source_id text NOT NULL,
    identifier    text,
    name          text,
    import_id     uuid NOT NULL
);

ALTER TABLE import_problems ADD COLUMN source_id text;

-- The latest row each user and class had in a file, also when it was rejected.
UPDATE last_file_rows SET entity = 'user' WHERE entity = 'student';
ALTER TABLE last_file_rows
    ADD COLUMN accepted boolean NOT NULL DEFAULT true,
    ADD COLUMN reasons  text[]  NOT NULL DEFAULT '{}';

-- A class member carries what its removal event says (the class's and the person's ids,
-- the class's school), so removing it needs neither the class nor the person any more.
ALTER TABLE class_members
    ADD COLUMN class_id  uuid,
    ADD COLUMN person_id uuid,
    ADD COLUMN school_id text;
UPDATE class_members m SET class_id = c.class_id, school_id = c.school_id
FROM classes c WHERE c.district_id = m.district_id AND c.source_id = m.class_source_id;
UPDATE class_members m SET person_id = s.student_id
FROM students s WHERE m.role = 'student' AND s.district_id = m.district_id AND s.source_id = m.user_source_id;
UPDATE class_members m SET person_id = s.staff_id
FROM staff s WHERE m.role <> 'student' AND s.district_id = m.district_id AND s.source_id = m.user_source_id;
-- A member whose class or person the roster never held could not be published: let it go.
DELETE FROM class_members WHERE class_id IS NULL OR person_id IS NULL;
ALTER TABLE class_members
    ALTER COLUMN class_id SET NOT NULL,
    ALTER COLUMN person_id SET NOT NULL,
    ALTER COLUMN school_id SET NOT NULL;
