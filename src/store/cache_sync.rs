//! The change log of cache invalidations (`cache_invalidations`), which keeps the in-memory caches
//! of many instances in step: the store methods whose changes a cache must forget add their rows
//! with [`log_changes`] in the transaction of the change, so that a committed change always has
//! its row, and every instance reads the log with [`Store::cache_changes_after`](super::Store).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::db::{Db, Tx, query};
use super::rows::RowExt;
use super::{StoreError, decode_issuer, decode_subject};
use crate::domain::{ClientId, Issuer, Subject, UserId};

/// Something that instances must forget from their caches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheChange {
    /// Everything cached about a user (disabled, deleted, or their teams or identities changed).
    User(UserId),
    /// An identity (unlinked, or deleted with its user): its resolved principal and its verified
    /// tokens.
    Identity {
        /// The identity's issuer.
        issuer: Issuer,
        /// Its subject.
        subject: Subject,
    },
    /// A registered client of the OpenID Provider (changed, given a new secret, or deleted).
    Client(ClientId),
    /// The OpenID Provider's signing keys (a first key of an algorithm made, or a rotation
    /// started): every instance re-reads them, so that its JWKS names the new key.
    SigningKeys,
}

/// One row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChange {
    /// Its place in the log (increasing, with gaps; see `src/service/cache_sync.rs`).
    pub seq: i64,
    /// What to forget; `None` for a row this binary cannot read (a kind a newer binary wrote,
    /// or a value that no longer decodes), after which everything cached must be forgotten.
    pub change: Option<CacheChange>,
    /// When it was written (its writer's clock): with `seq`, what tells this row from another
    /// that took its number after the log went back. `None` when it does not decode (a time out
    /// of range): the row is still passed on, and only that check is done without.
    pub written_at: Option<DateTime<Utc>>,
}

/// Rows written by one statement of [`log_changes`].
const ROWS_PER_INSERT: usize = 100;

/// Adds `changes` to the log, in the transaction of the change they describe: up to
/// [`ROWS_PER_INSERT`] rows a statement, so that a change of many rows (a team's deletion, a row
/// per member) holds its numbers uncommitted for as short a time as it can (see
/// `src/service/cache_sync.rs` on rows committed out of order).
pub(super) async fn log_changes(tx: &mut Tx, changes: &[CacheChange], now: DateTime<Utc>) -> Result<(), StoreError> {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        let head = "INSERT INTO cache_invalidations (kind, user_id, issuer, subject, client_id, created_at)";
        super::db::multi_row_inserts(head, 6, ROWS_PER_INSERT)
    });
    for chunk in changes.chunks(ROWS_PER_INSERT) {
        let mut insert = query(SQL[chunk.len() - 1].as_str());
        for change in chunk {
            let (kind, user, issuer, subject, client) = match change {
                CacheChange::User(user) => ("user", Some(user.as_uuid()), None, None, None),
                CacheChange::Identity { issuer, subject } => {
                    ("identity", None, Some(issuer.as_str()), Some(subject.as_str()), None)
                }
                CacheChange::Client(id) => ("client", None, None, None, Some(id.as_str())),
                CacheChange::SigningKeys => ("signing_keys", None, None, None, None),
            };
            insert = insert.bind(kind).bind(user).bind(issuer).bind(subject).bind(client).bind(now);
        }
        insert.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The highest sequence number in the log (0 when it is empty).
pub(super) async fn head(db: &Db) -> Result<i64, StoreError> {
    query("SELECT COALESCE(MAX(seq), 0) AS head FROM cache_invalidations").fetch_one(db.background()).await?.int("head")
}

/// A page of the log read by [`changes_after`], with the log's head at the same moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// The highest sequence number in the log (0 when it is empty). Below a reader's own highest
    /// one, the log went back: a failover lost its last rows, or a backup was restored.
    pub head: i64,
    /// When the row numbered as asked (the last one the reader read) was written, if it is still
    /// there. Another time than the reader saw means the log went back and new rows have taken
    /// its numbers again, past the reader's; none means it was pruned (or lost).
    pub anchor_written_at: Option<DateTime<Utc>>,
    /// The rows after the number asked for, in order.
    pub rows: Vec<LoggedChange>,
}

/// Up to `limit` rows after `after`, in order, with the log's head and when the row numbered
/// `anchor` was written, in one statement, read where every commit is visible (the primary), on
/// the background loops' own connection: not queued behind requests.
pub(super) async fn changes_after(db: &Db, after: i64, limit: i64, anchor: Option<i64>) -> Result<LogPage, StoreError> {
    // The head and the anchor come as a row of their own joined to the page, so that an empty
    // page still has them.
    let rows = query(
        "SELECT h.head, h.anchor_written_at,
                c.seq, c.kind, c.user_id, c.issuer, c.subject, c.client_id, c.created_at
         FROM (SELECT COALESCE(MAX(seq), 0) AS head,
                      (SELECT created_at FROM cache_invalidations WHERE seq = $3) AS anchor_written_at
               FROM cache_invalidations) AS h
         LEFT JOIN (SELECT seq, kind, user_id, issuer, subject, client_id, created_at
                    FROM cache_invalidations
                    WHERE seq > $1 ORDER BY seq LIMIT $2) AS c ON TRUE
         ORDER BY c.seq",
    )
    .bind(after)
    .bind(limit)
    .bind(anchor)
    .fetch_all(db.background())
    .await?;
    // A row that does not decode is passed on as unreadable rather than failing the batch: the
    // cursor must move past it, or every instance would stop applying changes at that row.
    let decode = |row: &super::db::Row| -> Result<CacheChange, StoreError> {
        Ok(match row.text("kind")?.as_str() {
            "user" => CacheChange::User(UserId::from_uuid(row.uuid("user_id")?)),
            "identity" => CacheChange::Identity {
                issuer: decode_issuer(&row.text("issuer")?)?,
                subject: decode_subject(&row.text("subject")?)?,
            },
            "client" => CacheChange::Client(
                ClientId::parse(&row.text("client_id")?)
                    .map_err(|_| StoreError::Corrupt("invalid client id in the cache log".into()))?,
            ),
            "signing_keys" => CacheChange::SigningKeys,
            other => return Err(StoreError::Corrupt(format!("unknown cache change kind {other:?}"))),
        })
    };
    let (head, anchor_written_at) = match rows.first() {
        // A time that does not decode is the anchor's written_at as its row was read (`None`).
        Some(row) => (row.int("head")?, row.opt_time("anchor_written_at").ok().flatten()),
        None => (0, None),
    };
    let mut page = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(seq) = row.opt_int("seq")? {
            page.push(LoggedChange { seq, change: decode(row).ok(), written_at: row.time("created_at").ok() });
        }
    }
    Ok(LogPage { head, anchor_written_at, rows: page })
}

/// Deletes the rows written before `before`, in the log's order: those below the first row not
/// that old (each row's `created_at` is its writer's clock, so the two orders can differ a
/// little). The head goes only with every other row, so a head below what a reader read means
/// the log went back, never a prune. Returns how many.
pub(super) async fn prune(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let delete = query(
        "DELETE FROM cache_invalidations WHERE seq IN
           (SELECT seq FROM cache_invalidations
            WHERE seq < COALESCE((SELECT MIN(seq) FROM cache_invalidations WHERE created_at >= $1),
                                 (SELECT MAX(seq) + 1 FROM cache_invalidations))
            -- Lowest first, batch after batch: PostgreSQL's plan order would not keep the head
            -- (the highest) for the last batch, and readers would take the log for gone back.
            ORDER BY seq LIMIT $2)",
    );
    db.delete_in_batches(delete.bind(before)).await
}
