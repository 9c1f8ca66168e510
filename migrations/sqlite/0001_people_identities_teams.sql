-- People, their external identities, teams and memberships, and the outbox.
-- Ids are 16-byte UUID blobs; times are microseconds since the Unix epoch (UTC).

CREATE TABLE users (
    id             BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    email          TEXT,
    email_verified INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1)),
    name           TEXT,
    disabled       INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;
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

-- A link, once made, is never re-pointed: the key and the owner of an identity are immutable.
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
-- At most one default team per user.
CREATE UNIQUE INDEX memberships_one_default_per_user ON memberships (user_id) WHERE is_default = 1;

-- Side effects of a change (webhooks, billing, ...) are written here in the same transaction.
CREATE TABLE outbox_events (
    id           BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    topic        TEXT NOT NULL,
    payload      TEXT NOT NULL CHECK (json_valid(payload)),
    created_at   INTEGER NOT NULL,
    processed_at INTEGER
) STRICT;
CREATE INDEX outbox_events_unprocessed_idx ON outbox_events (created_at) WHERE processed_at IS NULL;
