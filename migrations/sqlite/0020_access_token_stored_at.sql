-- When a connected account's access token was stored, so that a token living less than twice the
-- refresh window is refreshed at half its life rather than on every use (NULL: stored before
-- this migration; such a token keeps the plain window).
ALTER TABLE auth_profiles ADD COLUMN access_token_stored_at INTEGER;
