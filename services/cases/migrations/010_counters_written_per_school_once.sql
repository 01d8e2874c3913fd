-- The counters a batch of opened cases updates (issue 14). A batch of 1,600 triggers opens
-- cases at some 800 of a district's 1,800 schools, and each school took five counter rows:
-- its open cases, its cases with no team, no team leader and no case manager (a case opens
-- with none: key ''), all in open_case_counts, and its open cases again among the
-- district's (district_open_case_counts, whose ranking index made every such update write
-- both indexes). Those were a quarter of PostgreSQL's time on the trigger path
-- (bench/cases.py --only throughput, pg_stat_statements).
--
-- Now a school's counters keep only what cannot be derived: its open cases, and its open
-- cases by each team, leader and manager named. Its cases with none are its open cases less
-- those with one (store._schools_board). The district's school ranking is read from the
-- schools' own rows (open_case_counts, dimension 'school': one row per school, read in full
-- and ranked, whatever the number of cases). The district's own rows are kept as they were
-- ('district', and team, team_leader, case_manager with '' for none: one row each a batch).
CREATE OR REPLACE FUNCTION count_open_cases(changes open_case_change[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO district_open_case_counts AS t (district_id, dimension, key, open_cases)
    SELECT c.district_id, d.dimension, d.key, sum(c.n)
    FROM unnest(changes) c, LATERAL (VALUES ('district', ''),
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
    WHERE d.dimension = 'school' OR d.key <> ''
    GROUP BY 1, 2, 3, 4 HAVING sum(c.n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
END $$;

DELETE FROM open_case_counts WHERE dimension <> 'school' AND key = '';
DELETE FROM district_open_case_counts WHERE dimension = 'school';
