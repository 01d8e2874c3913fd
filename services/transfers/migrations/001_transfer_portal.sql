-- The District Transfer Portal (seed 003).

-- ---------------------------------------------------------------- projections (fed by events)

-- Districts as their rosters name them (roster.districts.v1): destinations are listed by name.
CREATE TABLE districts (
    district_id text        PRIMARY KEY,
    name        text        NOT NULL,
    source_id   text,
    as_of       timestamptz NOT NULL
);

-- The roster's students (roster.students.v1), to suggest whom an incoming case is about.
-- Personal data: never logged.
CREATE TABLE students (
    student_id  uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    source_id   text        NOT NULL,
    school_id   text        NOT NULL,
    grade       text        NOT NULL,
    given_name  text        NOT NULL,
    family_name text        NOT NULL,
    birth_date  date,
    active      boolean     NOT NULL,
    as_of       timestamptz NOT NULL
);
CREATE INDEX students_by_birth_date ON students (district_id, birth_date) WHERE active;
CREATE INDEX students_by_family_name ON students (district_id, lower(family_name)) WHERE active;

-- Each case's district, school, number and status (cases.v1): what a send is checked against.
CREATE TABLE cases (
    case_id         uuid        PRIMARY KEY,
    district_id     text        NOT NULL,
    case_number     text        NOT NULL,
    school_id       text,                   -- null: a case that came in with the transfer's information
    student_id      uuid        NOT NULL,
    status          text        NOT NULL,   -- open, closed
    transferred_out boolean     NOT NULL DEFAULT false,
    as_of           timestamptz NOT NULL
);

-- ---------------------------------------------------------------- "Activate Case Transfers Between Districts"

-- A district with no row is off (the seed's default).
CREATE TABLE activation (
    district_id text        PRIMARY KEY,
    active      boolean     NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL
);

CREATE TABLE activation_history (
    id          bigserial   PRIMARY KEY,
    district_id text        NOT NULL,
    active      boolean     NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL
);
CREATE INDEX activation_history_by_district ON activation_history (district_id, changed_at);

-- ---------------------------------------------------------------- transfer requests

-- One request per destination. The authentication code is never stored: only its argon2id
-- hash (the check refuses anything else in the column).
CREATE TABLE transfer_requests (
    request_id              uuid        PRIMARY KEY,
    source_district_id      text        NOT NULL,
    destination_district_id text        NOT NULL,
    status                  text        NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'cancelled',
                                                                   'locked', 'expired')),
    case_count              integer     NOT NULL CHECK (case_count >= 1),
    notes                   text,
    requested_by            text        NOT NULL,
    requested_at            timestamptz NOT NULL,
    expires_at              timestamptz NOT NULL,
    code_hash               text        NOT NULL CHECK (code_hash LIKE '$argon2id$%'),
    code_issued_at          timestamptz NOT NULL,
    failed_attempts         integer     NOT NULL DEFAULT 0,
    ended_by                text,       -- who accepted, rejected or cancelled it (null: locked, expired)
    ended_at                timestamptz,
    reason                  text,       -- a rejection's reason
    correlation_id          text,
    CHECK (source_district_id <> destination_district_id),
    CHECK ((status = 'pending') = (ended_at IS NULL))
);
CREATE INDEX transfer_requests_outgoing ON transfer_requests (source_district_id, requested_at DESC, request_id);
CREATE INDEX transfer_requests_incoming ON transfer_requests (destination_district_id, requested_at DESC, request_id);
CREATE INDEX transfer_requests_due ON transfer_requests (expires_at) WHERE status = 'pending';

-- The cases of a request, and how each was taken on acceptance.
CREATE TABLE request_cases (
    request_id          uuid    NOT NULL REFERENCES transfer_requests,
    case_id             uuid    NOT NULL,
    position            integer NOT NULL,
    case_number         text    NOT NULL,
    school_id           text,
    parts               integer,            -- how many parts its history comes in (from its first part)
    unavailable         text,               -- why the sending district could not export it
    linked_student_id   uuid,               -- on acceptance: the destination's student, or null (transfer info)
    PRIMARY KEY (request_id, case_id)
);

-- The exported history parts (cases.histories.v1), kept until the request ends: then they
-- are delivered (accepted) or dropped. Personal data: never logged.
CREATE TABLE history_parts (
    request_id  uuid        NOT NULL,
    case_id     uuid        NOT NULL,
    part        integer     NOT NULL CHECK (part >= 1),
    parts       integer     NOT NULL CHECK (parts >= part),
    history     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, case_id, part),
    FOREIGN KEY (request_id, case_id) REFERENCES request_cases
);

-- Who did what to a request, and when: both sides read it.
CREATE TABLE request_history (
    id         bigserial   PRIMARY KEY,
    request_id uuid        NOT NULL REFERENCES transfer_requests,
    at         timestamptz NOT NULL,
    action     text        NOT NULL,
    actor      text,
    district_id text,
    detail     text
);
CREATE INDEX request_history_by_request ON request_history (request_id, id);
