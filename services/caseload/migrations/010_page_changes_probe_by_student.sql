-- The students a statement wrote find their caseloads' owners student by student, by the
-- primary key of memberships (OFFSET 0 keeps the subquery from being flattened into a join).
-- Joined as it was (migration 008), the planner hashed every membership of the service for
-- each batch of students: 40 ms for 2,000 students beside 110,000 memberships (scale 0.02),
-- three times the insert itself, and growing with the service's memberships.

CREATE OR REPLACE FUNCTION caseload_pages_touched_by_student_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT DISTINCT m.district_id, m.owner_email
    FROM touched_students t
    CROSS JOIN LATERAL (SELECT m.district_id, m.owner_email FROM memberships m
                        WHERE m.student_id = t.student_id OFFSET 0) m
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION caseload_pages_touched_by_student_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only the students whose page fields changed are looked up (a fact restated, its time
    -- alone newer, changes none).
    WITH changed AS MATERIALIZED (
        SELECT n.student_id
        FROM new_rows n JOIN old_rows o ON o.student_id = n.student_id
        WHERE (n.given_name, n.family_name, n.grade, n.school_id, n.school_ids)
              IS DISTINCT FROM (o.given_name, o.family_name, o.grade, o.school_id, o.school_ids)
    )
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT DISTINCT m.district_id, m.owner_email
    FROM changed c
    CROSS JOIN LATERAL (SELECT m.district_id, m.owner_email FROM memberships m
                        WHERE m.student_id = c.student_id OFFSET 0) m
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
