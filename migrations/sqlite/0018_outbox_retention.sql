-- Outbox events older than `webhooks.retention_days` are deleted once every endpoint is done
-- with them, and their delivery log rows go with them (ON DELETE CASCADE). Both the cascade and
-- the check for a pending delivery look deliveries up by event.
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
