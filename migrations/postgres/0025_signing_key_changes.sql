-- A new kind of row in the cache-invalidation log: 'signing_keys', written when a first key of an
-- algorithm is made or a rotation starts, so that every instance re-reads the keys at once and
-- its JWKS names a first key (which signs at once) before a relying party asks for it.
ALTER TABLE cache_invalidations DROP CONSTRAINT cache_invalidations_check;
ALTER TABLE cache_invalidations ADD CONSTRAINT cache_invalidations_kind_check CHECK (
    (kind = 'user' AND user_id IS NOT NULL)
    OR (kind = 'identity' AND issuer IS NOT NULL AND subject IS NOT NULL)
    OR (kind = 'client' AND client_id IS NOT NULL)
    OR kind = 'signing_keys'
);
