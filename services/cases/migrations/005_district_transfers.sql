-- The District Transfer Portal (seed 003), the cases service's side: exporting a case's
-- history on request, the source case transferred out (read-only, never deleted), the
-- destination's case transferred in with its whole history, and the person made from a
-- transfer's information when the destination has no roster student for them yet.

-- The student's birth date (roster.students.v1), for the exported history and for
-- suggesting which roster student a transferred person is.
ALTER TABLE students ADD COLUMN birth_date date;
CREATE INDEX students_by_birth_date ON students (district_id, birth_date) WHERE source_id IS NOT NULL;

-- A person made from a transfer's information ("use transfer info", no SIS connection): a
-- students row with no SIS id, no school here (only district-wide staff see them) and
-- transferred_from set; linked_to once a Manage Cases user links them to a roster student
-- (their cases and timeline then belong to that student; the row is kept). Roster students
-- keep every column they had: students_by_source (district_id, source_id) never matches a
-- person, whose source_id is NULL.
ALTER TABLE students ALTER COLUMN source_id DROP NOT NULL,
    ALTER COLUMN school_id DROP NOT NULL,
    ALTER COLUMN grade DROP NOT NULL,
    ADD COLUMN transferred_from text,
    ADD COLUMN transfer_request_id uuid,
    ADD COLUMN linked_to uuid,
    ADD COLUMN linked_by text,
    ADD COLUMN linked_at timestamptz,
    DROP CONSTRAINT students_home_school_is_one_of_their_schools,
    ADD CONSTRAINT students_home_school_is_one_of_their_schools CHECK (school_id IS NULL OR school_id = ANY (school_ids)),
    ADD CONSTRAINT students_from_the_roster_or_a_transfer CHECK (
        (source_id IS NOT NULL AND school_id IS NOT NULL AND grade IS NOT NULL AND transferred_from IS NULL)
        OR (source_id IS NULL AND transferred_from IS NOT NULL AND school_ids = '{}'));
CREATE INDEX students_linked_to ON students (linked_to) WHERE linked_to IS NOT NULL;

-- A case transferred out stays, read-only: status transferred_out, with where it went, the
-- request, who accepted and when. A case transferred in keeps where it came from, its id
-- and number there, the request, who accepted and when; its school is the linked student's
-- here, or none (NULL) for a transfer person's case (district-wide staff see it). For a
-- transferred-in case source_event_id is the transfer request.
ALTER TABLE cases DROP CONSTRAINT cases_status_check,
    ADD CONSTRAINT cases_status_check CHECK (status IN ('open', 'closed', 'transferred_out')),
    ALTER COLUMN school_id DROP NOT NULL,
    ADD COLUMN transferred_to text,
    ADD COLUMN transferred_out_request uuid,
    ADD COLUMN transferred_out_by text,
    ADD COLUMN transferred_out_at timestamptz,
    ADD COLUMN transferred_in_from text,
    ADD COLUMN transferred_in_request uuid,
    ADD COLUMN transferred_in_case_id uuid,
    ADD COLUMN transferred_in_case_number text,
    ADD COLUMN transferred_in_by text,
    ADD COLUMN transferred_in_at timestamptz,
    ADD CONSTRAINT cases_transferred_out_says_where CHECK (
        (status = 'transferred_out') = (transferred_to IS NOT NULL AND transferred_out_request IS NOT NULL
                                        AND transferred_out_at IS NOT NULL)),
    ADD CONSTRAINT cases_transferred_in_says_from_where CHECK (
        (transferred_in_from IS NULL) = (transferred_in_request IS NULL AND transferred_in_case_id IS NULL)),
    ADD CONSTRAINT cases_without_a_school_came_by_transfer CHECK (school_id IS NOT NULL OR transferred_in_from IS NOT NULL);

-- One open case per student, among the cases opened here (seed 004). A case transferred in
-- keeps the status it had, so it may be open beside the student's own open case; then the
-- triggers join the student's own case (domain.trigger_case).
DROP INDEX cases_one_open_per_student;
CREATE UNIQUE INDEX cases_one_open_per_student ON cases (student_id) WHERE status = 'open' AND transferred_in_from IS NULL;
CREATE INDEX cases_open_by_student ON cases (student_id) WHERE status = 'open';

-- A transferred timeline entry's deterministic key: a delivery applied twice adds it once.
ALTER TABLE timeline ADD COLUMN transfer_key uuid;
CREATE UNIQUE INDEX timeline_by_transfer_key ON timeline (transfer_key) WHERE transfer_key IS NOT NULL;
CREATE INDEX timeline_by_case ON timeline (case_id, at, entry_id) WHERE case_id IS NOT NULL;
CREATE INDEX notes_by_case ON notes (case_id) WHERE case_id IS NOT NULL;

-- Each (request, case) is answered once, whatever number of times the request is read:
-- exported in `parts`, or unavailable with the reason.
CREATE TABLE case_exports (
    request_id  uuid        NOT NULL,
    case_id     uuid        NOT NULL,
    district_id text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('exported', 'unavailable')),
    parts       int         NOT NULL,
    reason      text,
    answered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, case_id)
);

-- The parts of a transferred-in case applied so far: each applies once, in any order; the
-- last one missing completes the case (CaseTransferredIn).
CREATE TABLE delivered_parts (
    case_id    uuid        NOT NULL,
    part       int         NOT NULL,
    parts      int         NOT NULL,
    event_id   uuid        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (case_id, part)
);

-- Deliveries linked to a roster student this service does not know yet: applied when the
-- student arrives (as waiting_triggers are).
CREATE TABLE waiting_deliveries (
    event_id    uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    student_id  uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiting_deliveries_by_student ON waiting_deliveries (district_id, student_id, occurred_at);

-- The dashboard's counters: a case with no school here (a transfer person's) counts under
-- '' (district-wide staff see it); an open case transferred in counts as open here; cases
-- opened by week count only the cases opened here, not those transferred in. A case
-- transferred out is not open, so it leaves the open counts as its status changes.
CREATE OR REPLACE FUNCTION count_opened_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO weekly_openings AS w (district_id, school_id, week, trigger_kind, opened)
    SELECT district_id, coalesce(school_id, ''), date_trunc('week', opened_at)::date, trigger_kind, count(*)
    FROM new_cases WHERE transferred_in_from IS NULL GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, week, school_id, trigger_kind) DO UPDATE SET opened = w.opened + EXCLUDED.opened;
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT c.district_id, coalesce(c.school_id, ''), d.dimension, d.key, 1 FROM new_cases c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                              ('team_leader', coalesce(c.team_leader, '')),
                              ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key) WHERE c.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_changed_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT c.district_id, coalesce(c.school_id, ''), d.dimension, d.key, 1 FROM new_cases c, LATERAL (VALUES ('school', ''), ('team', coalesce(c.team_name, '')),
                              ('team_leader', coalesce(c.team_leader, '')),
                              ('case_manager', coalesce(c.case_manager, ''))) AS d(dimension, key) WHERE c.status = 'open'
        UNION ALL SELECT o.district_id, coalesce(o.school_id, ''), d.dimension, d.key, -1 FROM old_cases o, LATERAL (VALUES ('school', ''), ('team', coalesce(o.team_name, '')),
                              ('team_leader', coalesce(o.team_leader, '')),
                              ('case_manager', coalesce(o.case_manager, ''))) AS d(dimension, key) WHERE o.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_deleted_cases() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO open_case_counts AS t (district_id, school_id, dimension, key, open_cases)
    SELECT district_id, school_id, dimension, key, sum(n) FROM (SELECT o.district_id, coalesce(o.school_id, ''), d.dimension, d.key, -1 FROM old_cases o, LATERAL (VALUES ('school', ''), ('team', coalesce(o.team_name, '')),
                              ('team_leader', coalesce(o.team_leader, '')),
                              ('case_manager', coalesce(o.case_manager, ''))) AS d(dimension, key) WHERE o.status = 'open') AS delta(district_id, school_id, dimension, key, n)
    GROUP BY 1, 2, 3, 4 HAVING sum(n) <> 0 ORDER BY 1, 3, 2, 4
    ON CONFLICT (district_id, dimension, school_id, key) DO UPDATE SET open_cases = t.open_cases + EXCLUDED.open_cases;
    RETURN NULL;
END $$;
