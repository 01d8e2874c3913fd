-- The functions that find a written student's caseloads probe memberships by its primary key
-- whatever the statistics say (as services/kit/db.py probing_by_index does for the handlers'
-- own statements). A PL/pgSQL function's statements are prepared statements: planned for their
-- values five times, then one generic plan may be kept for the session. Kept while memberships
-- was analysed empty (a fresh service, a district's first materialisation), it may read every
-- membership for each student written, as the cases service's task trigger read every case
-- for each task (cases migration 012).
ALTER FUNCTION caseload_pages_touched_by_student_rows() SET enable_seqscan = off;
ALTER FUNCTION caseload_pages_touched_by_student_changes() SET enable_seqscan = off;
