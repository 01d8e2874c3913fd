-- Each case opened wrote seven index entries; two serve no read (issue 14, bench/cases.py
-- --only throughput: the INSERT of a batch's cases was a fifth of PostgreSQL's time on the
-- trigger path, its triggers aside).
-- cases_by_week (001) was the dashboard's openings by week, read from the counters since 002.
DROP INDEX cases_by_week;
-- cases_open_by_student (005) found a student's open cases, which cases_by_student (student_id,
-- opened_at) finds as well: a student has a handful of cases, read with the probe's heap
-- fetch either way (store._OPEN_CASES_OF).
DROP INDEX cases_open_by_student;
