-- Webhooks delivered from the outbox. Events get a sequence number (the order in which an
-- endpoint receives them); endpoints and their deliveries (one row per event and endpoint).
ALTER TABLE outbox_events ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX outbox_events_seq_idx ON outbox_events (seq);
DROP INDEX outbox_events_unprocessed_idx;
-- Events not yet fanned out to endpoints, in order.
CREATE INDEX outbox_events_unprocessed_idx ON outbox_events (seq) WHERE processed_at IS NULL;

CREATE TABLE webhook_endpoints (
    id          UUID PRIMARY KEY,
    url         TEXT NOT NULL,
    -- Topics, space-separated; empty: every topic.
    event_types TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    -- The signing key, encrypted by the key ring (bound to this row and column).
    secret      BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    -- The instance delivering to this endpoint, and until when.
    lease_owner UUID,
    lease_until TIMESTAMPTZ
);

CREATE TABLE webhook_deliveries (
    id              UUID PRIMARY KEY,
    endpoint_id     UUID NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        UUID NOT NULL REFERENCES outbox_events (id) ON DELETE CASCADE,
    event_seq       BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL,
    -- Start of the current series of attempts (creation, or the last replay): retries end
    -- `webhooks.give_up_after_seconds` after it.
    scheduled_at    TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_attempt_at TIMESTAMPTZ,
    last_status     BIGINT,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, event_seq);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, event_seq) WHERE state = 'pending';
