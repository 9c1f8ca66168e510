-- Connected accounts: per-user and per-team credentials for third-party connectors ("auth
-- profiles"), the short-lived links that connect them, and connect flows in login_states.

CREATE TABLE auth_profiles (
    id                      UUID PRIMARY KEY,
    team_id                 UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    slug                    TEXT NOT NULL,
    connector_key           TEXT NOT NULL,
    profile_kind            TEXT NOT NULL
        CHECK (profile_kind IN ('oauth_account', 'oauth_app', 'env', 'interactive', 'browser_session')),
    provider                TEXT NOT NULL CHECK (provider = lower(provider)),
    status                  TEXT NOT NULL CHECK (status IN ('pending_auth', 'active', 'needs_reauth', 'revoked')),
    created_by              UUID NOT NULL REFERENCES users (id),
    display_name            TEXT NOT NULL,
    scopes                  TEXT NOT NULL,
    upstream_account_id     TEXT,
    access_token            BYTEA,
    refresh_token           BYTEA,
    access_token_expires_at TIMESTAMPTZ,
    pending_expires_at      TIMESTAMPTZ,
    version                 BIGINT NOT NULL DEFAULT 0,
    refresh_lease_owner     UUID,
    refresh_lease_until     TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL
);
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
    token_hash           BYTEA PRIMARY KEY,
    profile_id           UUID NOT NULL REFERENCES auth_profiles (id) ON DELETE CASCADE,
    user_id              UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    allow_account_change BOOLEAN NOT NULL DEFAULT FALSE,
    created_at           TIMESTAMPTZ NOT NULL,
    expires_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX connect_tokens_profile_id_idx ON connect_tokens (profile_id);

ALTER TABLE login_states ADD COLUMN profile_id UUID REFERENCES auth_profiles (id) ON DELETE CASCADE;
ALTER TABLE login_states ADD COLUMN profile_version BIGINT;
ALTER TABLE login_states ADD COLUMN allow_account_change BOOLEAN NOT NULL DEFAULT FALSE;
