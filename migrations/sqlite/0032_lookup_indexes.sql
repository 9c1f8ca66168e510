-- Whether another live profile holds the same upstream account (`account_in_use`, asked before a
-- revoked profile's tokens are revoked at the provider: once per profile on a revocation, and for
-- each of a deleted team's or removed member's profiles) read the whole table without it.
CREATE INDEX auth_profiles_account_idx ON auth_profiles (provider, upstream_account_id)
    WHERE status IN ('active', 'needs_reauth');

-- The oldest pending delivery of each endpoint (`webhook_queues`, at every metrics scrape) read
-- every pending row of the table without it: millions, behind an endpoint disabled for a month.
CREATE INDEX webhook_deliveries_pending_scheduled_idx ON webhook_deliveries (endpoint_id, scheduled_at)
    WHERE state = 'pending';
