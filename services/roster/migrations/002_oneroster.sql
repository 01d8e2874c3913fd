-- The district's roster from OneRoster files and SIS events: schools, staff, classes and
-- enrolments beside students; imports with their error reports; and, for reconciliation,
-- what the last file said about each student and class.
ALTER TABLE students
    ADD COLUMN status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'withdrawn')),
    ADD COLUMN withdrawn_at timestamptz;
CREATE INDEX students_active ON students (district_id) WHERE status = 'active';

CREATE TABLE schools (
    district_id text NOT NULL,
    school_id   text NOT NULL,
    name        text NOT NULL,
    identifier  text,
    PRIMARY KEY (district_id, school_id)
);

CREATE TABLE staff (
    staff_id    uuid PRIMARY KEY,
    district_id text NOT NULL,
    source_id   text NOT NULL,
    role        text NOT NULL,
    given_name  text NOT NULL,
    family_name text NOT NULL,
    email       text,
    identifier  text,
    school_ids  text[] NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, source_id)
);

CREATE TABLE classes (
    class_id         uuid PRIMARY KEY,
    district_id      text NOT NULL,
    source_id        text NOT NULL,
    school_id        text NOT NULL,
    class_type       text NOT NULL CHECK (class_type IN ('homeroom', 'scheduled')),
    title            text NOT NULL,
    class_code       text,
    course_source_id text,
    grades           text[] NOT NULL,
    periods          text[] NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (district_id, source_id)
);
CREATE INDEX classes_by_school ON classes (district_id, school_id, class_id);

CREATE TABLE enrollments (
    district_id     text    NOT NULL,
    class_source_id text    NOT NULL,
    user_source_id  text    NOT NULL,
    role            text    NOT NULL,
    is_primary      boolean NOT NULL,
    PRIMARY KEY (district_id, class_source_id, user_source_id)
);
CREATE INDEX enrollments_by_user ON enrollments (district_id, user_source_id);

CREATE TABLE imports (
    import_id     uuid PRIMARY KEY,
    district_id   text        NOT NULL,
    origin        text        NOT NULL,            -- cli, http, drop-folder
    package_name  text        NOT NULL,
    package_path  text,                            -- kept while an import is held
    status        text        NOT NULL,            -- running, applied, held, rejected, failed, dry_run
    message       text,
    summary       jsonb       NOT NULL DEFAULT '{}',
    error_count   integer     NOT NULL DEFAULT 0,
    warning_count integer     NOT NULL DEFAULT 0,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX imports_by_district ON imports (district_id, created_at DESC);

CREATE TABLE import_problems (
    import_id uuid    NOT NULL REFERENCES imports ON DELETE CASCADE,
    seq       integer NOT NULL,
    severity  text    NOT NULL,                    -- error (row skipped) or warning (kept, but see reason)
    file      text    NOT NULL,
    line      integer,
    "column"  text,
    value     text,
    reason    text    NOT NULL,
    PRIMARY KEY (import_id, seq)
);

-- The row each student and class had in the last file that mentioned it.
CREATE TABLE last_file_rows (
    district_id text    NOT NULL,
    entity      text    NOT NULL,                  -- student, class
    source_id   text    NOT NULL,
    import_id   uuid    NOT NULL,
    file        text    NOT NULL,
    line        integer NOT NULL,
    row_data    jsonb   NOT NULL,
    PRIMARY KEY (district_id, entity, source_id)
);
