-- Emails are compared by one rule (`Email::key` in Rust: ASCII case folding only), the same on
-- every backend and every locale. `lower()` folds Unicode on a cluster with a UTF-8 locale, which
-- made addresses such as `İsaac@…` and `isaac@…` (different mailboxes) compare equal.
-- The database keeps the key itself (a generated column, `translate` folds A–Z only), so that
-- rows written by any binary, an older one during a rolling upgrade included, have it.
-- `users_email_lower_idx` stays until no binary older than this migration can run.
ALTER TABLE users ADD COLUMN email_key TEXT
    GENERATED ALWAYS AS (translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')) STORED;
CREATE INDEX users_email_key_idx ON users (email_key);
