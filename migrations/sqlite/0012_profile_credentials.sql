-- Credentials of the auth profiles that are not connected through OAuth: the values of an `env`
-- profile, a browser's storage state. One key-ring ciphertext of the JSON payload per profile,
-- bound to this table, its row and its column, and what may be shown about it (which fields are
-- set and when; the browser kind) as JSON. A table of its own: profile reads never carry the
-- ciphertext, key rotation walks it on its own, and revoking or deleting a profile deletes it.
CREATE TABLE profile_credentials (
    profile_id BLOB PRIMARY KEY NOT NULL CHECK (length(profile_id) = 16)
        REFERENCES auth_profiles (id) ON DELETE CASCADE,
    credential BLOB NOT NULL,
    meta       TEXT NOT NULL CHECK (json_valid(meta)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Before this migration `env`, `interactive` and `browser_session` profiles were created `active`
-- although they could hold nothing: they are waiting for their credential.
UPDATE auth_profiles SET status = 'pending_auth'
    WHERE profile_kind IN ('env', 'interactive', 'browser_session') AND status = 'active';
