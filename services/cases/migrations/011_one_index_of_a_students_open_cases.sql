-- A student's open cases were in two indexes (issue 14: each opened case wrote six index
-- entries): cases_one_open_per_student (unique, the cases opened here: seed 004's one open
-- case per student) and cases_open_by_student (every open case, transferred in or not: the
-- trigger path's probe, migration 009). One index now does both. Its key is the student and,
-- for a case transferred in, the request and source case it came from (both NULL for a case
-- opened here, both set for one transferred in: cases_transferred_in_says_from_where); with
-- NULLS NOT DISTINCT the cases opened here share one key per student, so at most one of them
-- is open, and a transferred-in case (one per request and source case: its id is derived
-- from them, domain.transferred_case_id) never collides. The probe
-- `student_id = $1 AND status = 'open'` reads its leading column.
CREATE UNIQUE INDEX cases_open_of_student ON cases (student_id, transferred_in_request, transferred_in_case_id)
    NULLS NOT DISTINCT WHERE status = 'open';
DROP INDEX cases_one_open_per_student;
DROP INDEX cases_open_by_student;
ALTER INDEX cases_open_of_student RENAME TO cases_one_open_per_student;
