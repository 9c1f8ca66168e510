-- Emails are compared by one rule (`Email::key` in Rust: ASCII case folding only), the same on
-- every backend. The database keeps the key itself (a generated column), so that rows written
-- by any binary have it; SQLite's built-in `lower()` folds ASCII only, which is the rule.
ALTER TABLE users ADD COLUMN email_key TEXT GENERATED ALWAYS AS (lower(email)) VIRTUAL;
CREATE INDEX users_email_key_idx ON users (email_key);
