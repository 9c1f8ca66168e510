-- A token refresh must not look like a reconnection. `version` now changes only when a profile
-- is connected, reconnected, revoked or marked needs_reauth (connect flows compare-and-swap on
-- it); `token_version` changes with every write of credentials (refresh leases compare on it).
ALTER TABLE auth_profiles ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;

-- Expired connect links that were never used are swept by the janitor.
CREATE INDEX connect_tokens_expires_at_idx ON connect_tokens (expires_at);
