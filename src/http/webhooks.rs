//! The admin API for webhook endpoints:
//!
//! - `POST /admin/webhooks` `{url, event_types?, enabled?}`: 201 with the signing key, shown once
//! - `GET /admin/webhooks`, `GET /admin/webhooks/{id}`
//! - `PATCH /admin/webhooks/{id}` `{url?, event_types?, enabled?}`
//! - `DELETE /admin/webhooks/{id}`: 204, with its delivery log
//! - `GET /admin/webhooks/{id}/deliveries?before=<seq>&limit=<n>`: the delivery log, latest first
//! - `POST /admin/webhooks/{id}/replay?since=<RFC 3339>`: 202, every event since then again
//! - `POST /admin/webhooks/{id}/secret`: 200 with a new signing key, shown once; the previous one
//!   keeps signing beside it for `webhooks.secret_overlap_seconds`
//!
//! Endpoints of the configuration file are read-only here (409 `webhook_managed_in_config`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::extract::{ApiJson, ApiPath, ApiQuery, required};
use super::problem::ApiError;
use super::responses::{
    DeliveryListResponse, DeliveryResponse, ReplayResponse, WebhookListResponse, WebhookResponse,
    WebhookWithSecretResponse,
};
use crate::domain::WebhookId;
use crate::error::ErrorCode;
use crate::service::webhooks::{NewWebhook, WebhookPatch};

/// The routes (authentication is layered on by the caller).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/webhooks", get(list).post(create))
        .route("/admin/webhooks/{id}", get(show).patch(update).delete(remove))
        .route("/admin/webhooks/{id}/deliveries", get(deliveries))
        .route("/admin/webhooks/{id}/replay", post(replay))
        .route("/admin/webhooks/{id}/secret", post(rotate_secret))
}

fn parse_id(value: &str) -> Result<WebhookId, ApiError> {
    value.parse().map_err(|_| ApiError::new(ErrorCode::InvalidWebhookId, "the webhook id must be a UUID"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<WebhookWithSecretResponse>), ApiError> {
    let url = required(&request.url, "url")?.to_owned();
    let (endpoint, secret) =
        state.webhooks.create(NewWebhook { url, event_types: request.event_types, enabled: request.enabled }).await?;
    let body = WebhookWithSecretResponse { webhook: endpoint.into(), secret: secret.expose_secret().to_owned() };
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list(State(state): State<Arc<AppState>>) -> Result<Json<WebhookListResponse>, ApiError> {
    let webhooks = state.webhooks.list().await?;
    Ok(Json(WebhookListResponse { webhooks: webhooks.into_iter().map(WebhookResponse::from).collect() }))
}

async fn show(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookResponse>, ApiError> {
    Ok(Json(state.webhooks.get(parse_id(&id)?).await?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

async fn update(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let id = parse_id(&id)?;
    let patch = WebhookPatch { url: request.url, event_types: request.event_types, enabled: request.enabled };
    Ok(Json(state.webhooks.update(id, patch).await?.into()))
}

async fn remove(State(state): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    state.webhooks.delete(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct DeliveriesQuery {
    before: Option<i64>,
    limit: Option<usize>,
}

async fn deliveries(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryListResponse>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, crate::service::webhooks::MAX_PAGE);
    let deliveries = state.webhooks.deliveries(parse_id(&id)?, query.before, limit).await?;
    let next_before = (deliveries.len() >= limit).then(|| deliveries.last().map(|d| d.event_seq)).flatten();
    Ok(Json(DeliveryListResponse {
        deliveries: deliveries.into_iter().map(DeliveryResponse::from).collect(),
        next_before,
    }))
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    since: Option<String>,
}

async fn replay(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReplayQuery>,
) -> Result<(StatusCode, Json<ReplayResponse>), ApiError> {
    let id = parse_id(&id)?;
    let since = required(&query.since, "since")?;
    let since = DateTime::parse_from_rfc3339(since)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::new(ErrorCode::InvalidSince, "`since` must be an RFC 3339 time").field("since"))?;
    let scheduled = state.webhooks.replay(id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { scheduled })))
}

async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookWithSecretResponse>, ApiError> {
    let (endpoint, secret) = state.webhooks.rotate_secret(parse_id(&id)?).await?;
    Ok(Json(WebhookWithSecretResponse { webhook: endpoint.into(), secret: secret.expose_secret().to_owned() }))
}
