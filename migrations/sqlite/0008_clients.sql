-- Registered clients of Tessera's OpenID Provider, and the client assertions (private_key_jwt)
-- already used, kept until they expire so that a replay is refused on every instance.
-- Lists are JSON arrays; token lifetimes are whole seconds. Only a SHA-256 of a secret is stored.

CREATE TABLE clients (
    id                        TEXT PRIMARY KEY NOT NULL,
    name                      TEXT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('confidential', 'public')),
    secret_hash               BLOB CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    jwks                      TEXT CHECK (jwks IS NULL OR json_valid(jwks)),
    redirect_uris             TEXT NOT NULL CHECK (json_valid(redirect_uris)),
    post_logout_redirect_uris TEXT NOT NULL CHECK (json_valid(post_logout_redirect_uris)),
    scopes                    TEXT NOT NULL CHECK (json_valid(scopes)),
    grant_types               TEXT NOT NULL CHECK (json_valid(grant_types)),
    resources                 TEXT NOT NULL CHECK (json_valid(resources)),
    first_party               INTEGER NOT NULL DEFAULT 0 CHECK (first_party IN (0, 1)),
    signing_alg               TEXT NOT NULL,
    access_token_ttl_seconds  INTEGER NOT NULL CHECK (access_token_ttl_seconds > 0),
    refresh_token_ttl_seconds INTEGER NOT NULL CHECK (refresh_token_ttl_seconds > 0),
    from_config               INTEGER NOT NULL DEFAULT 0 CHECK (from_config IN (0, 1)),
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL,
    -- A public client has nothing to authenticate with.
    CHECK (kind = 'confidential' OR (secret_hash IS NULL AND jwks IS NULL))
) STRICT;

CREATE TABLE client_assertions (
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) STRICT;
CREATE INDEX client_assertions_expires_at_idx ON client_assertions (expires_at);
