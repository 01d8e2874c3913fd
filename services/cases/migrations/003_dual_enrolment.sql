-- Dual enrolment: every school a student is enrolled in (domain.student_schools: the home
-- school among them, sorted). Staff of each read the student's timeline and find them; a
-- case keeps the school it was opened at. Students held so far were at their school alone.
ALTER TABLE students ADD COLUMN school_ids text[];
UPDATE students SET school_ids = ARRAY[school_id];
ALTER TABLE students ALTER COLUMN school_ids SET NOT NULL,
    ADD CONSTRAINT students_home_school_is_one_of_their_schools CHECK (school_id = ANY (school_ids));
