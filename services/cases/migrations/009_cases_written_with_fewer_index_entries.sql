-- Each case opened wrote seven index entries; one serves no read (issue 14, bench/cases.py
-- --only throughput: the INSERT of a batch's cases was a fifth of PostgreSQL's time on the
-- trigger path, its triggers aside). cases_by_week (001) was the dashboard's openings by week,
-- read from the counters since 002.
-- (cases_open_by_student stays, though cases_by_student could answer the trigger path's
-- probe: without it, a generic plan made while the cases table was young probed a student's
-- open cases by walking cases_open_by_school, every open case for each student.)
DROP INDEX cases_by_week;
