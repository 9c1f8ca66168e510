-- A new kind of row in the cache-invalidation log: 'signing_keys', written when a first key of an
-- algorithm is made or a rotation starts, so that every instance re-reads the keys at once and
-- its JWKS names a first key (which signs at once) before a relying party asks for it.
-- SQLite cannot change a CHECK: the log is copied into a new table, keeping its rows' numbers
-- and the highest number ever given (a number is never reused, even after every row is deleted).
CREATE TABLE cache_invalidations_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    user_id    BLOB CHECK (user_id IS NULL OR length(user_id) = 16),
    issuer     TEXT,
    subject    TEXT,
    client_id  TEXT,
    created_at INTEGER NOT NULL,
    CHECK (
        (kind = 'user' AND user_id IS NOT NULL)
        OR (kind = 'identity' AND issuer IS NOT NULL AND subject IS NOT NULL)
        OR (kind = 'client' AND client_id IS NOT NULL)
        OR kind = 'signing_keys'
    )
) STRICT;
INSERT INTO cache_invalidations_new (seq, kind, user_id, issuer, subject, client_id, created_at)
    SELECT seq, kind, user_id, issuer, subject, client_id, created_at FROM cache_invalidations;
DELETE FROM sqlite_sequence WHERE name = 'cache_invalidations_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'cache_invalidations_new', seq FROM sqlite_sequence WHERE name = 'cache_invalidations';
DROP TABLE cache_invalidations;
ALTER TABLE cache_invalidations_new RENAME TO cache_invalidations;
CREATE INDEX cache_invalidations_created_idx ON cache_invalidations (created_at);
