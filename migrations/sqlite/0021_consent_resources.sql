-- The resources (RFC 8707) a user's consent to a third-party client covers, space-separated: a
-- request for a resource not in it asks again, as one for a scope not consented to does.
-- Consents given before this migration cover no resource.
ALTER TABLE oauth_consents ADD COLUMN resources TEXT NOT NULL DEFAULT '';
