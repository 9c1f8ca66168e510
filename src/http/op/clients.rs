//! The admin API for registered clients of the OpenID Provider.
//!
//! - `POST /admin/clients`: 201 with `Location` and, for a confidential client without keys, its
//!   secret (shown this once)
//! - `GET /admin/clients?after=<id>&limit=<n>`: a page ordered by id
//! - `GET /admin/clients/{id}`
//! - `PATCH /admin/clients/{id}`: the fields present change (not `id` nor `kind`)
//! - `DELETE /admin/clients/{id}`: 204
//! - `POST /admin/clients/{id}/secret`: a new secret, shown this once
//!
//! Clients of the configuration file are listed and read here, and refused with 409
//! `client_managed_in_config` on every change.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::super::AppState;
use super::super::extract::{ApiJson, ApiPath, ApiQuery};
use super::super::problem::ApiError;
use super::super::responses::{ClientListResponse, ClientResponse, ClientWithSecretResponse};
use crate::domain::client_rules::ClientFields;

/// The routes (authentication is layered on by the caller).
pub fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/clients", get(list_clients).post(create_client))
        .route("/admin/clients/{client_id}", get(get_client).patch(update_client).delete(delete_client))
        .route("/admin/clients/{client_id}/secret", post(rotate_secret))
}

async fn create_client(
    State(state): State<Arc<AppState>>,
    ApiJson(fields): ApiJson<ClientFields>,
) -> Result<Response, ApiError> {
    let (client, secret) = state.clients.create(fields).await?;
    let location = format!("/admin/clients/{}", client.id);
    let body =
        ClientWithSecretResponse { client: client.into(), client_secret: secret.map(|s| s.expose_secret().to_owned()) };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // The secret is in this body: no cache may keep it.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The query of `GET /admin/clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_clients(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ClientListResponse>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    let clients = state.clients.list(query.after.as_deref(), limit).await?;
    let next_after = (clients.len() >= limit.clamp(1, crate::service::op::clients::MAX_PAGE))
        .then(|| clients.last().map(|c| c.id.as_str().to_owned()))
        .flatten();
    Ok(Json(ClientListResponse { clients: clients.into_iter().map(ClientResponse::from).collect(), next_after }))
}

async fn get_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ClientResponse>, ApiError> {
    Ok(Json(state.clients.find(&id).await?.into()))
}

async fn update_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(fields): ApiJson<ClientFields>,
) -> Result<Json<ClientResponse>, ApiError> {
    Ok(Json(state.clients.update(&id, fields).await?.into()))
}

async fn delete_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.clients.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_secret(State(state): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> Result<Response, ApiError> {
    let (client, secret) = state.clients.rotate_secret(&id).await?;
    let body =
        ClientWithSecretResponse { client: client.into(), client_secret: Some(secret.expose_secret().to_owned()) };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
