-- A sign-in started for a relying party's `prompt=login` or `max_age` must come back with a fresh
-- authentication at the upstream provider (its id_token's `auth_time`); the flow remembers it.
ALTER TABLE login_states ADD COLUMN fresh_login INTEGER NOT NULL DEFAULT 0 CHECK (fresh_login IN (0, 1));
