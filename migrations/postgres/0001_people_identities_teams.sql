-- People, their external identities, teams and memberships, and the outbox.

CREATE TABLE users (
    id             UUID PRIMARY KEY,
    email          TEXT,
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    name           TEXT,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX users_email_lower_idx ON users (lower(email));

CREATE TABLE identities (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (id),
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    email          TEXT,
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL,
    last_seen_at   TIMESTAMPTZ NOT NULL,
    CONSTRAINT identities_issuer_subject_key UNIQUE (issuer, subject)
);
CREATE INDEX identities_user_id_idx ON identities (user_id);

-- A link, once made, is never re-pointed: the key and the owner of an identity are immutable.
CREATE FUNCTION identities_forbid_relink() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id <> OLD.user_id OR NEW.issuer <> OLD.issuer OR NEW.subject <> OLD.subject THEN
        RAISE EXCEPTION 'identity links are immutable' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER identities_immutable_link
    BEFORE UPDATE ON identities
    FOR EACH ROW EXECUTE FUNCTION identities_forbid_relink();

CREATE TABLE teams (
    id         UUID PRIMARY KEY,
    slug       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT teams_slug_key UNIQUE (slug)
);

CREATE TABLE memberships (
    team_id    UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id),
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    is_default BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user_id_idx ON memberships (user_id);
-- At most one default team per user.
CREATE UNIQUE INDEX memberships_one_default_per_user ON memberships (user_id) WHERE is_default;

-- Side effects of a change (webhooks, billing, ...) are written here in the same transaction.
CREATE TABLE outbox_events (
    id           UUID PRIMARY KEY,
    topic        TEXT NOT NULL,
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ
);
CREATE INDEX outbox_events_unprocessed_idx ON outbox_events (created_at) WHERE processed_at IS NULL;
