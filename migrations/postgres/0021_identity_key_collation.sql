-- An identity's key, (issuer, subject), is compared byte for byte: an issuer is a URL and a
-- subject an opaque string, neither of them text in a human language. Until now the two columns
-- took the database's default collation, which on most production clusters (en_US.UTF-8,
-- ICU) makes every comparison in the unique index a locale-aware one: a token's identity lookup
-- at a million identities costs 30-80% more than with "C" (docs/benchmarks.md), and an
-- operating-system upgrade that changes the locale's sort order leaves the index in an order the
-- new library does not agree with. SQLite always compared these bytewise (its BINARY collation).
--
-- Equality is unchanged (deterministic collations compare equal only identical bytes), so no
-- row becomes a duplicate. The table is not rewritten; the unique index is rebuilt, holding the
-- table's lock for as long as that takes (seconds per million identities). The link trigger
-- names the columns, so it is recreated around the change.
DROP TRIGGER identities_immutable_link ON identities;

ALTER TABLE identities
    ALTER COLUMN issuer TYPE TEXT COLLATE "C",
    ALTER COLUMN subject TYPE TEXT COLLATE "C";

CREATE TRIGGER identities_immutable_link
    BEFORE UPDATE OF user_id, issuer, subject ON identities
    FOR EACH ROW EXECUTE FUNCTION identities_forbid_relink();
