-- The audit log: one append-only row per admin action and security decision. `id` orders the
-- rows (the cursor of `GET /admin/audit`); rows are never updated, and deleted only by the
-- retention sweep (`audit.retention_days`). No secret, token, code, cookie or email is stored.
CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
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
    details     JSONB
);
CREATE INDEX audit_events_at_idx ON audit_events (at);
CREATE INDEX audit_events_target_idx ON audit_events (target_kind, target_id, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);

-- Append-only: an UPDATE is refused, whoever sends it.
CREATE FUNCTION audit_events_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_update();
