-- Browser sign-in: server-side login state, sessions, the audit of identity links, upstream
-- tokens at rest (key-ring ciphertexts), and each user's chosen primary identity.

ALTER TABLE users ADD COLUMN primary_identity_id UUID REFERENCES identities (id) ON DELETE SET NULL;

-- One row per sign-in in progress, consumed exactly once. Only a hash of the state is stored.
CREATE TABLE login_states (
    state_hash    BYTEA PRIMARY KEY,
    provider      TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    link_user_id  UUID REFERENCES users (id) ON DELETE CASCADE,
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_states_expires_at_idx ON login_states (expires_at);

-- Only a hash of the session cookie is stored.
CREATE TABLE sessions (
    token_hash   BYTEA PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    identity_id  UUID REFERENCES identities (id) ON DELETE SET NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Upstream tokens of an identity, encrypted (see src/crypto/keyring.rs).
CREATE TABLE identity_tokens (
    identity_id   UUID PRIMARY KEY REFERENCES identities (id) ON DELETE CASCADE,
    access_token  BYTEA NOT NULL,
    refresh_token BYTEA,
    expires_at    TIMESTAMPTZ,
    scopes        TEXT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- Every link, unlink and choice of primary identity. identity_id is not a foreign key: an
-- unlinked identity is gone, its audit rows stay.
CREATE TABLE identity_events (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id),
    identity_id UUID NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('link', 'unlink', 'primary')),
    provider    TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX identity_events_user_id_idx ON identity_events (user_id, created_at);
