-- The inbox: one row per event a consumer has handled, written in the handler's own
-- transaction. A second delivery of the same event id finds its row and changes nothing.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

-- The outbox: events (and dead letters) written in the same transaction as the state
-- change that caused them. The relay publishes them in id order and deletes them.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        bytea,
    payload    bytea       NOT NULL,
    headers    text[]      NOT NULL, -- name, value, name, value, ...
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
