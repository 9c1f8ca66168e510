-- Emails are compared by one rule in Rust (`Email::key`: ASCII case folding only), the same on
-- every backend. SQLite's built-in `lower()` folds ASCII only, so it computes the same key.
ALTER TABLE users ADD COLUMN email_key TEXT;
UPDATE users SET email_key = lower(email) WHERE email IS NOT NULL;
DROP INDEX users_email_lower_idx;
CREATE INDEX users_email_key_idx ON users (email_key);
