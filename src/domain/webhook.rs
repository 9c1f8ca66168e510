//! Webhook endpoints and their deliveries (see `service::webhooks` and `worker::webhooks`).

use std::fmt;

use chrono::{DateTime, Utc};

use super::{EventId, WebhookId};

/// A registered webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: WebhookId,
    /// Where events are POSTed.
    pub url: String,
    /// The topics it receives; empty: every topic.
    pub event_types: Vec<String>,
    /// Whether events are delivered to it.
    pub enabled: bool,
    /// The key-ring ciphertext of its signing key, bound to [`WebhookEndpoint::aad`].
    pub secret: Vec<u8>,
    /// The key-ring ciphertext of the signing key it had before its last rotation, bound to
    /// [`WebhookEndpoint::previous_aad`]: it signs beside `secret` until `previous_secret_until`.
    pub previous_secret: Option<Vec<u8>>,
    /// When the previous key stops signing.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// The name of a `[[webhooks.endpoints]]` entry of the configuration file, which manages the
    /// endpoint (the admin API cannot change it); `None` for endpoints of the admin API.
    pub config_name: Option<String>,
    /// Registration time: it receives the events written from then on.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    /// Whether the endpoint receives events of `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == topic)
    }

    /// The associated data binding a signing key's ciphertext to its table, row and column (the
    /// form of `StoredSecret::aad`).
    pub fn aad(id: WebhookId) -> Vec<u8> {
        format!("webhook_endpoints|{id}|secret").into_bytes()
    }

    /// The associated data of the previous signing key's ciphertext.
    pub fn previous_aad(id: WebhookId) -> Vec<u8> {
        format!("webhook_endpoints|{id}|previous_secret").into_bytes()
    }
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a credential in its query, and the secret is a secret even encrypted.
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("event_types", &self.event_types)
            .field("enabled", &self.enabled)
            .field("config_name", &self.config_name)
            .finish_non_exhaustive()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: waiting for its first attempt, or for a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed until retries ran out.
    Failed,
}

impl DeliveryState {
    /// The stored and serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

/// One event for one endpoint, with its delivery history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// The delivery's id.
    pub id: uuid::Uuid,
    /// The endpoint.
    pub endpoint_id: WebhookId,
    /// The event (also the `webhook-id` header).
    pub event_id: EventId,
    /// The event's sequence number: an endpoint receives its events in this order.
    pub event_seq: i64,
    /// The event's topic.
    pub topic: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made since `scheduled_at`.
    pub attempts: i64,
    /// Start of the current series of attempts (creation, or the last replay).
    pub scheduled_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt, if any.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last attempt, when the endpoint answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A pending delivery with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryJob {
    /// The delivery's id.
    pub id: uuid::Uuid,
    /// The event.
    pub event_id: EventId,
    /// The event's sequence number.
    pub event_seq: i64,
    /// The event's topic.
    pub topic: String,
    /// The event's payload.
    pub payload: serde_json::Value,
    /// When the event was written.
    pub event_created_at: DateTime<Utc>,
    /// Attempts made since `scheduled_at`.
    pub attempts: i64,
    /// Start of the current series of attempts.
    pub scheduled_at: DateTime<Utc>,
    /// When the next attempt is due.
    pub next_attempt_at: DateTime<Utc>,
}
