-- Caseload pages are kept by each instance of the service (services/caseload/pages.py) with
-- the snapshot they were read in, and served again only while nothing they show has changed
-- since. What they show: the owner's memberships and those students' names, grades and
-- schools. Every transaction that changes any of it leaves here one row per owner whose
-- page it touches, with its transaction id; a copy read in snapshot S is out of date once a
-- row of its owner that S does not see exists (pg_visible_in_snapshot). Rows are written,
-- never updated (no row shared between writers: no lock waits, no deadlocks), by
-- statement-level triggers, whichever path writes (the rules, an action, upkeep), and
-- forgotten by upkeep.keep_page_changes_bounded once no kept copy can be older than them.
CREATE TABLE caseload_page_changes (
    district_id text NOT NULL,
    owner_email text NOT NULL,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (district_id, owner_email, xid)
);

-- A membership added or removed (the change feed's rows, per owner).
CREATE FUNCTION caseload_pages_touched_by_memberships() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT DISTINCT district_id, owner_email FROM touched_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

-- A membership changed in place (a support renamed changes its detail): its owner before
-- and after.
CREATE FUNCTION caseload_pages_touched_by_membership_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT district_id, owner_email FROM old_rows UNION SELECT district_id, owner_email FROM new_rows
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER caseload_pages_memberships_added AFTER INSERT ON memberships
    REFERENCING NEW TABLE AS touched_rows FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_memberships();
CREATE TRIGGER caseload_pages_memberships_removed AFTER DELETE ON memberships
    REFERENCING OLD TABLE AS touched_rows FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_memberships();
CREATE TRIGGER caseload_pages_memberships_updated AFTER UPDATE ON memberships
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_membership_updates();

-- A student the roster states, changes or forgets: every caseload holding them (a new
-- student row completes a membership that arrived before it), on a change only when what a
-- page shows of them changed.
CREATE FUNCTION caseload_pages_touched_by_student_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT DISTINCT m.district_id, m.owner_email
    FROM touched_students t JOIN memberships m ON m.student_id = t.student_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION caseload_pages_touched_by_student_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO caseload_page_changes (district_id, owner_email)
    SELECT DISTINCT m.district_id, m.owner_email
    FROM new_rows n JOIN old_rows o ON o.student_id = n.student_id
    JOIN memberships m ON m.student_id = n.student_id
    WHERE (n.given_name, n.family_name, n.grade, n.school_id, n.school_ids)
          IS DISTINCT FROM (o.given_name, o.family_name, o.grade, o.school_id, o.school_ids)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER caseload_pages_students_added AFTER INSERT ON students
    REFERENCING NEW TABLE AS touched_students
    FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_student_rows();
CREATE TRIGGER caseload_pages_students_removed AFTER DELETE ON students
    REFERENCING OLD TABLE AS touched_students
    FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_student_rows();
CREATE TRIGGER caseload_pages_students_changed AFTER UPDATE ON students
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION caseload_pages_touched_by_student_changes();
