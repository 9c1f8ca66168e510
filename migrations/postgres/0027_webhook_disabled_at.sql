-- When an endpoint was disabled (NULL while enabled, and for one disabled before this column
-- existed): events written before it still get their deliveries, which wait until the endpoint is
-- enabled again, even when the fan-out reaches them after the endpoint was disabled.
ALTER TABLE webhook_endpoints ADD COLUMN disabled_at TIMESTAMPTZ;
