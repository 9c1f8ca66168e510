-- Browser sign-in: server-side login state, sessions, the audit of identity links, upstream
-- tokens at rest (key-ring ciphertexts), and each user's chosen primary identity.

ALTER TABLE users ADD COLUMN primary_identity_id BLOB REFERENCES identities (id) ON DELETE SET NULL;

-- One row per sign-in in progress, consumed exactly once. Only a hash of the state is stored.
CREATE TABLE login_states (
    state_hash    BLOB PRIMARY KEY NOT NULL,
    provider      TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    link_user_id  BLOB REFERENCES users (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX login_states_expires_at_idx ON login_states (expires_at);

-- Only a hash of the session cookie is stored.
CREATE TABLE sessions (
    token_hash   BLOB PRIMARY KEY NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    identity_id  BLOB REFERENCES identities (id) ON DELETE SET NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

-- Upstream tokens of an identity, encrypted (see src/crypto/keyring.rs).
CREATE TABLE identity_tokens (
    identity_id   BLOB PRIMARY KEY NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    access_token  BLOB NOT NULL,
    refresh_token BLOB,
    expires_at    INTEGER,
    scopes        TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- Every link, unlink and choice of primary identity. identity_id is not a foreign key: an
-- unlinked identity is gone, its audit rows stay.
CREATE TABLE identity_events (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    identity_id BLOB NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('link', 'unlink', 'primary')),
    provider    TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX identity_events_user_id_idx ON identity_events (user_id, created_at);
