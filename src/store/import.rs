//! The SQL of `tessera import` and `tessera export`: a batched existence check of identities,
//! and every identity with its user, a page at a time in id order.

use std::fmt::Write as _;
use std::sync::LazyLock;

use super::db::{Db, query};
use super::rows::{self, RowExt, identity_columns, user_columns};
use super::{ExportedIdentity, StoreError, decode_subject};
use crate::domain::{IdentityId, Issuer, Subject, UserId};

/// How many subjects one existence query asks about (the statement is prepared once).
const SUBJECTS_PER_QUERY: usize = 100;

/// `SELECT … WHERE issuer = $1 AND subject IN ($2, …, $101)`: a fixed number of placeholders, so
/// that one prepared statement serves every batch; a short batch repeats its first subject.
static EXISTING_SQL: LazyLock<String> = LazyLock::new(|| {
    let mut sql = String::from(
        "SELECT i.subject AS subject, i.user_id AS user_id, u.disabled AS disabled \
         FROM identities i JOIN users u ON u.id = i.user_id WHERE i.issuer = $1 AND i.subject IN (",
    );
    for n in 0..SUBJECTS_PER_QUERY {
        let separator = if n == 0 { "" } else { ", " };
        let _ = write!(sql, "{separator}${}", n + 2);
    }
    sql.push(')');
    sql
});

/// The users of those of `subjects` that have an identity at `issuer`, each with whether the user
/// is disabled.
pub(super) async fn existing_identities(
    db: &Db,
    issuer: &Issuer,
    subjects: &[Subject],
) -> Result<Vec<(Subject, UserId, bool)>, StoreError> {
    let sql: &'static str = EXISTING_SQL.as_str();
    let mut found = Vec::new();
    for chunk in subjects.chunks(SUBJECTS_PER_QUERY) {
        let mut statement = query(sql).bind(issuer.as_str());
        for n in 0..SUBJECTS_PER_QUERY {
            statement = statement.bind(chunk.get(n).unwrap_or(&chunk[0]).as_str());
        }
        for row in statement.fetch_all(db.reader()).await? {
            // A subject asked twice (in two chunks) is answered twice; it is reported once.
            let subject = decode_subject(&row.text("subject")?)?;
            if !found.iter().any(|(s, _, _)| *s == subject) {
                found.push((subject, UserId::from_uuid(row.uuid("user_id")?), row.flag("disabled")?));
            }
        }
    }
    Ok(found)
}

/// A page of identities after `after`, in id order, each with its user.
pub(super) async fn export_identities(
    db: &Db,
    after: Option<IdentityId>,
    limit: i64,
) -> Result<Vec<ExportedIdentity>, StoreError> {
    query(concat!(
        "SELECT ",
        identity_columns!(),
        ", ",
        user_columns!(),
        " FROM identities i JOIN users u ON u.id = i.user_id
         WHERE i.id > $1
         ORDER BY i.id
         LIMIT $2"
    ))
    // The nil id sorts before every real one: the first page, with a condition the primary-key
    // index serves (an `IS NULL OR` form would scan from the start on every page).
    .bind(after.map_or(uuid::Uuid::nil(), |id| id.as_uuid()))
    .bind(limit.max(0))
    .fetch_all(db.reader())
    .await?
    .iter()
    .map(|row| Ok(ExportedIdentity { identity: rows::identity(row)?, user: rows::user(row)? }))
    .collect()
}
