-- Registered clients of Tessera's OpenID Provider, and the client assertions (private_key_jwt)
-- already used, kept until they expire so that a replay is refused on every instance.
-- Lists are JSON arrays; token lifetimes are whole seconds. Only a SHA-256 of a secret is stored.

CREATE TABLE clients (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('confidential', 'public')),
    secret_hash               BYTEA CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    jwks                      JSONB,
    redirect_uris             JSONB NOT NULL,
    post_logout_redirect_uris JSONB NOT NULL,
    scopes                    JSONB NOT NULL,
    grant_types               JSONB NOT NULL,
    resources                 JSONB NOT NULL,
    first_party               BOOLEAN NOT NULL DEFAULT FALSE,
    signing_alg               TEXT NOT NULL,
    access_token_ttl_seconds  BIGINT NOT NULL CHECK (access_token_ttl_seconds > 0),
    refresh_token_ttl_seconds BIGINT NOT NULL CHECK (refresh_token_ttl_seconds > 0),
    from_config               BOOLEAN NOT NULL DEFAULT FALSE,
    created_at                TIMESTAMPTZ NOT NULL,
    updated_at                TIMESTAMPTZ NOT NULL,
    -- A public client has nothing to authenticate with.
    CHECK (kind = 'confidential' OR (secret_hash IS NULL AND jwks IS NULL))
);

CREATE TABLE client_assertions (
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    jti        TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertions_expires_at_idx ON client_assertions (expires_at);
