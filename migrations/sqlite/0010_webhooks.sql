-- Webhooks delivered from the outbox. Events get a sequence number (the order in which an
-- endpoint receives them); endpoints and their deliveries (one row per event and endpoint).
-- SQLite cannot add an autoincrementing column: the outbox is copied into a new table, in the
-- order the events were written.
CREATE TABLE outbox_events_new (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL CHECK (json_valid(payload)),
    created_at   INTEGER NOT NULL,
    processed_at INTEGER
) STRICT;
INSERT INTO outbox_events_new (id, topic, payload, created_at, processed_at)
    SELECT id, topic, payload, created_at, processed_at FROM outbox_events ORDER BY created_at, id;
DROP TABLE outbox_events;
ALTER TABLE outbox_events_new RENAME TO outbox_events;
-- Events not yet fanned out to endpoints, in order.
CREATE INDEX outbox_events_unprocessed_idx ON outbox_events (seq) WHERE processed_at IS NULL;

CREATE TABLE webhook_endpoints (
    id          BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    url         TEXT NOT NULL,
    -- Topics, space-separated; empty: every topic.
    event_types TEXT NOT NULL,
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    -- The signing key, encrypted by the key ring (bound to this row and column).
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    -- The instance delivering to this endpoint, and until when.
    lease_owner BLOB,
    lease_until INTEGER
) STRICT;

CREATE TABLE webhook_deliveries (
    id              BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    endpoint_id     BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        BLOB NOT NULL REFERENCES outbox_events (id) ON DELETE CASCADE,
    event_seq       INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL,
    -- Start of the current series of attempts (creation, or the last replay): retries end
    -- `webhooks.give_up_after_seconds` after it.
    scheduled_at    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL,
    UNIQUE (endpoint_id, event_id)
) STRICT;
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, event_seq);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, event_seq) WHERE state = 'pending';
