-- A sign-in's PKCE verifier and nonce are no longer stored: they are derived from its state,
-- which only the browser holds, and this random salt (32 bytes), which only the database holds.
-- Rows written with a salt leave `pkce_verifier` and `nonce` empty; rows written without one
-- (by an earlier release, during a roll-out) still carry the values themselves.
ALTER TABLE login_states ADD COLUMN secret_salt BLOB;
