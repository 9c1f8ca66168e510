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
use axum::{Extension, Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::super::AppState;
use super::super::audit::NothingChanged;
use super::super::extract::{ApiJson, ApiPath, ApiQuery, page_limit};
use super::super::problem::ApiError;
use super::super::responses::{ClientListResponse, ClientResponse, ClientWithSecretResponse};
use crate::domain::ClientId;
use crate::domain::client_rules::ClientFields;
use crate::error::ErrorCode;

/// The routes (authentication is layered on by the caller).
pub fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/clients", get(list_clients).post(create_client))
        .route("/admin/clients/{client_id}", get(get_client).patch(update_client).delete(delete_client))
        .route("/admin/clients/{client_id}/secret", post(rotate_secret))
}

/// The body of `POST /admin/clients` in the OpenAPI document: [`ClientFields`] with `kind` and
/// `name` required, as creation requires them.
pub struct ClientCreate;

impl PartialSchema for ClientCreate {
    fn schema() -> RefOr<Schema> {
        client_fields(|object| {
            object.description = Some("A new client's settings: `kind` and `name` are required.".into());
            object.required = vec!["kind".into(), "name".into()];
        })
    }
}

impl ToSchema for ClientCreate {}

/// The body of `PATCH /admin/clients/{id}` in the OpenAPI document: [`ClientFields`] without `id`
/// and `kind`, which no change can name.
pub struct ClientChange;

impl PartialSchema for ClientChange {
    fn schema() -> RefOr<Schema> {
        client_fields(|object| {
            object.description = Some("A change of a client's settings: the fields present change.".into());
            object.properties.shift_remove("id");
            object.properties.shift_remove("kind");
        })
    }
}

impl ToSchema for ClientChange {}

/// [`ClientFields`]'s schema, as `edit` makes it.
fn client_fields(edit: impl FnOnce(&mut utoipa::openapi::schema::Object)) -> RefOr<Schema> {
    let mut schema = ClientFields::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        edit(object);
    }
    schema
}

#[utoipa::path(
    post,
    path = "/admin/clients",
    tag = "admin",
    operation_id = "create_client",
    summary = "Registers a client; a confidential client's secret is in this answer only.",
    request_body = ClientCreate,
    responses(crate::http::openapi::ApiErrors, (status = 201, description = "The client (`Location` names it).", body = ClientWithSecretResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn create_client(
    State(state): State<Arc<AppState>>,
    ApiJson(fields): ApiJson<ClientFields>,
) -> Result<Response, ApiError> {
    let (client, secret) = state.clients.create(fields).await?;
    let location = format!("/admin/clients/{}", client.id);
    let body =
        ClientWithSecretResponse { client: client.into(), client_secret: secret.map(|s| s.expose_secret().to_owned()) };
    // Out of caches as every admin answer (the admin router's layer): it holds the secret.
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The query of `GET /admin/clients`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    /// Clients per page, 1 to 500 (100 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/admin/clients",
    tag = "admin",
    operation_id = "list_clients",
    summary = "Lists the OpenID Provider's clients.",
    params(ListQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of clients.", body = ClientListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_clients(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ClientListResponse>, ApiError> {
    let limit = page_limit(query.limit, 100, crate::service::op::clients::MAX_PAGE)?;
    let after = query
        .after
        .as_deref()
        .map(|after| {
            ClientId::parse(after).map_err(|_| {
                ApiError::new(ErrorCode::InvalidCursor, "`after` is the `next_after` of a previous page").field("after")
            })
        })
        .transpose()?;
    let (clients, more) = state.clients.list(after.as_ref(), limit).await?;
    let next_after = more.then(|| clients.last().map(|c| c.id.as_str().to_owned())).flatten();
    Ok(Json(ClientListResponse { clients: clients.into_iter().map(ClientResponse::from).collect(), next_after }))
}

#[utoipa::path(
    get,
    path = "/admin/clients/{client_id}",
    tag = "admin",
    operation_id = "get_client",
    summary = "A client.",
    params(("client_id" = String, Path, description = "A client id")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The client.", body = ClientResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn get_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ClientResponse>, ApiError> {
    Ok(Json(state.clients.find(&id).await?.into()))
}

#[utoipa::path(
    patch,
    path = "/admin/clients/{client_id}",
    tag = "admin",
    operation_id = "update_client",
    summary = "Changes a client.",
    params(("client_id" = String, Path, description = "A client id")),
    request_body = ClientChange,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The client.", body = ClientResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn update_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(fields): ApiJson<ClientFields>,
) -> Result<(Option<Extension<NothingChanged>>, Json<ClientResponse>), ApiError> {
    let (client, changed) = state.clients.update(&id, fields).await?;
    // The same fields sent again changed nothing: no audit row for it.
    Ok(((!changed).then_some(Extension(NothingChanged)), Json(client.into())))
}

#[utoipa::path(
    delete,
    path = "/admin/clients/{client_id}",
    tag = "admin",
    operation_id = "delete_client",
    summary = "Deletes a client.",
    params(("client_id" = String, Path, description = "A client id")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Deleted.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn delete_client(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.clients.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `POST /admin/clients/{id}/secret`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RotateSecretQuery {
    /// How long the replaced secret is still accepted beside the new one, 0 (the default: at
    /// once no more, as for a leaked secret) to 2592000 (30 days).
    #[param(maximum = 2592000)]
    overlap_seconds: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/admin/clients/{client_id}/secret",
    tag = "admin",
    operation_id = "rotate_client_secret",
    summary = "Rotates a confidential client's secret.",
    params(("client_id" = String, Path, description = "A client id"), RotateSecretQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The client with its new secret.", body = ClientWithSecretResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RotateSecretQuery>,
) -> Result<Json<ClientWithSecretResponse>, ApiError> {
    let (client, secret) = state.clients.rotate_secret(&id, query.overlap_seconds.unwrap_or(0)).await?;
    Ok(Json(ClientWithSecretResponse { client: client.into(), client_secret: Some(secret.expose_secret().to_owned()) }))
}
