-- "Remove access" (a user's grants to one client, `remove_app`) read every grant of the client on
-- SQLite, which keeps no statistics to choose between the user's index and the client's: one
-- index of both, which serves every read by user alone too, in place of the user's.
CREATE INDEX oauth_grants_user_client_idx ON oauth_grants (user_id, client_id);
DROP INDEX oauth_grants_user_id_idx;
