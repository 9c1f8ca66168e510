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
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::extract::{ApiJson, ApiPath, ApiQuery, page_limit, required};
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookCreateRequest)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[schema(required = true, value_type = String)]
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/admin/webhooks",
    tag = "admin",
    operation_id = "create_webhook",
    summary = "Registers a webhook endpoint; the answer holds its signing secret, once.",
    request_body = CreateRequest,
    responses(crate::http::openapi::ApiErrors, (status = 201, description = "The endpoint with its secret.", body = WebhookWithSecretResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let url = required(&request.url, "url")?.to_owned();
    let (endpoint, secret) =
        state.webhooks.create(NewWebhook { url, event_types: request.event_types, enabled: request.enabled }).await?;
    let body = WebhookWithSecretResponse { webhook: endpoint.into(), secret: secret.expose_secret().to_owned() };
    // Out of caches as every admin answer (the admin router's layer): it holds the secret.
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/webhooks",
    tag = "admin",
    operation_id = "list_webhooks",
    summary = "Lists webhook endpoints.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The endpoints.", body = WebhookListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list(State(state): State<Arc<AppState>>) -> Result<Json<WebhookListResponse>, ApiError> {
    let webhooks = state.webhooks.list().await?;
    Ok(Json(WebhookListResponse { webhooks: webhooks.into_iter().map(WebhookResponse::from).collect() }))
}

#[utoipa::path(
    get,
    path = "/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "get_webhook",
    summary = "A webhook endpoint.",
    params(("id" = String, Path, description = "A webhook id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The endpoint.", body = WebhookResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn show(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookResponse>, ApiError> {
    Ok(Json(state.webhooks.get(parse_id(&id)?).await?.into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookUpdateRequest)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "update_webhook",
    summary = "Changes a webhook endpoint.",
    params(("id" = String, Path, description = "A webhook id (UUID)")),
    request_body = UpdateRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The endpoint.", body = WebhookResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn update(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let id = parse_id(&id)?;
    let patch = WebhookPatch { url: request.url, event_types: request.event_types, enabled: request.enabled };
    Ok(Json(state.webhooks.update(id, patch).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/admin/webhooks/{id}",
    tag = "admin",
    operation_id = "delete_webhook",
    summary = "Deletes a webhook endpoint.",
    params(("id" = String, Path, description = "A webhook id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Deleted.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn remove(State(state): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    state.webhooks.delete(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// The `next_before` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Deliveries per page, 1 to 500 (100 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/admin/webhooks/{id}/deliveries",
    tag = "admin",
    operation_id = "list_webhook_deliveries",
    summary = "A webhook endpoint's deliveries, newest first.",
    params(("id" = String, Path, description = "A webhook id (UUID)"), DeliveriesQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of deliveries.", body = DeliveryListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn deliveries(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryListResponse>, ApiError> {
    let limit = page_limit(query.limit, 100, crate::service::webhooks::MAX_PAGE)?;
    let before = super::extract::before_cursor(query.before.as_deref())?;
    let (deliveries, next_before) = state.webhooks.deliveries(parse_id(&id)?, before, limit).await?;
    Ok(Json(DeliveryListResponse {
        deliveries: deliveries.into_iter().map(DeliveryResponse::from).collect(),
        next_before,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    #[param(required = true, value_type = String)]
    since: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/webhooks/{id}/replay",
    tag = "admin",
    operation_id = "replay_webhook",
    summary = "Queues again the events since a time.",
    params(("id" = String, Path, description = "A webhook id (UUID)"), ReplayQuery),
    responses(crate::http::openapi::ApiErrors, (status = 202, description = "Queued.", body = ReplayResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn replay(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReplayQuery>,
) -> Result<(StatusCode, Json<ReplayResponse>), ApiError> {
    let id = parse_id(&id)?;
    let since = required(&query.since, "since")?;
    let since = super::extract::query_time(since)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidSince, "`since` must be an RFC 3339 time").field("since"))?;
    let scheduled = state.webhooks.replay(id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { scheduled })))
}

#[utoipa::path(
    post,
    path = "/admin/webhooks/{id}/secret",
    tag = "admin",
    operation_id = "rotate_webhook_secret",
    summary = "Gives an endpoint a new signing secret, shown once; the previous one signs beside it for the overlap.",
    params(("id" = String, Path, description = "A webhook id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The endpoint with its new secret.", body = WebhookWithSecretResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookWithSecretResponse>, ApiError> {
    let (endpoint, secret) = state.webhooks.rotate_secret(parse_id(&id)?).await?;
    Ok(Json(WebhookWithSecretResponse { webhook: endpoint.into(), secret: secret.expose_secret().to_owned() }))
}
