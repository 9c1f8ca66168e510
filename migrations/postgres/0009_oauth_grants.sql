-- Tessera as an OpenID Provider: what users granted to registered clients. A grant is one
-- user's authorization of one client; its code, refresh tokens and access tokens all end with it.
-- Only hashes of codes, refresh tokens and request ids are stored.

CREATE TABLE oauth_grants (
    id           UUID PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The upstream identity and the browser session the user signed in with; not foreign keys:
    -- once either is gone (unlinked, signed out, expired) the grant is no longer active.
    identity_id  UUID,
    session_hash BYTEA,
    scope        TEXT NOT NULL,
    resource     TEXT,
    provider     TEXT,
    auth_time    TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX oauth_grants_user_id_idx ON oauth_grants (user_id);
CREATE INDEX oauth_grants_expires_at_idx ON oauth_grants (expires_at);
CREATE INDEX oauth_grants_client_id_idx ON oauth_grants (client_id);

-- Authorization codes: single use, short-lived, bound to a redirect URI and a PKCE challenge.
CREATE TABLE oauth_codes (
    code_hash      BYTEA PRIMARY KEY,
    grant_id       UUID NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT,
    nonce          TEXT,
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ
);
CREATE INDEX oauth_codes_grant_id_idx ON oauth_codes (grant_id);

-- Refresh tokens: rotated on every use; a used one presented again revokes its grant.
CREATE TABLE oauth_refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    grant_id   UUID NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX oauth_refresh_tokens_grant_id_idx ON oauth_refresh_tokens (grant_id);

-- The scopes a user consented to for a third-party client.
CREATE TABLE oauth_consents (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- Authorization requests held for a later step: pushed (RFC 9126) or waiting for consent.
-- Taken once.
CREATE TABLE oauth_requests (
    id_hash      BYTEA PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    params       TEXT NOT NULL,
    session_hash BYTEA,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX oauth_requests_expires_at_idx ON oauth_requests (expires_at);
CREATE INDEX oauth_requests_client_id_idx ON oauth_requests (client_id);
CREATE INDEX oauth_consents_client_id_idx ON oauth_consents (client_id);
