-- Email domains claimed by teams, for home-realm discovery. A domain belongs to one team.

CREATE TABLE team_domains (
    domain     TEXT PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    issuer     TEXT NOT NULL,
    verified   INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX team_domains_team_id_idx ON team_domains (team_id);
