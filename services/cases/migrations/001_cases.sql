-- The cases service's own copy of the roster's students (from roster.students.v1).
CREATE TABLE students (
    student_id  uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    source_id   text        NOT NULL,
    school_id   text        NOT NULL,
    grade       text        NOT NULL,
    given_name  text        NOT NULL,
    family_name text        NOT NULL,
    status      text        NOT NULL,
    as_of       timestamptz NOT NULL
);
CREATE UNIQUE INDEX students_by_source_id ON students (district_id, source_id);

-- The Case Management Dictionary: which triggers open cases, per district, since when.
-- A district with no row for a trigger has it off.
CREATE TABLE dictionary (
    district_id  text        NOT NULL,
    trigger_kind text        NOT NULL,
    enabled      boolean     NOT NULL,
    enabled_at   timestamptz,           -- triggers that happened before this open nothing
    changed_by   text        NOT NULL,
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (district_id, trigger_kind)
);

CREATE TABLE dictionary_history (
    district_id  text        NOT NULL,
    trigger_kind text        NOT NULL,
    enabled      boolean     NOT NULL,
    changed_by   text        NOT NULL,
    changed_at   timestamptz NOT NULL
);
CREATE INDEX dictionary_history_by_district ON dictionary_history (district_id, changed_at);

-- Case numbers, per district and year: 26-000042.
CREATE TABLE case_numbers (
    district_id text NOT NULL,
    year        int  NOT NULL,
    last        int  NOT NULL,
    PRIMARY KEY (district_id, year)
);

CREATE TABLE cases (
    case_id          uuid        PRIMARY KEY,
    district_id      text        NOT NULL,
    case_number      text        NOT NULL,
    student_id       uuid        NOT NULL,
    school_id        text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('open', 'closed')),
    trigger_kind     text        NOT NULL,
    source_event_id  uuid        NOT NULL,
    opened_at        timestamptz NOT NULL,
    team_name        text,
    team_leader      text,
    case_manager     text,
    closed_at        timestamptz,
    closed_by        text,
    close_reason     text,
    UNIQUE (district_id, case_number)
);
-- One open case per student, whatever instance or partition the triggers came through.
CREATE UNIQUE INDEX cases_one_open_per_student ON cases (student_id) WHERE status = 'open';
CREATE INDEX cases_by_student ON cases (student_id, opened_at);
CREATE INDEX cases_open_by_school ON cases (district_id, school_id) WHERE status = 'open';
CREATE INDEX cases_by_team ON cases (district_id, lower(team_name)) WHERE team_name IS NOT NULL;
CREATE INDEX cases_by_leader ON cases (district_id, lower(team_leader)) WHERE team_leader IS NOT NULL;
CREATE INDEX cases_by_manager ON cases (district_id, lower(case_manager)) WHERE case_manager IS NOT NULL;
CREATE INDEX cases_by_week ON cases (district_id, opened_at);

CREATE TABLE tasks (
    task_id        uuid        PRIMARY KEY,
    district_id    text        NOT NULL,
    student_id     uuid        NOT NULL,
    case_id        uuid,
    title          text        NOT NULL,
    assignee_email text        NOT NULL,
    due_date       date,
    status         text        NOT NULL CHECK (status IN ('open', 'done')),
    assigned_by    text,
    assigned_at    timestamptz NOT NULL,
    completed_at   timestamptz,
    completed_by   text
);
CREATE INDEX tasks_by_case ON tasks (case_id);
CREATE INDEX tasks_by_student ON tasks (student_id);
CREATE INDEX tasks_overdue ON tasks (district_id, due_date) WHERE status = 'open';

CREATE TABLE notes (
    note_id     uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    student_id  uuid        NOT NULL,
    case_id     uuid,
    task_id     uuid,
    author      text        NOT NULL,
    body        text        NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notes_by_task ON notes (task_id);

-- Everything that happened to a student, in order: triggers, case status, tasks, notes.
CREATE TABLE timeline (
    entry_id   bigserial   PRIMARY KEY,
    district_id text       NOT NULL,
    student_id uuid        NOT NULL,
    case_id    uuid,
    at         timestamptz NOT NULL,
    kind       text        NOT NULL,
    summary    text        NOT NULL,
    actor      text,
    event_id   uuid
);
CREATE INDEX timeline_by_student ON timeline (student_id, at, entry_id);

-- Triggers for a student the roster has not told us of yet: applied when the student appears.
CREATE TABLE waiting_triggers (
    event_id          uuid        PRIMARY KEY,
    district_id       text        NOT NULL,
    student_source_id text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    event_type        text        NOT NULL,
    payload           jsonb       NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiting_triggers_by_student ON waiting_triggers (district_id, student_source_id, occurred_at);
