-- Tessera's own token-signing keys (as an OpenID Provider). A key is published (in the JWKS)
-- from created_at, signs from signs_from, stops signing at retired_at and leaves the JWKS at
-- unpublish_at. private_key is the key-ring ciphertext of the PKCS#8 DER, bound to
-- 'signing_keys|<kid>|private_key' (see src/crypto/keyring.rs).
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    alg          TEXT NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    public_jwk   TEXT NOT NULL CHECK (json_valid(public_jwk)),
    private_key  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    signs_from   INTEGER NOT NULL,
    retired_at   INTEGER,
    unpublish_at INTEGER,
    CHECK (signs_from >= created_at),
    CHECK ((retired_at IS NULL) = (unpublish_at IS NULL)),
    CHECK (unpublish_at IS NULL OR unpublish_at >= retired_at)
) STRICT;
-- One key per algorithm is not retired: the one signing, or the next one once a rotation started
-- (the previous key then has its retirement set). Two concurrent rotations cannot both insert.
CREATE UNIQUE INDEX signing_keys_one_unretired_per_alg ON signing_keys (alg) WHERE retired_at IS NULL;
CREATE INDEX signing_keys_unpublish_at_idx ON signing_keys (unpublish_at);
