-- The last-use worker rewrites identities.last_seen_at in batches, once per identity per minute
-- at most. Two things made each of those updates cost far more than the column it changes:
--
-- * Pages filled to the brim (bulk loads, imports) have no room for the new row version, so an
--   update could not be HOT (heap-only): it wrote a new entry into each of the table's three
--   indexes. A fill factor of 85 leaves room on every page written from now on.
-- * The trigger that keeps links immutable ran a PL/pgSQL function for every updated row. It now
--   fires only for updates that set one of the link's columns, as it does on SQLite.
ALTER TABLE identities SET (fillfactor = 85);

DROP TRIGGER identities_immutable_link ON identities;
CREATE TRIGGER identities_immutable_link
    BEFORE UPDATE OF user_id, issuer, subject ON identities
    FOR EACH ROW EXECUTE FUNCTION identities_forbid_relink();
