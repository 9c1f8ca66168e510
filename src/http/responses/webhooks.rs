//! Webhook endpoints and their delivery log (the admin API). A signing key is shown once, when
//! the endpoint is registered.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{DeliveryState, WebhookDelivery, WebhookEndpoint};

/// An endpoint: the body of `GET`/`PATCH /admin/webhooks/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookResponse {
    /// Its id.
    pub id: uuid::Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<String>,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// The name of its `[[webhooks.endpoints]]` entry when the configuration file defines it
    /// (then the admin API cannot change it); `null` otherwise.
    pub config_name: Option<String>,
    /// Until when the key it had before its last rotation still signs beside the current one;
    /// `null` when no previous key signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Registration time: it receives the events written from then on.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookEndpoint> for WebhookResponse {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            id: e.id.as_uuid(),
            url: e.url,
            event_types: e.event_types,
            enabled: e.enabled,
            config_name: e.config_name,
            previous_secret_expires_at: e.previous_secret_until.filter(|until| *until > crate::domain::now()),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// The body of `POST /admin/webhooks`: the endpoint and its signing key, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecretResponse {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: WebhookResponse,
    /// The signing key, `whsec_` and base64 (Standard Webhooks): store it now.
    pub secret: String,
}

crate::debug_redacted!(WebhookWithSecretResponse { shown: [webhook], secret: [secret] });

/// The body of `GET /admin/webhooks`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookListResponse {
    /// Every endpoint, oldest first.
    pub webhooks: Vec<WebhookResponse>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStateResponse {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Retries ran out.
    Failed,
}

impl From<DeliveryState> for DeliveryStateResponse {
    fn from(s: DeliveryState) -> Self {
        match s {
            DeliveryState::Pending => Self::Pending,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Failed => Self::Failed,
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryResponse {
    /// The delivery's id.
    pub id: uuid::Uuid,
    /// The event's id (the `webhook-id` header).
    pub event_id: uuid::Uuid,
    /// The event's sequence number (the order of delivery).
    pub event_seq: i64,
    /// The event type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: DeliveryStateResponse,
    /// Attempts since it was scheduled (or replayed).
    pub attempts: i64,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt, when the endpoint answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<WebhookDelivery> for DeliveryResponse {
    fn from(d: WebhookDelivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id.as_uuid(),
            event_seq: d.event_seq,
            event_type: d.topic,
            state: d.state.into(),
            attempts: d.attempts,
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at),
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
        }
    }
}

/// The body of `GET /admin/webhooks/{id}/deliveries`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryListResponse {
    /// Deliveries, latest event first.
    pub deliveries: Vec<DeliveryResponse>,
    /// The `before` of the next page, when there may be one.
    pub next_before: Option<i64>,
}

/// The body of `POST /admin/webhooks/{id}/replay`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayResponse {
    /// How many events were scheduled again.
    pub scheduled: u64,
}
