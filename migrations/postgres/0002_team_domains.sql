-- Email domains claimed by teams, for home-realm discovery. A domain belongs to one team.

CREATE TABLE team_domains (
    domain     TEXT PRIMARY KEY,
    team_id    UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    issuer     TEXT NOT NULL,
    verified   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX team_domains_team_id_idx ON team_domains (team_id);
