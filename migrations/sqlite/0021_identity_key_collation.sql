-- Nothing to change on SQLite: the PostgreSQL migration of the same number makes an identity's
-- (issuer, subject) compare byte for byte, as SQLite's default BINARY collation always did.
-- Migrations come in pairs, so this one exists to keep the versions aligned.
SELECT 1;
