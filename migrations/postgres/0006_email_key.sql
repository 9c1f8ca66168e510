-- Emails are compared by one rule in Rust (`Email::key`: ASCII case folding only), the same on
-- every backend and every locale. `lower()` folds Unicode on a cluster with a UTF-8 locale, which
-- made addresses such as `İsaac@…` and `isaac@…` (different mailboxes) compare equal.
ALTER TABLE users ADD COLUMN email_key TEXT;
UPDATE users SET email_key = translate(email, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
WHERE email IS NOT NULL;
DROP INDEX users_email_lower_idx;
CREATE INDEX users_email_key_idx ON users (email_key);
