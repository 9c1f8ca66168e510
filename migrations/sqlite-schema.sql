-- Generated from migrations/sqlite/ by `create_new_sqlite_matches_the_migrations` (src/store/db.rs):
-- the schema a new SQLite file gets in one transaction. Do not edit; after adding a migration,
-- run that test with TESSERA_BLESS_SCHEMA=1 to rewrite this file.

CREATE TABLE _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);

CREATE TABLE users (
    id             BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    email          TEXT,
    email_verified INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    name           TEXT,
    disabled       INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
, primary_identity_id BLOB REFERENCES identities (id) ON DELETE SET NULL, email_key TEXT GENERATED ALWAYS AS (lower(email)) VIRTUAL) STRICT;

CREATE INDEX users_email_lower_idx ON users (lower(email));

CREATE TABLE identities (
    id             BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    user_id        BLOB NOT NULL REFERENCES users (id),
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    email          TEXT,
    email_verified INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    UNIQUE (issuer, subject)
) STRICT;

CREATE INDEX identities_user_id_idx ON identities (user_id);

CREATE TRIGGER identities_immutable_link
    BEFORE UPDATE OF user_id, issuer, subject ON identities
    WHEN NEW.user_id IS NOT OLD.user_id OR NEW.issuer IS NOT OLD.issuer OR NEW.subject IS NOT OLD.subject
BEGIN
    SELECT RAISE(ABORT, 'identity links are immutable');
END;

CREATE TABLE teams (
    id         BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE memberships (
    team_id    BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id),
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    is_default INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
) STRICT;

CREATE INDEX memberships_user_id_idx ON memberships (user_id);

CREATE UNIQUE INDEX memberships_one_default_per_user ON memberships (user_id) WHERE is_default = 1;

CREATE TABLE team_domains (
    domain     TEXT PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    issuer     TEXT NOT NULL,
    verified   INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX team_domains_team_id_idx ON team_domains (team_id);

CREATE TABLE login_states (
    state_hash    BLOB PRIMARY KEY NOT NULL,
    provider      TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    return_to     TEXT NOT NULL,
    link_user_id  BLOB REFERENCES users (id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
, profile_id BLOB REFERENCES auth_profiles (id) ON DELETE CASCADE, profile_version INTEGER, allow_account_change INTEGER NOT NULL DEFAULT 0, fresh_login INTEGER NOT NULL DEFAULT 0 CHECK (fresh_login IN (0, 1)), secret_salt BLOB) STRICT;

CREATE INDEX login_states_expires_at_idx ON login_states (expires_at);

CREATE TABLE sessions (
    token_hash   BLOB PRIMARY KEY NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    identity_id  BLOB REFERENCES identities (id) ON DELETE SET NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
, device TEXT, authenticated_at INTEGER) STRICT;

CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE identity_tokens (
    identity_id   BLOB PRIMARY KEY NOT NULL REFERENCES identities (id) ON DELETE CASCADE,
    access_token  BLOB NOT NULL,
    refresh_token BLOB,
    expires_at    INTEGER,
    scopes        TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE identity_events (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id),
    identity_id BLOB NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('link', 'unlink', 'primary')),
    provider    TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX identity_events_user_id_idx ON identity_events (user_id, created_at);

CREATE TABLE auth_profiles (
    id                      BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    team_id                 BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    slug                    TEXT NOT NULL,
    connector_key           TEXT NOT NULL,
    profile_kind            TEXT NOT NULL
        CHECK (profile_kind IN ('oauth_account', 'oauth_app', 'env', 'interactive', 'browser_session')),
    provider                TEXT NOT NULL CHECK (provider = lower(provider)),
    status                  TEXT NOT NULL CHECK (status IN ('pending_auth', 'active', 'needs_reauth', 'revoked')),
    created_by              BLOB NOT NULL REFERENCES users (id),
    display_name            TEXT NOT NULL,
    scopes                  TEXT NOT NULL,
    upstream_account_id     TEXT,
    access_token            BLOB,
    refresh_token           BLOB,
    access_token_expires_at INTEGER,
    pending_expires_at      INTEGER,
    version                 INTEGER NOT NULL DEFAULT 0,
    refresh_lease_owner     BLOB,
    refresh_lease_until     INTEGER,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
, token_version INTEGER NOT NULL DEFAULT 0, granted_scopes TEXT, access_token_stored_at INTEGER) STRICT;

CREATE UNIQUE INDEX auth_profiles_team_slug_key ON auth_profiles (team_id, slug) WHERE status <> 'revoked';

CREATE UNIQUE INDEX auth_profiles_pending_oauth_account_key
    ON auth_profiles (team_id, connector_key, provider, created_by)
    WHERE status = 'pending_auth' AND profile_kind = 'oauth_account';

CREATE UNIQUE INDEX auth_profiles_pending_oauth_app_key
    ON auth_profiles (team_id, connector_key, provider)
    WHERE status = 'pending_auth' AND profile_kind = 'oauth_app';

CREATE INDEX auth_profiles_pending_expiry_idx ON auth_profiles (pending_expires_at) WHERE status = 'pending_auth';

CREATE TABLE connect_tokens (
    token_hash           BLOB PRIMARY KEY NOT NULL,
    profile_id           BLOB NOT NULL REFERENCES auth_profiles (id) ON DELETE CASCADE,
    user_id              BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    allow_account_change INTEGER NOT NULL DEFAULT 0 CHECK (allow_account_change IN (0, 1)),
    created_at           INTEGER NOT NULL,
    expires_at           INTEGER NOT NULL
) STRICT;

CREATE INDEX connect_tokens_profile_id_idx ON connect_tokens (profile_id);

CREATE INDEX connect_tokens_expires_at_idx ON connect_tokens (expires_at);

CREATE INDEX users_email_key_idx ON users (email_key);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    alg          TEXT NOT NULL CHECK (alg IN ('ES256', 'RS256', 'EdDSA')),
    public_jwk   TEXT NOT NULL CHECK (json_valid(public_jwk)),
    private_key  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    signs_from   INTEGER NOT NULL,
    retired_at   INTEGER,
    unpublish_at INTEGER,
    CHECK (signs_from >= created_at),
    CHECK ((retired_at IS NULL) = (unpublish_at IS NULL)),
    CHECK (unpublish_at IS NULL OR unpublish_at >= retired_at)
) STRICT;

CREATE UNIQUE INDEX signing_keys_one_unretired_per_alg ON signing_keys (alg) WHERE retired_at IS NULL;

CREATE INDEX signing_keys_unpublish_at_idx ON signing_keys (unpublish_at);

CREATE TABLE clients (
    id                        TEXT PRIMARY KEY NOT NULL,
    name                      TEXT NOT NULL,
    kind                      TEXT NOT NULL CHECK (kind IN ('confidential', 'public')),
    secret_hash               BLOB CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    jwks                      TEXT CHECK (jwks IS NULL OR json_valid(jwks)),
    redirect_uris             TEXT NOT NULL CHECK (json_valid(redirect_uris)),
    post_logout_redirect_uris TEXT NOT NULL CHECK (json_valid(post_logout_redirect_uris)),
    scopes                    TEXT NOT NULL CHECK (json_valid(scopes)),
    grant_types               TEXT NOT NULL CHECK (json_valid(grant_types)),
    resources                 TEXT NOT NULL CHECK (json_valid(resources)),
    first_party               INTEGER NOT NULL DEFAULT 0 CHECK (first_party IN (0, 1)),
    signing_alg               TEXT NOT NULL,
    access_token_ttl_seconds  INTEGER NOT NULL CHECK (access_token_ttl_seconds > 0),
    refresh_token_ttl_seconds INTEGER NOT NULL CHECK (refresh_token_ttl_seconds > 0),
    from_config               INTEGER NOT NULL DEFAULT 0 CHECK (from_config IN (0, 1)),
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL, previous_secret_hash BLOB
    CHECK (previous_secret_hash IS NULL OR length(previous_secret_hash) = 32), previous_secret_until INTEGER,
    -- A public client has nothing to authenticate with.
    CHECK (kind = 'confidential' OR (secret_hash IS NULL AND jwks IS NULL))
) STRICT;

CREATE TABLE client_assertions (
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) STRICT;

CREATE INDEX client_assertions_expires_at_idx ON client_assertions (expires_at);

CREATE TABLE oauth_grants (
    id           BLOB PRIMARY KEY NOT NULL,
    client_id    TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The upstream identity and the browser session the user signed in with; not foreign keys:
    -- once either is gone (unlinked, signed out, expired) the grant is no longer active.
    identity_id  BLOB,
    session_hash BLOB,
    scope        TEXT NOT NULL,
    resource     TEXT,
    provider     TEXT,
    auth_time    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX oauth_grants_expires_at_idx ON oauth_grants (expires_at);

CREATE INDEX oauth_grants_client_id_idx ON oauth_grants (client_id);

CREATE TABLE oauth_codes (
    code_hash      BLOB PRIMARY KEY NOT NULL,
    grant_id       BLOB NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT,
    nonce          TEXT,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
) STRICT;

CREATE INDEX oauth_codes_grant_id_idx ON oauth_codes (grant_id);

CREATE TABLE oauth_refresh_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    grant_id   BLOB NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;

CREATE INDEX oauth_refresh_tokens_grant_id_idx ON oauth_refresh_tokens (grant_id);

CREATE TABLE oauth_consents (
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    updated_at INTEGER NOT NULL, resources TEXT NOT NULL DEFAULT '', resource_scopes TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, client_id)
) STRICT;

CREATE TABLE oauth_requests (
    id_hash      BLOB PRIMARY KEY NOT NULL,
    client_id    TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    params       TEXT NOT NULL,
    session_hash BLOB,
    expires_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX oauth_requests_expires_at_idx ON oauth_requests (expires_at);

CREATE INDEX oauth_requests_client_id_idx ON oauth_requests (client_id);

CREATE INDEX oauth_consents_client_id_idx ON oauth_consents (client_id);

CREATE TABLE "outbox_events" (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL CHECK (json_valid(payload)),
    created_at   INTEGER NOT NULL,
    processed_at INTEGER
) STRICT;

CREATE INDEX outbox_events_unprocessed_idx ON outbox_events (seq) WHERE processed_at IS NULL;

CREATE TABLE webhook_endpoints (
    id          BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    url         TEXT NOT NULL,
    -- Topics, space-separated; empty: every topic.
    event_types TEXT NOT NULL,
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    -- The signing key, encrypted by the key ring (bound to this row and column).
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    -- The instance delivering to this endpoint, and until when.
    lease_owner BLOB,
    lease_until INTEGER
, previous_secret BLOB, previous_secret_until INTEGER, config_name TEXT, disabled_at INTEGER) STRICT;

CREATE TABLE webhook_deliveries (
    id              BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    endpoint_id     BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        BLOB NOT NULL REFERENCES outbox_events (id) ON DELETE CASCADE,
    event_seq       INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL,
    -- Start of the current series of attempts (creation, or the last replay): retries end
    -- `webhooks.give_up_after_seconds` after it.
    scheduled_at    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL,
    UNIQUE (endpoint_id, event_id)
) STRICT;

CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, event_seq);

CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, event_seq) WHERE state = 'pending';

CREATE TABLE profile_credentials (
    profile_id BLOB PRIMARY KEY NOT NULL CHECK (length(profile_id) = 16)
        REFERENCES auth_profiles (id) ON DELETE CASCADE,
    credential BLOB NOT NULL,
    meta       TEXT NOT NULL CHECK (json_valid(meta)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX auth_profiles_id_team_connector_key ON auth_profiles (id, team_id, connector_key);

CREATE TABLE connector_defaults (
    team_id       BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    connector_key TEXT NOT NULL,
    profile_id    BLOB NOT NULL UNIQUE,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (team_id, connector_key),
    FOREIGN KEY (profile_id, team_id, connector_key)
        REFERENCES auth_profiles (id, team_id, connector_key) ON DELETE CASCADE
) STRICT;

CREATE TRIGGER connector_defaults_drop_revoked AFTER UPDATE OF status ON auth_profiles
    FOR EACH ROW WHEN NEW.status = 'revoked'
BEGIN
    DELETE FROM connector_defaults WHERE profile_id = NEW.id;
END;

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor_kind  TEXT NOT NULL CHECK (actor_kind IN ('admin_token', 'user', 'system')),
    actor_id    TEXT,
    actor_name  TEXT,
    action      TEXT NOT NULL,
    target_kind TEXT,
    target_id   TEXT,
    request_id  TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    -- An error code (`ErrorCode`) for failures.
    reason      TEXT,
    details     TEXT CHECK (details IS NULL OR json_valid(details))
) STRICT;

CREATE INDEX audit_events_at_idx ON audit_events (at);

CREATE INDEX audit_events_target_idx ON audit_events (target_kind, target_id, id);

CREATE INDEX audit_events_action_idx ON audit_events (action, id);

CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE UNIQUE INDEX webhook_endpoints_config_name_idx ON webhook_endpoints (config_name);

CREATE INDEX outbox_events_created_idx ON outbox_events (created_at);

CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

CREATE INDEX sessions_identity_id_idx ON sessions (identity_id);

CREATE INDEX users_primary_identity_id_idx ON users (primary_identity_id) WHERE primary_identity_id IS NOT NULL;

CREATE INDEX sessions_last_seen_at_idx ON sessions (last_seen_at);

CREATE INDEX oauth_codes_unused_expiry_idx ON oauth_codes (expires_at) WHERE used_at IS NULL;

CREATE INDEX auth_profiles_created_by_idx ON auth_profiles (created_by);

CREATE TABLE "cache_invalidations" (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    user_id    BLOB CHECK (user_id IS NULL OR length(user_id) = 16),
    issuer     TEXT,
    subject    TEXT,
    client_id  TEXT,
    created_at INTEGER NOT NULL,
    CHECK (
        (kind = 'user' AND user_id IS NOT NULL)
        OR (kind = 'identity' AND issuer IS NOT NULL AND subject IS NOT NULL)
        OR (kind = 'client' AND client_id IS NOT NULL)
        OR kind = 'signing_keys'
    )
) STRICT;

CREATE INDEX cache_invalidations_created_idx ON cache_invalidations (created_at);

CREATE INDEX login_states_profile_id_idx ON login_states (profile_id) WHERE profile_id IS NOT NULL;

CREATE INDEX login_states_link_user_id_idx ON login_states (link_user_id) WHERE link_user_id IS NOT NULL;

CREATE INDEX connect_tokens_user_id_idx ON connect_tokens (user_id);

CREATE INDEX audit_events_actor_id_idx ON audit_events (actor_id, id);

CREATE INDEX audit_events_actor_name_idx ON audit_events (actor_name, id);

CREATE INDEX outbox_events_processed_seq_idx ON outbox_events (seq) WHERE processed_at IS NOT NULL;

CREATE INDEX outbox_events_processed_created_idx ON outbox_events (created_at) WHERE processed_at IS NOT NULL;

CREATE INDEX auth_profiles_account_idx ON auth_profiles (provider, upstream_account_id)
    WHERE status IN ('active', 'needs_reauth');

CREATE INDEX webhook_deliveries_pending_scheduled_idx ON webhook_deliveries (endpoint_id, scheduled_at)
    WHERE state = 'pending';

CREATE INDEX oauth_grants_user_client_idx ON oauth_grants (user_id, client_id);

CREATE INDEX memberships_owners_idx ON memberships (team_id) WHERE role = 'owner';

CREATE INDEX auth_profiles_team_connector_creator_idx ON auth_profiles (team_id, connector_key, created_by);
