//! Auth-profile actions over HTTP, for team members (session or bearer token) or a service with
//! the admin token acting on behalf of a member:
//!
//! - `PATCH /v1/teams/{team}/auth-profiles/{slug}` `{display_name?, slug?, scopes?}` →
//!   `{auth_profile, reconnect_required, connect_url, connect_expires_at}`
//! - `POST …/{slug}/default` makes a team-wide profile its connector's default; `DELETE …/{slug}/default`
//!   undoes it → the profile
//! - `POST …/{slug}/test` → `{ok, status, error, refreshed, profile_status}`
//! - `POST /v1/teams/{team}/connectors/{connector_key}/credentials` → the profile that serves the
//!   connector for the caller (their own, else the team default) and its access token

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::{key_like, parse_display_name, parse_profile, parse_scopes, parse_slug};
use crate::error::ErrorCode;
use crate::http::AppState;
use crate::http::caller::{OnBehalf, actor};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::problem::ApiError;
use crate::http::responses::{
    AuthProfileResponse, AuthProfileTestResponse, AuthProfileUpdateResponse, ConnectorCredentialResponse, no_store,
};
use crate::service::profile_actions::{ProfileActions, ProfilePatch};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/teams/{team}/auth-profiles/{slug}", patch(update_auth_profile))
        .route(
            "/v1/teams/{team}/auth-profiles/{slug}/default",
            post(set_default_auth_profile).delete(clear_default_auth_profile),
        )
        .route("/v1/teams/{team}/auth-profiles/{slug}/test", post(test_auth_profile))
        .route("/v1/teams/{team}/connectors/{connector_key}/credentials", post(connector_credentials))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = AuthProfileUpdateRequest)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    display_name: Option<String>,
    slug: Option<String>,
    scopes: Option<Vec<String>>,
}

fn parse_update(request: UpdateRequest) -> Result<ProfilePatch, ApiError> {
    Ok(ProfilePatch {
        display_name: request.display_name.as_deref().map(parse_display_name).transpose()?,
        slug: request.slug.as_deref().map(parse_slug).transpose()?,
        scopes: request.scopes.map(parse_scopes).transpose()?,
    })
}

#[utoipa::path(
    patch,
    path = "/v1/teams/{team}/auth-profiles/{slug}",
    tag = "auth-profiles",
    operation_id = "update_auth_profile",
    summary = "Renames a profile or changes its scopes.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    request_body = UpdateRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileUpdateResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn update_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> Result<axum::response::Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    let patch = parse_update(request)?;
    let updated = ProfileActions::new(&state.auth_profiles).update(&team, user, &slug, patch).await?;
    // It may carry a new connect link, a bearer secret.
    Ok(no_store(Json(AuthProfileUpdateResponse::from(updated))))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles/{slug}/default",
    tag = "auth-profiles",
    operation_id = "set_default_auth_profile",
    summary = "Makes a profile its connector's default.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn set_default_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Json<AuthProfileResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    Ok(Json(ProfileActions::new(&state.auth_profiles).set_default(&team, user, &slug).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/v1/teams/{team}/auth-profiles/{slug}/default",
    tag = "auth-profiles",
    operation_id = "clear_default_auth_profile",
    summary = "Stops a profile being its connector's default.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn clear_default_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Json<AuthProfileResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    Ok(Json(ProfileActions::new(&state.auth_profiles).clear_default(&team, user, &slug).await?.into()))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles/{slug}/test",
    tag = "auth-profiles",
    operation_id = "test_auth_profile",
    summary = "Tests a profile's credentials against its connector.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The outcome.", body = AuthProfileTestResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn test_auth_profile(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Json<AuthProfileTestResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    Ok(Json(ProfileActions::new(&state.auth_profiles).test(&team, user, &slug).await?.into()))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/connectors/{connector_key}/credentials",
    tag = "auth-profiles",
    operation_id = "connector_credentials",
    summary = "The credentials of a connector's default profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("connector_key" = String, Path, description = "A connector key"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The credentials (`Cache-Control: no-store`).", body = ConnectorCredentialResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn connector_credentials(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, connector_key)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<axum::response::Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let connector_key = key_like(&connector_key, "connector_key", ErrorCode::InvalidConnectorKey)?;
    let credential =
        ProfileActions::new(&state.auth_profiles).connector_credential(&team, user, &connector_key).await?;
    Ok(no_store(Json(ConnectorCredentialResponse::from(credential))))
}
