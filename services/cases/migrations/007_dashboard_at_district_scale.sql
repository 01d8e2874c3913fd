-- The district dashboard at district scale (issue 14). A district admin's board summed the
-- schools' counters (thousands of case-manager rows, a hundred thousand week rows) and counted
-- every overdue task joined to its case (tens of thousands at 500,000 cases) on every request.
-- Now the district's totals are counters of their own, overdue tasks are counted by school and
-- due date (summed for the dates before today: exact whatever day it is), and the oldest
-- overdue tasks are the first entries of an index. A board reads a few hundred rows at most.

-- A task of a case transferred out is no one's work here (seed 003): that fact is kept on the
-- task row, so the dashboard's filters need no join. It follows the case: a task gets it from
-- its case as it is stored or joins a case (the case row share-locked, so a transfer out
-- committing meanwhile is seen), and a case's tasks take it as the case's status changes (no
-- case is stored transferred out: a transfer out is a change of status).
ALTER TABLE tasks ADD COLUMN case_transferred_out boolean NOT NULL DEFAULT false;
UPDATE tasks t SET case_transferred_out = true FROM cases c WHERE c.case_id = t.case_id AND c.status = 'transferred_out';

CREATE FUNCTION task_takes_its_case_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    transferred boolean;
BEGIN
    IF NEW.case_id IS NOT NULL THEN
        SELECT status = 'transferred_out' INTO transferred FROM cases WHERE case_id = NEW.case_id FOR SHARE;
    END IF;
    NEW.case_transferred_out := coalesce(transferred, false);
    RETURN NEW;
END $$;

CREATE FUNCTION tasks_follow_changed_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks t SET case_transferred_out = n.status = 'transferred_out'
    FROM new_cases n JOIN old_cases o ON o.case_id = n.case_id
    WHERE t.case_id = n.case_id AND (n.status = 'transferred_out') <> (o.status = 'transferred_out')
      AND t.case_transferred_out <> (n.status = 'transferred_out');
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_follow_deleted_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks t SET case_transferred_out = false
    FROM old_cases o WHERE t.case_id = o.case_id AND t.case_transferred_out;
    RETURN NULL;
END $$;

CREATE TRIGGER task_takes_its_case_status BEFORE INSERT OR UPDATE OF case_id ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_takes_its_case_status();
-- Named to run after cases_counted_* (statement triggers of one event run in name order).
CREATE TRIGGER cases_tasks_follow_update AFTER UPDATE ON cases
    REFERENCING OLD TABLE AS old_cases NEW TABLE AS new_cases FOR EACH STATEMENT EXECUTE FUNCTION tasks_follow_changed_cases();
CREATE TRIGGER cases_tasks_follow_delete AFTER DELETE ON cases
    REFERENCING OLD TABLE AS old_cases FOR EACH STATEMENT EXECUTE FUNCTION tasks_follow_deleted_cases();

-- The oldest overdue tasks, walked in order (ORDER BY due_date, task_id LIMIT 50), for the
-- district and for a school ('' for a task with no school here). They replace 001's and 002's.
DROP INDEX tasks_overdue;
DROP INDEX tasks_overdue_by_school;
CREATE INDEX tasks_open_by_due ON tasks (district_id, due_date, task_id)
    WHERE status = 'open' AND NOT case_transferred_out;
CREATE INDEX tasks_open_by_school_due ON tasks (district_id, (coalesce(school_id, '')), due_date, task_id)
    WHERE status = 'open' AND NOT case_transferred_out;

-- The district's totals beside the schools' counters: open cases by dimension ('district' key
-- '' is every open case; 'school' keyed by school, '' for none; team, team_leader,
-- case_manager as in open_case_counts), ranked by an index; openings by week and kind.
CREATE TABLE district_open_case_counts (
    district_id text   NOT NULL,
    dimension   text   NOT NULL,  -- district, school, team, team_leader, case_manager
    key         text   NOT NULL,
    open_cases  bigint NOT NULL,
    PRIMARY KEY (district_id, dimension, key)
);
CREATE INDEX district_open_case_counts_ranked ON district_open_case_counts (district_id, dimension, open_cases DESC, key);

CREATE TABLE district_weekly_openings (
    district_id  text   NOT NULL,
    week         date   NOT NULL,
    trigger_kind text   NOT NULL,
    opened       bigint NOT NULL,
    PRIMARY KEY (district_id, week, trigger_kind)
);

-- Open tasks with a due date, not of a case transferred out, by school ('' for none) and due
-- date, and by due date for the district: overdue today is the sum before today.
CREATE TABLE open_task_counts (
    district_id text   NOT NULL,
    school_id   text   NOT NULL,
    due_date    date   NOT NULL,
    open_tasks  bigint NOT NULL,
    PRIMARY KEY (district_id, school_id, due_date)
);

CREATE TABLE district_open_task_counts (
    district_id text   NOT NULL,
    due_date    date   NOT NULL,
    open_tasks  bigint NOT NULL,
    PRIMARY KEY (district_id, due_date)
);

-- Every writer takes counter rows in one order, so none waits for another in a cycle: the
-- district's row before its schools', each table in key order; cases' counters before
-- tasks' (a statement on cases may change its tasks, never the other way round). The
-- district's rows come first: a transaction holding one, wanting a school row, only ever
-- waits for a writer that holds nothing it wants.
CREATE TYPE open_case_change AS (district_id text, school_id text, team_name text, team_leader text,
                                 case_manager text, n int);
CREATE TYPE open_task_change AS (district_id text, school_id text, due_date date, n int);

CREATE FUNCTION count_open_cases(changes open_case_change[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO district_open_case_counts AS t (district_id, dimension, key, open_cases)
    SELECT c.district_id, d.dimension, d.key, sum(c.n)
    FROM unnest(changes) c, LATERAL (VALUES ('district', ''), ('school', coalesce(c.school_id, '')),
                                            ('team', coalesce(c.team_name, '')),
                                            ('team_leader', coalesce(c.team_leader, '')),
                                            ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key)
    GROUP BY 1, 2, 3 HAVING sum(c.n) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (district_id, dimension, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT c.district_id, coalesce(c.school_id, ''), d.dimension, d.key, sum(c.n)
    FROM unnest(changes) c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                                            ('team_leader', coalesce(c.team_leader, '')),
                                            ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key)
    GROUP BY 1, 2, 3, 4 HAVING sum(c.n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
END $$;

CREATE FUNCTION count_open_tasks(changes open_task_change[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO district_open_task_counts AS t (district_id, due_date, open_tasks)
    SELECT c.district_id, c.due_date, sum(c.n) FROM unnest(changes) c
    GROUP BY 1, 2 HAVING sum(c.n) <> 0 ORDER BY 1, 2
    ON CONFLICT (district_id, due_date) DO UPDATE SET open_tasks = t.open_tasks + EXCLUDED.open_tasks;
    INSERT INTO open_task_counts AS t (district_id, school_id, due_date, open_tasks)
    SELECT c.district_id, coalesce(c.school_id, ''), c.due_date, sum(c.n) FROM unnest(changes) c
    GROUP BY 1, 2, 3 HAVING sum(c.n) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (district_id, school_id, due_date) DO UPDATE SET open_tasks = t.open_tasks + EXCLUDED.open_tasks;
END $$;

-- Cases (005's rules: a case with no school here counts under ''; an open case transferred in
-- counts as open here; openings count the cases opened here).
CREATE OR REPLACE FUNCTION count_opened_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO district_weekly_openings AS w (district_id, week, trigger_kind, opened)
    SELECT district_id, date_trunc('week', opened_at)::date, trigger_kind, count(*)
    FROM new_cases WHERE transferred_in_from IS NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (district_id, week, trigger_kind) DO UPDATE SET opened = w.opened + EXCLUDED.opened;
    INSERT INTO weekly_openings AS w (district_id, school_id, week, trigger_kind, opened)
    SELECT district_id, coalesce(school_id, ''), date_trunc('week', opened_at)::date, trigger_kind, count(*)
    FROM new_cases WHERE transferred_in_from IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, week, school_id, trigger_kind) DO UPDATE SET opened = w.opened + EXCLUDED.opened;
    PERFORM count_open_cases(ARRAY(
        SELECT ROW(district_id, school_id, team_name, team_leader, case_manager, 1)::open_case_change
        FROM new_cases WHERE status = 'open'));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_changed_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_open_cases(ARRAY(
        SELECT ROW(district_id, school_id, team_name, team_leader, case_manager, 1)::open_case_change
        FROM new_cases WHERE status = 'open'
        UNION ALL
        SELECT ROW(district_id, school_id, team_name, team_leader, case_manager, -1)::open_case_change
        FROM old_cases WHERE status = 'open'));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_deleted_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_open_cases(ARRAY(
        SELECT ROW(district_id, school_id, team_name, team_leader, case_manager, -1)::open_case_change
        FROM old_cases WHERE status = 'open'));
    RETURN NULL;
END $$;

-- Tasks: each statement's changes become +1/-1 per (school, due date), as for cases.
CREATE FUNCTION count_inserted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_open_tasks(ARRAY(
        SELECT ROW(district_id, school_id, due_date, 1)::open_task_change FROM new_tasks
        WHERE status = 'open' AND due_date IS NOT NULL AND NOT case_transferred_out));
    RETURN NULL;
END $$;

CREATE FUNCTION count_changed_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_open_tasks(ARRAY(
        SELECT ROW(district_id, school_id, due_date, 1)::open_task_change FROM new_tasks
        WHERE status = 'open' AND due_date IS NOT NULL AND NOT case_transferred_out
        UNION ALL
        SELECT ROW(district_id, school_id, due_date, -1)::open_task_change FROM old_tasks
        WHERE status = 'open' AND due_date IS NOT NULL AND NOT case_transferred_out));
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count_open_tasks(ARRAY(
        SELECT ROW(district_id, school_id, due_date, -1)::open_task_change FROM old_tasks
        WHERE status = 'open' AND due_date IS NOT NULL AND NOT case_transferred_out));
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_counted_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_tasks FOR EACH STATEMENT EXECUTE FUNCTION count_inserted_tasks();
CREATE TRIGGER tasks_counted_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_tasks NEW TABLE AS new_tasks FOR EACH STATEMENT EXECUTE FUNCTION count_changed_tasks();
CREATE TRIGGER tasks_counted_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_tasks FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_tasks();

-- Counts of what is already there.
INSERT INTO district_open_case_counts (district_id, dimension, key, open_cases)
SELECT district_id, 'district', '', sum(open_cases) FROM open_case_counts WHERE dimension = 'school'
GROUP BY 1 HAVING sum(open_cases) <> 0
UNION ALL
SELECT district_id, dimension, CASE WHEN dimension = 'school' THEN school_id ELSE key END, sum(open_cases)
FROM open_case_counts GROUP BY 1, 2, 3 HAVING sum(open_cases) <> 0;
INSERT INTO district_weekly_openings (district_id, week, trigger_kind, opened)
SELECT district_id, week, trigger_kind, sum(opened) FROM weekly_openings GROUP BY 1, 2, 3;
INSERT INTO open_task_counts (district_id, school_id, due_date, open_tasks)
SELECT district_id, coalesce(school_id, ''), due_date, count(*) FROM tasks
WHERE status = 'open' AND due_date IS NOT NULL AND NOT case_transferred_out GROUP BY 1, 2, 3;
INSERT INTO district_open_task_counts (district_id, due_date, open_tasks)
SELECT district_id, due_date, open_tasks FROM (
    SELECT district_id, due_date, sum(open_tasks) AS open_tasks FROM open_task_counts GROUP BY 1, 2) AS d;
