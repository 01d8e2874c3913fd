-- The functions PostgreSQL runs on a statement's rows probe by index whatever the statistics
-- say (as services/kit/db.py probing_by_index does for the handlers' own statements).
--
-- A PL/pgSQL function's statements are prepared statements too: planned for their values
-- five times, then one generic plan may be kept for the rest of the session. Kept while
-- cases was analysed empty (a fresh service, a district's first burst), the task trigger's
-- look-up of its case read all of cases for every task stored: at 5,000 triggers a second
-- (one in seven assigns a task) PostgreSQL took 409 us a trigger instead of 85, and the
-- triggers backed up to a p99 of 37 s (bench/run --scale 0.25, 2026-12-07). The same holds
-- for a case's tasks found by case when cases change or go (tasks_by_case).
ALTER FUNCTION task_takes_its_case_status() SET enable_seqscan = off;
ALTER FUNCTION tasks_follow_changed_cases() SET enable_seqscan = off;
ALTER FUNCTION tasks_follow_deleted_cases() SET enable_seqscan = off;
