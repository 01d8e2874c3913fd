-- Dual enrolment: every school a student is enrolled in (domain.student_schools: the home
-- school among them, sorted, so the roster's order changes nothing). Staff of each of these
-- schools see the student. Students held so far were enrolled in their school alone.
ALTER TABLE students ADD COLUMN school_ids text[];
UPDATE students SET school_ids = ARRAY[school_id];
ALTER TABLE students ALTER COLUMN school_ids SET NOT NULL,
    ADD CONSTRAINT students_home_school_is_one_of_their_schools CHECK (school_id = ANY (school_ids));
-- Scoping by school (caseload pages, a school's levels, first attendances): which students
-- have one of these schools.
CREATE INDEX students_by_schools ON students USING gin (school_ids);
