-- Indexes for lookups that read whole tables as they grow: the sessions of an identity being
-- unlinked (and the ON DELETE SET NULL checks of its deletion, on sessions and on users'
-- primary identity), the idle-session sweep, the expired-code sweep, and a team's or a
-- member's connected accounts (a member's removal, a team's deletion, defaults, a connector's
-- credentials).
CREATE INDEX sessions_identity_id_idx ON sessions (identity_id);
CREATE INDEX users_primary_identity_id_idx ON users (primary_identity_id) WHERE primary_identity_id IS NOT NULL;
CREATE INDEX sessions_last_seen_at_idx ON sessions (last_seen_at);
CREATE INDEX oauth_codes_unused_expiry_idx ON oauth_codes (expires_at) WHERE used_at IS NULL;
CREATE INDEX auth_profiles_team_connector_idx ON auth_profiles (team_id, connector_key);
CREATE INDEX auth_profiles_created_by_idx ON auth_profiles (created_by);
