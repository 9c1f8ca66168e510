-- Connected accounts, continued: granted scopes, and a team default profile per connector.

-- What the provider granted, space-separated like `scopes` (which keeps what was asked for); NULL
-- until connected. Until now a connection overwrote `scopes` with the granted ones, so connected
-- profiles start with those.
ALTER TABLE auth_profiles ADD COLUMN granted_scopes TEXT;
-- GitHub's answer was a comma-separated list stored as one word: split it like every other list.
UPDATE auth_profiles SET granted_scopes = replace(scopes, ',', ' ') WHERE status IN ('active', 'needs_reauth');

-- A profile's (id, team, connector), as a key that the defaults reference: a default can only
-- name a profile of its own team and connector.
CREATE UNIQUE INDEX auth_profiles_id_team_connector_key ON auth_profiles (id, team_id, connector_key);

-- The team's default profile of each connector. One row per (team, connector): at most one
-- default, and switching is a single upsert.
CREATE TABLE connector_defaults (
    team_id       UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    connector_key TEXT NOT NULL,
    profile_id    UUID NOT NULL UNIQUE,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, connector_key),
    FOREIGN KEY (profile_id, team_id, connector_key)
        REFERENCES auth_profiles (id, team_id, connector_key) ON DELETE CASCADE
);

-- A revoked profile stops being the default, whatever revoked it.
CREATE FUNCTION connector_defaults_drop_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM connector_defaults WHERE profile_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER connector_defaults_drop_revoked AFTER UPDATE OF status ON auth_profiles
    FOR EACH ROW WHEN (NEW.status = 'revoked') EXECUTE FUNCTION connector_defaults_drop_revoked();
