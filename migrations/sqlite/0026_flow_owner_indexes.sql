-- Indexes on the columns that tie sign-in flows and connect links to a profile or a user. Each
-- is a foreign key with ON DELETE CASCADE and is filtered on when a member is removed or a user
-- deleted; without an index every deleted profile or user read the whole table, and anyone can
-- fill login_states by starting sign-ins.
CREATE INDEX login_states_profile_id_idx ON login_states (profile_id) WHERE profile_id IS NOT NULL;
CREATE INDEX login_states_link_user_id_idx ON login_states (link_user_id) WHERE link_user_id IS NOT NULL;
CREATE INDEX connect_tokens_user_id_idx ON connect_tokens (user_id);
