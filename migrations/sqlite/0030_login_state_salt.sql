-- A sign-in's PKCE verifier and nonce are no longer stored: they are derived from the secret in
-- the browser's login cookie (the state is its SHA-256) and this random salt (32 bytes), which
-- only the database holds. Rows written with a salt leave `pkce_verifier` and `nonce` empty; rows
-- an earlier release wrote without one are never completed by this one.
ALTER TABLE login_states ADD COLUMN secret_salt BLOB;
