-- The dashboard reads counts kept as cases change, not aggregates over every case: a
-- district of 500,000 cases answers from a few thousand counter rows.

-- Open cases per school and per school and team / team leader / case manager.
CREATE TABLE open_case_counts (
    district_id text   NOT NULL,
    school_id   text   NOT NULL,
    dimension   text   NOT NULL,  -- school, team, team_leader, case_manager
    key         text   NOT NULL,  -- '' where the case has none
    open_cases  bigint NOT NULL,
    PRIMARY KEY (district_id, dimension, school_id, key)
);

-- Cases opened per school, week and trigger kind.
CREATE TABLE weekly_openings (
    district_id  text   NOT NULL,
    school_id    text   NOT NULL,
    week         date   NOT NULL,
    trigger_kind text   NOT NULL,
    opened       bigint NOT NULL,
    PRIMARY KEY (district_id, week, school_id, trigger_kind)
);

-- Each statement's changes to cases become +1/-1 per counter, applied in key order (so two
-- transactions take the counter rows in the same order).
CREATE FUNCTION count_opened_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO weekly_openings AS w (district_id, school_id, week, trigger_kind, opened)
    SELECT district_id, school_id, date_trunc('week', opened_at)::date, trigger_kind, count(*)
    FROM new_cases GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, week, school_id, trigger_kind) DO UPDATE SET opened = w.opened + EXCLUDED.opened;
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT c.district_id, c.school_id, d.dimension, d.key, 1 FROM new_cases c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                              ('team_leader', coalesce(c.team_leader, '')),
                              ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key) WHERE c.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;

CREATE FUNCTION count_changed_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT c.district_id, c.school_id, d.dimension, d.key, 1 FROM new_cases c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                              ('team_leader', coalesce(c.team_leader, '')),
                              ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key) WHERE c.status = 'open'
        UNION ALL SELECT o.district_id, o.school_id, d.dimension, d.key, -1 FROM old_cases o, LATERAL (VALUES ('school', ''), ('team', coalesce(o.team_name, '')),
                              ('team_leader', coalesce(o.team_leader, '')),
                              ('case_manager', coalesce(o.case_manager, ''))) AS d(dimension, key) WHERE o.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;

CREATE FUNCTION count_deleted_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT o.district_id, o.school_id, d.dimension, d.key, -1 FROM old_cases o, LATERAL (VALUES ('school', ''), ('team', coalesce(o.team_name, '')),
                              ('team_leader', coalesce(o.team_leader, '')),
                              ('case_manager', coalesce(o.case_manager, ''))) AS d(dimension, key) WHERE o.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;

CREATE TRIGGER cases_counted_insert AFTER INSERT ON cases
    REFERENCING NEW TABLE AS new_cases FOR EACH STATEMENT EXECUTE FUNCTION count_opened_cases();
CREATE TRIGGER cases_counted_update AFTER UPDATE ON cases
    REFERENCING OLD TABLE AS old_cases NEW TABLE AS new_cases FOR EACH STATEMENT EXECUTE FUNCTION count_changed_cases();
CREATE TRIGGER cases_counted_delete AFTER DELETE ON cases
    REFERENCING OLD TABLE AS old_cases FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_cases();

-- Overdue tasks by school without reading every case.
ALTER TABLE tasks ADD COLUMN school_id text;
UPDATE tasks t SET school_id = s.school_id FROM students s WHERE s.student_id = t.student_id;
CREATE INDEX tasks_overdue_by_school ON tasks (district_id, school_id, due_date) WHERE status = 'open';

-- Search: a person of concern by name, a team, leader or manager, in case-number order.
CREATE INDEX students_by_family_name ON students (district_id, lower(family_name) text_pattern_ops);
CREATE INDEX students_by_full_name ON students (district_id, lower(given_name || ' ' || family_name) text_pattern_ops);
CREATE INDEX cases_by_team_number ON cases (district_id, lower(team_name), case_number);
CREATE INDEX cases_by_leader_number ON cases (district_id, lower(team_leader), case_number);
CREATE INDEX cases_by_manager_number ON cases (district_id, lower(case_manager), case_number);
DROP INDEX cases_by_team;
DROP INDEX cases_by_leader;
DROP INDEX cases_by_manager;

-- Counts of the cases already there.
INSERT INTO open_case_counts (district_id, school_id, dimension, key, open_cases)
SELECT c.district_id, c.school_id, d.dimension, d.key, count(*)
FROM cases c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                              ('team_leader', coalesce(c.team_leader, '')),
                              ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key)
WHERE c.status = 'open' GROUP BY 1, 2, 3, 4;
INSERT INTO weekly_openings (district_id, school_id, week, trigger_kind, opened)
SELECT district_id, school_id, date_trunc('week', opened_at)::date, trigger_kind, count(*) FROM cases GROUP BY 1, 2, 3, 4;
