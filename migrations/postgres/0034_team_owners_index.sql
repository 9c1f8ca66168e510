-- Whether a team has another owner who can act (deleting or demoting a user, a member leaving):
-- read by the team's owners alone, not by every member of a team of thousands.
CREATE INDEX memberships_owners_idx ON memberships (team_id) WHERE role = 'owner';
