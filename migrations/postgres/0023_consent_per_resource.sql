-- What a user consented to for each resource (RFC 8707), paired: one line per resource, the
-- resource then the scopes approved with it, space-separated. `scope` keeps what was approved
-- without a resource. Two approvals given apart (offline access for the app's own tokens, a
-- resource with fewer scopes) no longer add up to a pair the consent page never showed. The
-- `resources` list of migration 21 did not say which scopes went with which resource: those
-- consents cover no resource from here on (the app asks once more); it is still written, for
-- binaries of before this migration during a roll-out.
ALTER TABLE oauth_consents ADD COLUMN resource_scopes TEXT NOT NULL DEFAULT '';
-- Before, `scope` held every scope approved, with a resource or not: where a resource was
-- approved, it cannot say which were approved without one, so it covers none (asked once more).
UPDATE oauth_consents SET scope = '' WHERE resources <> '';
