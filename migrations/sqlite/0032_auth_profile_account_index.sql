-- Whether another live profile holds the same upstream account (`account_in_use`, asked before a
-- revoked profile's tokens are revoked at the provider: once per profile on a revocation, and for
-- each of a deleted team's or removed member's profiles) read the whole table without it.
CREATE INDEX auth_profiles_account_idx ON auth_profiles (provider, upstream_account_id)
    WHERE status IN ('active', 'needs_reauth');
