//! The SQL of the last-use worker: a batch of `last_seen_at` times in one `UPDATE … FROM (VALUES …)`
//! per [`ROWS_PER_STATEMENT`] rows, the same statement text on both databases.

use std::fmt::Write as _;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::StoreError;
use super::db::{Db, IntoArg, padded, query};

/// Rows one statement writes. The statement is prepared once; a shorter batch repeats its last
/// row, which writes the same time twice to the same row, i.e. once.
const ROWS_PER_STATEMENT: usize = 128;

/// `UPDATE {table} SET last_seen_at = v.column2 FROM (VALUES ($1, $2), …) AS v WHERE
/// {table}.{key} = v.column1 AND {table}.last_seen_at < v.column2`: a time never moves back, and
/// a row deleted meanwhile is simply not found.
fn touch_sql(table: &str, key: &str) -> String {
    let mut values = String::new();
    for n in 0..ROWS_PER_STATEMENT {
        let separator = if n == 0 { "" } else { ", " };
        let _ = write!(values, "{separator}(${}, ${})", 2 * n + 1, 2 * n + 2);
    }
    format!(
        "UPDATE {table} SET last_seen_at = v.column2 FROM (VALUES {values}) AS v \
         WHERE {table}.{key} = v.column1 AND {table}.last_seen_at < v.column2"
    )
}

static IDENTITIES_SQL: LazyLock<String> = LazyLock::new(|| touch_sql("identities", "id"));
static SESSIONS_SQL: LazyLock<String> = LazyLock::new(|| touch_sql("sessions", "token_hash"));

/// Which rows a batch of last-use times is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Touched {
    /// `identities`, by id.
    Identities,
    /// `sessions`, by the hash of the cookie.
    Sessions,
}

/// Writes `seen` (key, time), [`ROWS_PER_STATEMENT`] rows per statement, each statement its own
/// transaction; `bind` gives a key's column value.
///
/// Not one transaction for the whole batch: its row locks would be held until the last
/// statement, against every change that deletes a user's sessions or identities in another
/// order (sign out everywhere else, a disable, an unlink) — a deadlock on PostgreSQL — and on
/// SQLite the one writer would be held for the whole batch. A time never moves back, so the
/// statements need nothing of each other; one PostgreSQL aborts for a deadlock is run again.
pub(super) async fn touch<'q, K, A>(
    db: &Db,
    table: Touched,
    seen: &'q [(K, DateTime<Utc>)],
    bind: impl Fn(&'q K) -> A,
) -> Result<(), StoreError>
where
    A: IntoArg<'q>,
{
    let sql: &'static str = match table {
        Touched::Identities => IDENTITIES_SQL.as_str(),
        Touched::Sessions => SESSIONS_SQL.as_str(),
    };
    for chunk in seen.chunks(ROWS_PER_STATEMENT) {
        super::sql::retrying_conflicts(|| {
            let mut statement = query(sql);
            for (key, at) in padded(chunk, ROWS_PER_STATEMENT) {
                statement = statement.bind(bind(key)).bind(*at);
            }
            async move { statement.execute(db.writer()).await.map(|_| ()) }
        })
        .await?;
    }
    Ok(())
}
