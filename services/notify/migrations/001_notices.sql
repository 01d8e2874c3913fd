-- The notify service's own projection of other services' facts (access_held is the kit's),
-- its own data (preferences, each district's sender name), and the notices and deliveries
-- it owes.

-- roster.staff.v1: who a login email is (the notices name the staff who acted) and whether
-- they are still on the district's roster.
CREATE TABLE staff (
    staff_id    uuid        PRIMARY KEY,
    district_id text        NOT NULL,
    email       text,                 -- lower case; NULL: the roster gave none
    given_name  text        NOT NULL,
    family_name text        NOT NULL,
    active      boolean     NOT NULL,
    as_of       timestamptz NOT NULL
);
CREATE INDEX staff_by_email ON staff (district_id, email) WHERE email IS NOT NULL;

-- roster.districts.v1: the districts' names, for the transfer notices.
CREATE TABLE districts (
    district_id text        PRIMARY KEY,
    name        text        NOT NULL,
    as_of       timestamptz NOT NULL
);

-- A staff member's notices turned off (only those that are not required; the rule is in
-- domain.py). No row: every notice on.
CREATE TABLE notice_preferences (
    district_id text        NOT NULL,
    staff_email text        NOT NULL,
    notice      text        NOT NULL,
    enabled     boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (district_id, staff_email, notice)
);

-- Each district's sender name (a district admin's setting); no row: "Caseflow".
CREATE TABLE district_senders (
    district_id text        PRIMARY KEY,
    sender_name text        NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL
);

-- One notice per (event, kind of notice): what every recipient of that kind reads (subject,
-- and what the templates need: case numbers, counts, links; never a student's name).
CREATE TABLE notices (
    event_id    uuid        NOT NULL,
    notice      text        NOT NULL,
    event_type  text        NOT NULL,
    subject     text        NOT NULL,
    context     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, notice)
);

-- One delivery per (event, recipient), written in the consumer's transaction with the
-- inbox claim: a redelivered event adds none. The sender claims pending ones whose time
-- has come (FOR UPDATE SKIP LOCKED) and records sent or failed.
CREATE TABLE deliveries (
    delivery_id     bigserial   PRIMARY KEY,
    event_id        uuid        NOT NULL,
    notice          text        NOT NULL,
    recipient       text        NOT NULL,
    district_id     text        NOT NULL,   -- the recipient's district: whose admins read this row
    message_id      text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_reply      text,                   -- the SMTP server's reply (or the connection error) of the last attempt
    UNIQUE (event_id, recipient),
    FOREIGN KEY (event_id, notice) REFERENCES notices (event_id, notice)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_district ON deliveries (district_id, delivery_id);
CREATE INDEX deliveries_by_recipient ON deliveries (district_id, recipient, delivery_id);
