-- Connected accounts: per-user and per-team credentials for third-party connectors ("auth
-- profiles"), the short-lived links that connect them, and connect flows in login_states.

CREATE TABLE auth_profiles (
    id                      BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    team_id                 BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    slug                    TEXT NOT NULL,
    connector_key           TEXT NOT NULL,
    profile_kind            TEXT NOT NULL
        CHECK (profile_kind IN ('oauth_account', 'oauth_app', 'env', 'interactive', 'browser_session')),
    provider                TEXT NOT NULL CHECK (provider = lower(provider)),
    status                  TEXT NOT NULL CHECK (status IN ('pending_auth', 'active', 'needs_reauth', 'revoked')),
    created_by              BLOB NOT NULL REFERENCES users (id),
    display_name            TEXT NOT NULL,
    scopes                  TEXT NOT NULL,
    upstream_account_id     TEXT,
    access_token            BLOB,
    refresh_token           BLOB,
    access_token_expires_at INTEGER,
    pending_expires_at      INTEGER,
    version                 INTEGER NOT NULL DEFAULT 0,
    refresh_lease_owner     BLOB,
    refresh_lease_until     INTEGER,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
) STRICT;
-- A slug names one live profile per team; revoked profiles free their slug.
CREATE UNIQUE INDEX auth_profiles_team_slug_key ON auth_profiles (team_id, slug) WHERE status <> 'revoked';
-- At most one pending personal profile per user and connector: two members connect in parallel.
CREATE UNIQUE INDEX auth_profiles_pending_oauth_account_key
    ON auth_profiles (team_id, connector_key, provider, created_by)
    WHERE status = 'pending_auth' AND profile_kind = 'oauth_account';
-- At most one pending team-wide app profile per connector.
CREATE UNIQUE INDEX auth_profiles_pending_oauth_app_key
    ON auth_profiles (team_id, connector_key, provider)
    WHERE status = 'pending_auth' AND profile_kind = 'oauth_app';
CREATE INDEX auth_profiles_pending_expiry_idx ON auth_profiles (pending_expires_at) WHERE status = 'pending_auth';

-- Connect links: only a hash of the token is stored; single use; bound to the user who made it.
CREATE TABLE connect_tokens (
    token_hash           BLOB PRIMARY KEY NOT NULL,
    profile_id           BLOB NOT NULL REFERENCES auth_profiles (id) ON DELETE CASCADE,
    user_id              BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    allow_account_change INTEGER NOT NULL DEFAULT 0 CHECK (allow_account_change IN (0, 1)),
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL
) STRICT;
CREATE INDEX connect_tokens_profile_id_idx ON connect_tokens (profile_id);

ALTER TABLE login_states ADD COLUMN profile_id BLOB REFERENCES auth_profiles (id) ON DELETE CASCADE;
ALTER TABLE login_states ADD COLUMN profile_version INTEGER;
ALTER TABLE login_states ADD COLUMN allow_account_change INTEGER NOT NULL DEFAULT 0;
