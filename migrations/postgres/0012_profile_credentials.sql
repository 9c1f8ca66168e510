-- Credentials of the auth profiles that are not connected through OAuth: the values of an `env`
-- profile, a browser's storage state. One key-ring ciphertext of the JSON payload per profile,
-- bound to this table, its row and its column, and what may be shown about it (which fields are
-- set and when; the browser kind) as JSON. A table of its own: profile reads never carry the
-- ciphertext, key rotation walks it on its own, and revoking or deleting a profile deletes it.
CREATE TABLE profile_credentials (
    profile_id UUID PRIMARY KEY REFERENCES auth_profiles (id) ON DELETE CASCADE,
    credential BYTEA NOT NULL,
    -- Text, not jsonb: read back verbatim on both backends, never queried into.
    meta       TEXT NOT NULL CHECK (meta::jsonb IS NOT NULL),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Before this migration `env`, `interactive` and `browser_session` profiles were created `active`
-- although they could hold nothing: they are waiting for their credential.
UPDATE auth_profiles SET status = 'pending_auth'
    WHERE profile_kind IN ('env', 'interactive', 'browser_session') AND status = 'active';
