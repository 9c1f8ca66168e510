//! The audit log's SQL: rows appended (never updated), read latest first a page at a time, and
//! deleted past their retention in bounded batches.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::StoreError;
use super::db::{Db, Query, Tx, query};
use super::rows::RowExt;

/// Who did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    /// An admin token (identified by its position in `admin_tokens`, never by its value).
    AdminToken,
    /// A person, signed in or signing in.
    User,
    /// Tessera itself (a background loop, a command).
    System,
}

impl ActorKind {
    /// The stored and served name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::AdminToken => "admin_token",
            ActorKind::User => "user",
            ActorKind::System => "system",
        }
    }

    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "admin_token" => ActorKind::AdminToken,
            "user" => ActorKind::User,
            "system" => ActorKind::System,
            other => return Err(StoreError::Corrupt(format!("unknown audit actor kind {other:?}"))),
        })
    }
}

/// An audit row to append. Nothing in it may be a secret, a token, a code, a cookie or an email.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor_kind: ActorKind,
    /// Their id (a user id, an admin token's position), if known.
    pub actor_id: Option<String>,
    /// Their name (`admin_tokens[0]`, a background job), if any.
    pub actor_name: Option<String>,
    /// What, snake_case and dotted: `user.disabled`, `sign_in.failed`.
    pub action: String,
    /// The kind of thing it was done to (`user`, `team`, `client`…).
    pub target_kind: Option<String>,
    /// Its id.
    pub target_id: Option<String>,
    /// The request it was done in.
    pub request_id: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// Why it failed: an error code.
    pub reason: Option<String>,
    /// Further facts (a provider, a linking rule, a count).
    pub details: Option<serde_json::Value>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// Its position: later rows have larger ids.
    pub id: i64,
    /// The row as appended.
    pub event: NewAuditEvent,
}

/// Which rows [`Store::audit_events`](super::Store::audit_events) returns, latest first: every
/// filter that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Rows of this action.
    pub action: Option<String>,
    /// Rows whose actor has this id or this name.
    pub actor: Option<String>,
    /// Rows whose target is of this kind.
    pub target_kind: Option<String>,
    /// Rows whose target has this id.
    pub target_id: Option<String>,
    /// Rows at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Rows before this time.
    pub until: Option<DateTime<Utc>>,
    /// Rows with a smaller id (the last id of the previous page).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// The action of a member's connection of an account to a profile (OAuth, or credentials stored),
/// recorded by the store in the connection's transaction.
pub const AUTH_PROFILE_CONNECTED: &str = "auth_profile.connected";
/// The action of a member's revocation of a profile, recorded in its transaction.
pub const AUTH_PROFILE_REVOKED: &str = "auth_profile.revoked";
/// The action of a user's approval on the consent page, recorded in the consent's transaction.
pub const APP_AUTHORIZED: &str = "app.authorized";

/// Most rows one `INSERT` of [`insert_rows`] writes; longer lists take several, in a transaction.
pub(super) const ROWS_PER_INSERT: usize = 16;

/// The columns an `INSERT INTO audit_events` names, in the order [`bind`] binds them.
pub(super) const COLUMNS_SQL: &str =
    "(at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome, reason, details)";

/// The columns each row of [`insert_rows`] binds.
pub(super) const COLUMNS: usize = 11;

/// Binds `event`'s columns to `insert`, in the order of [`COLUMNS_SQL`].
pub(super) fn bind<'q>(insert: Query<'q>, event: &'q NewAuditEvent) -> Query<'q> {
    insert
        .bind(event.at)
        .bind(event.actor_kind.as_str())
        .bind(event.actor_id.as_deref())
        .bind(event.actor_name.as_deref())
        .bind(event.action.as_str())
        .bind(event.target_kind.as_deref())
        .bind(event.target_id.as_deref())
        .bind(event.request_id.as_deref())
        .bind(if event.success { "success" } else { "failure" })
        .bind(event.reason.as_deref())
        .bind(event.details.clone())
}

/// Appends rows in `tx`, in their order.
pub(super) async fn insert(tx: &mut Tx, events: &[NewAuditEvent]) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        insert_rows(chunk).execute(&mut *tx).await?;
    }
    Ok(())
}

/// The `INSERT` of `events` (1 to [`ROWS_PER_INSERT`]) as one multi-row `VALUES`, whose rows take
/// their ids in the order given.
pub(super) fn insert_rows(events: &[NewAuditEvent]) -> Query<'_> {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        super::db::multi_row_inserts(&format!("INSERT INTO audit_events {COLUMNS_SQL}"), COLUMNS, ROWS_PER_INSERT)
    });
    assert!((1..=ROWS_PER_INSERT).contains(&events.len()), "1 to {ROWS_PER_INSERT} rows an INSERT");
    let mut insert = query(SQL[events.len() - 1].as_str());
    for event in events {
        insert = bind(insert, event);
    }
    insert
}

/// Appends rows, in their order and atomically: one statement for up to [`ROWS_PER_INSERT`].
pub(super) async fn append(db: &Db, events: &[NewAuditEvent]) -> Result<(), StoreError> {
    match events.len() {
        0 => Ok(()),
        1..=ROWS_PER_INSERT => insert_rows(events).execute(db.writer()).await.map(drop),
        _ => {
            let mut tx = db.begin().await?;
            insert(&mut tx, events).await?;
            tx.commit().await
        }
    }
}

/// The filters of a page after `$lead`, the condition an index answers (one of the filters,
/// repeated), latest first: a rare actor, action or target is found through its index rather
/// than by walking the log from its newest row (on SQLite, `($1 IS NULL OR …)` alone uses no
/// index), and a later page starts in the index where the previous one ended (`id < $7`, never
/// `$7 IS NULL OR …`). A `since` with at most 10,000 rows at or after it bounds the walk too,
/// by the lowest id among them (read by `audit_events_at_idx`, at most that many entries): a last
/// page, or one with nothing since, ends there rather than walking every older row (what a
/// poller asking `since` its last poll would do). With more, reading them all for the bound
/// would cost every page more than the walk it saves a last one (or one of a rare action), which
/// then walks on below them. An `until` with at most 10,000 rows before it bounds the walk from
/// above the same way, by the highest id among them: a page of last year's rows starts there
/// rather than walking every newer row. (Both bounds read `id + 0`, as `FIRST_PROCESSED_SINCE`
/// does: PostgreSQL would otherwise answer a bare `min(id)`/`max(id)` by walking the primary key
/// from the wrong end, filtering on `at`, through every row the bound is there to skip.)
macro_rules! audit_where {
    ($lead:literal) => {
        concat!(
            " WHERE ",
            $lead,
            "
               AND ($1 IS NULL OR action = $1)
               AND ($2 IS NULL OR actor_id = $2 OR actor_name = $2)
               AND ($3 IS NULL OR target_kind = $3)
               AND ($4 IS NULL OR target_id = $4)
               AND ($5 IS NULL OR at >= $5)
               AND ($6 IS NULL OR at < $6)
               AND id < COALESCE($7, 9223372036854775807)
               AND id >= CASE
                   WHEN $5 IS NULL THEN 0
                   WHEN EXISTS (SELECT 1 FROM audit_events WHERE at >= $5 LIMIT 1 OFFSET 10000) THEN 0
                   ELSE COALESCE((SELECT min(id + 0) FROM audit_events WHERE at >= $5), 9223372036854775807)
                 END
               AND id <= CASE
                   WHEN $6 IS NULL THEN 9223372036854775807
                   WHEN EXISTS (SELECT 1 FROM audit_events WHERE at < $6 LIMIT 1 OFFSET 10000) THEN 9223372036854775807
                   ELSE COALESCE((SELECT max(id + 0) FROM audit_events WHERE at < $6), -1)
                 END
             ORDER BY id DESC
             LIMIT $8"
        )
    };
}

/// The columns of a page.
macro_rules! audit_columns {
    () => {
        "SELECT id, at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome,
                reason, details
         FROM audit_events"
    };
}

/// A page led by its target, kind and id (`audit_events_target_idx`).
pub(super) const PAGE_BY_TARGET: &str = concat!(audit_columns!(), audit_where!("target_kind = $3 AND target_id = $4"));
/// A page led by its actor: the newest ids by actor id and by actor name, each read in order from
/// its index (`audit_events_actor_id_idx`, `audit_events_actor_name_idx`) and merged, so that an
/// actor with a million rows costs a page, not a sort of its million.
pub(super) const PAGE_BY_ACTOR: &str = concat!(
    audit_columns!(),
    " WHERE id IN (SELECT id FROM (SELECT id FROM audit_events",
    audit_where!("actor_id = $2"),
    ") AS by_id UNION SELECT id FROM (SELECT id FROM audit_events",
    audit_where!("actor_name = $2"),
    ") AS by_name) ORDER BY id DESC LIMIT $8"
);
/// A page led by its action (`audit_events_action_idx`).
pub(super) const PAGE_BY_ACTION: &str = concat!(audit_columns!(), audit_where!("action = $1"));
/// A page without any of those filters: the newest rows, by id.
pub(super) const PAGE: &str = concat!(audit_columns!(), audit_where!("TRUE"));

/// A page of rows, latest first, where every commit is visible (an operator reading the log
/// expects to see what was just done): the primary on PostgreSQL, a reader connection on SQLite
/// (not the one writer, which a long scan would hold from every write).
pub(super) async fn list(db: &Db, q: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
    let sql = if q.target_kind.is_some() && q.target_id.is_some() {
        PAGE_BY_TARGET
    } else if q.actor.is_some() {
        PAGE_BY_ACTOR
    } else if q.action.is_some() {
        PAGE_BY_ACTION
    } else {
        PAGE
    };
    query(sql)
        .bind(q.action.as_deref())
        .bind(q.actor.as_deref())
        .bind(q.target_kind.as_deref())
        .bind(q.target_id.as_deref())
        .bind(q.since)
        .bind(q.until)
        .bind(q.before)
        .bind(q.limit.max(0))
        .fetch_all(db.reader())
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEvent {
                id: row.int("id")?,
                event: NewAuditEvent {
                    at: row.time("at")?,
                    actor_kind: ActorKind::parse(&row.text("actor_kind")?)?,
                    actor_id: row.opt_text("actor_id")?,
                    actor_name: row.opt_text("actor_name")?,
                    action: row.text("action")?,
                    target_kind: row.opt_text("target_kind")?,
                    target_id: row.opt_text("target_id")?,
                    request_id: row.opt_text("request_id")?,
                    success: row.text("outcome")? == "success",
                    reason: row.opt_text("reason")?,
                    details: row.opt_json("details")?,
                },
            })
        })
        .collect()
}

/// The retention sweep's statement: at most `$2` rows older than `$1`, oldest first, found
/// through `audit_events_at_idx` (by `at`: ordered by `id`, SQLite walks the whole log from its
/// first row to find the old ones, on the writer, at every sweep of every instance).
pub(super) const DELETE_BEFORE: &str = "DELETE FROM audit_events
     WHERE id IN (SELECT id FROM audit_events WHERE at < $1 ORDER BY at LIMIT $2)";

/// Deletes at most `limit` rows older than `before`, oldest first; how many went.
pub(super) async fn delete_before(db: &Db, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
    query(DELETE_BEFORE).bind(before).bind(limit.max(0)).execute(db.writer()).await
}

impl NewAuditEvent {
    /// A successful `action` by an actor of `actor_kind`, now, without anything else yet.
    pub fn new(actor_kind: ActorKind, action: impl Into<String>) -> Self {
        Self {
            at: crate::domain::now(),
            actor_kind,
            actor_id: None,
            actor_name: None,
            action: action.into(),
            target_kind: None,
            target_id: None,
            request_id: None,
            success: true,
            reason: None,
            details: None,
        }
    }

    /// Names the actor.
    pub fn actor(mut self, id: Option<String>, name: Option<String>) -> Self {
        self.actor_id = id;
        self.actor_name = name;
        self
    }

    /// Names the target.
    pub fn target(mut self, kind: &str, id: impl Into<String>) -> Self {
        self.target_kind = Some(kind.to_owned());
        self.target_id = Some(id.into());
        self
    }

    /// The request it happened in.
    pub fn request(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    /// Marks it failed, with the error code that says why.
    pub fn failed(mut self, reason: &str) -> Self {
        self.success = false;
        self.reason = Some(reason.to_owned());
        self
    }

    /// Further facts (never a secret, token, code, cookie or email).
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}
