//! The audit log (the admin API): `GET /admin/audit`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::AuditEvent;

/// One row of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEventResponse {
    /// Its position: later rows have larger ids (the `before` of the next page).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// `admin_token`, `user` or `system`.
    pub actor_kind: &'static str,
    /// The actor's id: a user id, an admin token's position in `admin_tokens`.
    pub actor_id: Option<String>,
    /// The actor's name: `admin_tokens[0]`, a background job.
    pub actor_name: Option<String>,
    /// What happened, snake_case and dotted: `user.disabled`, `sign_in.failed`.
    pub action: String,
    /// The kind of thing it happened to: `user`, `team`, `client`, `webhook`, `identity`…
    pub target_kind: Option<String>,
    /// Its id, as the request named it.
    pub target_id: Option<String>,
    /// The `X-Request-Id` of the request it happened in.
    pub request_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// Why it failed: an error code.
    pub reason: Option<String>,
    /// Further facts: a provider, a linking rule, a count.
    pub details: Option<serde_json::Value>,
}

impl From<AuditEvent> for AuditEventResponse {
    fn from(row: AuditEvent) -> Self {
        let e = row.event;
        Self {
            id: row.id,
            at: e.at,
            actor_kind: e.actor_kind.as_str(),
            actor_id: e.actor_id,
            actor_name: e.actor_name,
            action: e.action,
            target_kind: e.target_kind,
            target_id: e.target_id,
            request_id: e.request_id,
            outcome: if e.success { "success" } else { "failure" },
            reason: e.reason,
            details: e.details,
        }
    }
}

/// The body of `GET /admin/audit`: rows latest first, and the `before` of the next page (null on
/// the last one).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditListResponse {
    /// The rows.
    pub events: Vec<AuditEventResponse>,
    /// Pass it back as `before` for the next (older) page.
    pub next_before: Option<i64>,
}
