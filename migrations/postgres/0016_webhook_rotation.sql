-- Signing-key rotation: after a rotation the previous key keeps signing beside the new one until
-- `previous_secret_until` (`webhooks.secret_overlap_seconds`), encrypted by the key ring like
-- `secret` (bound to this row and the column `previous_secret`).
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret BYTEA;
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_until TIMESTAMPTZ;
-- Endpoints of the configuration file (`[[webhooks.endpoints]]`) by their name, written at
-- start-up; NULL for endpoints registered through the admin API.
ALTER TABLE webhook_endpoints ADD COLUMN config_name TEXT;
CREATE UNIQUE INDEX webhook_endpoints_config_name_idx ON webhook_endpoints (config_name);
