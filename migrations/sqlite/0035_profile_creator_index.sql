-- A member's profile of a connector (the credentials endpoint, at every agent's tool call; a
-- pending connection's key): found by team, connector and maker, not by reading every member's
-- profile of the connector in the team (PostgreSQL's generic plan, after five executions on a
-- connection, filtered them all). Replaces the two-column index, whose prefix it serves.
CREATE INDEX auth_profiles_team_connector_creator_idx ON auth_profiles (team_id, connector_key, created_by);
DROP INDEX auth_profiles_team_connector_idx;
