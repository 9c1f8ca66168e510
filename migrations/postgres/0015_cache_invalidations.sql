-- The change log that keeps the caches of many instances in step: every change that an
-- instance's in-memory caches must forget (a user disabled, deleted or changing teams or
-- identities; an identity unlinked; a registered client changed) adds a row in the transaction of
-- the change, and every instance reads the rows after the last one it applied, several times a
-- second. Rows are kept for a few minutes, then the sweeper deletes them.
CREATE TABLE cache_invalidations (
    -- The order of the log (assigned at insert, visible at commit: see src/service/cache_sync.rs).
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL,
    user_id    UUID,
    issuer     TEXT,
    subject    TEXT,
    client_id  TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    CHECK (
        (kind = 'user' AND user_id IS NOT NULL)
        OR (kind = 'identity' AND issuer IS NOT NULL AND subject IS NOT NULL)
        OR (kind = 'client' AND client_id IS NOT NULL)
    )
);
-- The sweeper's deletion of old rows.
CREATE INDEX cache_invalidations_created_idx ON cache_invalidations (created_at);
