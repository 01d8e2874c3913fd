-- Every outbox row must be publishable: an event has a key (its entity's id), so rows
-- built in SQL (INSERT ... SELECT) cannot slip in without one either. Dead letters keep
-- the original record's key, which may be null. NOT VALID: the existing rows are not
-- scanned (the relay sets aside any bad one already there); new rows are checked.
ALTER TABLE outbox ADD CONSTRAINT outbox_key_present
    CHECK ((key IS NOT NULL AND octet_length(key) > 0) OR topic LIKE '%.DLT') NOT VALID;

-- What the relay could not publish and took out of the way, so that one message never
-- stops the rest: kept here whole, whether or not its dead-letter copy (queued in the
-- outbox for <topic>.DLT, named in dead_letter_topic) could be made.
CREATE TABLE outbox_refused (
    id                bigint      PRIMARY KEY, -- the outbox row's id
    topic             text        NOT NULL,
    key               bytea,
    payload           bytea       NOT NULL,
    headers           text[]      NOT NULL,
    created_at        timestamptz NOT NULL,
    reason            text        NOT NULL,
    dead_letter_topic text,
    refused_at        timestamptz NOT NULL DEFAULT now()
);
