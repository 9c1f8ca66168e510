-- Outbox events older than `webhooks.retention_days` are deleted once no delivery of theirs is
-- pending, and their delivery log rows go with them (ON DELETE CASCADE). The sweep finds old
-- events by time; the cascade and the check for a pending delivery look deliveries up by event.
CREATE INDEX outbox_events_created_idx ON outbox_events (created_at);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
