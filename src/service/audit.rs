//! The audit log: admin actions and security decisions as append-only rows.
//!
//! Most rows are written right after the change they record succeeded ([`Audit::record`]); a
//! failure to write one is logged and never undoes or fails the change. Refused tokens, refused
//! admin credentials and sign-in callbacks without a matching flow are not written per request: they are counted in memory per (action, reason,
//! issuer) and written as one row per key every `audit.flush_interval_ms` by the audit worker
//! ([`Audit::flush`]), and once more at shutdown. Rows older than `audit.retention_days` are
//! deleted by the sweeper in bounded batches ([`Audit::sweep`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::AuditConfig;
use crate::error::ErrorChain as _;
use crate::error::ErrorCode;
use crate::store::{ActorKind, AuditEvent, AuditQuery, NewAuditEvent, Store, StoreError};

/// The action of aggregated token refusals.
pub const TOKEN_REFUSED: &str = "token.refused";
/// The action of aggregated admin-credential refusals.
pub const ADMIN_TOKEN_REFUSED: &str = "admin_token.refused";
/// The action of aggregated client-authentication refusals at the OpenID Provider.
pub const CLIENT_REFUSED: &str = "client.refused";
/// The action of sign-in failures (aggregated when the browser carried no sign-in flow).
pub const SIGN_IN_FAILED: &str = "sign_in.failed";

/// Most distinct (action, reason, issuer) keys counted between two flushes; further keys are
/// counted without their issuer, so memory stays bounded whatever tokens arrive.
const MAX_KEYS: usize = 1024;

/// What refusals are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    action: &'static str,
    reason: ErrorCode,
    issuer: Option<String>,
}

/// The count of one key since the last flush.
#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

/// The audit log service.
#[derive(Debug, Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

/// How long [`Audit::record_change`] keeps trying to write a row after transient failures.
const RECORD_RETRY_FOR: Duration = Duration::from_millis(5000);

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    retention: Option<Duration>,
    refusals: Mutex<HashMap<RefusalKey, Tally>>,
}

impl Audit {
    /// The service over `store`, with the retention of `config`.
    pub fn new(store: Arc<dyn Store>, config: &AuditConfig) -> Self {
        Self { inner: Arc::new(Inner { store, retention: config.retention, refusals: Mutex::default() }) }
    }

    /// Appends `event` now. A failure is logged, not returned: what it records has happened,
    /// and the caller's answer does not depend on its record.
    pub async fn record(&self, event: NewAuditEvent) {
        if let Err(error) = self.inner.store.append_audit_events(std::slice::from_ref(&event)).await {
            tracing::error!(error = %error.chain(), action = %event.action, "cannot write an audit row");
        }
    }

    /// [`Audit::record`] for the row of a change already committed (an admin's, a team
    /// owner's), which nothing else records: again after a transient failure (a busy SQLite
    /// writer, a PostgreSQL failover or serialization failure) while the pauses (50 ms, then
    /// four times longer each time) add up to at most [`RECORD_RETRY_FOR`] — five attempts
    /// over about 4.3 s.
    pub async fn record_change(&self, event: NewAuditEvent) {
        let store = &self.inner.store;
        let mut waited = Duration::ZERO;
        let written = super::retry_transient(
            || store.append_audit_events(std::slice::from_ref(&event)),
            |_, pause| {
                waited += pause;
                waited <= RECORD_RETRY_FOR
            },
        )
        .await;
        if let Err(error) = written {
            tracing::error!(error = %error.chain(), action = %event.action, "cannot write an audit row");
        }
    }

    /// Counts a refused token (written by the next [`Audit::flush`]) and logs it at info with its
    /// reason and issuer only. `issuer` is an allow-listed issuer or Tessera's own, never one
    /// taken from a token Tessera does not trust.
    pub fn token_refused(&self, reason: ErrorCode, issuer: Option<&str>) {
        tracing::info!(code = reason.as_str(), issuer = issuer.unwrap_or("-"), "token refused");
        self.count(TOKEN_REFUSED, reason, issuer);
    }

    /// Counts a refused admin credential (a wrong or ambiguous admin token).
    pub fn admin_token_refused(&self, reason: ErrorCode) {
        self.count(ADMIN_TOKEN_REFUSED, reason, None);
    }

    /// Counts a refused client authentication at the OpenID Provider (`invalid_client`: an
    /// unknown client, a wrong secret, a refused assertion), which anyone can send.
    pub fn client_refused(&self) {
        self.count(CLIENT_REFUSED, ErrorCode::InvalidClient, None);
    }

    /// Counts a sign-in callback that matches no sign-in started in its browser (scanners,
    /// replayed or stale links): anyone can send those, so they do not get a row each.
    pub fn sign_in_refused(&self, reason: ErrorCode, provider: Option<&str>) {
        self.count(SIGN_IN_FAILED, reason, provider);
    }

    fn count(&self, action: &'static str, reason: ErrorCode, issuer: Option<&str>) {
        let now = crate::domain::now();
        let mut refusals = self.lock();
        let mut key = RefusalKey { action, reason, issuer: issuer.map(str::to_owned) };
        if refusals.len() >= MAX_KEYS && !refusals.contains_key(&key) {
            key.issuer = None;
        }
        let tally = refusals.entry(key).or_insert(Tally { count: 0, first_at: now, last_at: now });
        tally.count += 1;
        tally.last_at = now;
    }

    /// How many counted keys wait to be written.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Writes one row per counted key, in one transaction; what cannot be written is kept for
    /// the next attempt. Returns how many rows were written.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let taken = std::mem::take(&mut *self.lock());
        if taken.is_empty() {
            return Ok(0);
        }
        let events: Vec<NewAuditEvent> = taken.iter().map(|(key, tally)| refusal_row(key, tally)).collect();
        match self.inner.store.append_audit_events(&events).await {
            Ok(()) => Ok(events.len()),
            Err(error) => {
                let mut refusals = self.lock();
                for (key, tally) in taken {
                    let kept = refusals.entry(key).or_insert(Tally { count: 0, ..tally });
                    kept.count += tally.count;
                    kept.first_at = kept.first_at.min(tally.first_at);
                    kept.last_at = kept.last_at.max(tally.last_at);
                }
                Err(error)
            }
        }
    }

    /// Deletes the rows older than the retention, in batches; how many went. Nothing with a
    /// retention of 0 (keep forever).
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let store = &self.inner.store;
        super::sweep_older_than(self.inner.retention, |cutoff, limit| store.delete_audit_events_before(cutoff, limit))
            .await
    }

    /// A page of rows, latest first, and the cursor of the next page (the last row's id) when
    /// there may be one.
    pub async fn list(&self, query: &AuditQuery) -> Result<(Vec<AuditEvent>, Option<i64>), StoreError> {
        let limit = query.limit.max(1);
        let mut rows = self.inner.store.audit_events(&AuditQuery { limit: limit + 1, ..query.clone() }).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(|row| row.id) } else { None };
        Ok((rows, next))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RefusalKey, Tally>> {
        self.inner.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The row of one counted key.
fn refusal_row(key: &RefusalKey, tally: &Tally) -> NewAuditEvent {
    let mut event = NewAuditEvent::new(ActorKind::System, key.action)
        .actor(None, Some("refusal_counter".into()))
        .failed(key.reason.as_str())
        .details(json!({ "count": tally.count, "first_at": tally.first_at, "last_at": tally.last_at }));
    if let Some(issuer) = &key.issuer {
        let kind = if key.action == SIGN_IN_FAILED { "provider" } else { "issuer" };
        event = event.target(kind, issuer.clone());
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_refusal_becomes_one_failed_row_with_its_count_and_issuer() {
        let tally = Tally { count: 3, first_at: crate::domain::now(), last_at: crate::domain::now() };
        let key =
            RefusalKey { action: TOKEN_REFUSED, reason: ErrorCode::AudienceMismatch, issuer: Some("https://a".into()) };
        let row = refusal_row(&key, &tally);
        assert_eq!(row.action, "token.refused");
        assert_eq!(row.reason.as_deref(), Some("audience_mismatch"));
        assert_eq!((row.target_kind.as_deref(), row.target_id.as_deref()), (Some("issuer"), Some("https://a")));
        assert_eq!(row.details.as_ref().unwrap()["count"], 3);
        assert!(!row.success);
    }
}
