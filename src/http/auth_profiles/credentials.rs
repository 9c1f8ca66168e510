//! The credentials of auth profiles of every kind, for team members and for services acting on
//! behalf of one:
//!
//! - `PUT /v1/teams/{team}/auth-profiles/{slug}/env` `{"values": {"NAME": "…"}}` — sets the values
//!   of an `env` profile, replacing them all → the profile (which fields are set, never a value)
//! - `PUT …/{slug}/browser-session` `{"storage_state": {cookies, origins}, "browser_kind"?,
//!   "cdp_url"?}` — replaces the storage state of a `browser_session` profile → the profile
//! - `POST …/{slug}/credentials` → the credential, whatever the kind (`Cache-Control: no-store`)

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::api::{distinct_values, parse_profile, secret_values};
use crate::http::AppState;
use crate::http::caller::{OnBehalf, actor};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::problem::ApiError;
use crate::http::responses::no_store;
use crate::http::responses::{AuthProfileResponse, CredentialResponse};
use crate::service::profile_credentials::BrowserSessionInput;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/teams/{team}/auth-profiles/{slug}/env", put(set_env_values))
        .route("/v1/teams/{team}/auth-profiles/{slug}/browser-session", put(set_browser_session))
        .route("/v1/teams/{team}/auth-profiles/{slug}/credentials", post(profile_credentials))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = EnvValuesRequest)]
#[serde(deny_unknown_fields)]
struct EnvRequest {
    #[serde(deserialize_with = "distinct_values")]
    values: BTreeMap<String, String>,
}

#[utoipa::path(
    put,
    path = "/v1/teams/{team}/auth-profiles/{slug}/env",
    tag = "auth-profiles",
    operation_id = "set_env_values",
    summary = "Sets the values of an `env` profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    request_body = EnvRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn set_env_values(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<EnvRequest>,
) -> Result<Json<AuthProfileResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    let values = secret_values(request.values);
    let request_id = crate::http::audit::request_id_of(&headers);
    Ok(Json(state.auth_profiles.set_env(&team, user, &slug, &values, request_id).await?.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BrowserSessionRequest {
    /// No key twice in any object (see [`crate::http::extract::DistinctJson`]).
    #[serde(deserialize_with = "crate::http::extract::distinct_json")]
    storage_state: serde_json::Value,
    browser_kind: Option<String>,
    cdp_url: Option<String>,
}

#[utoipa::path(
    put,
    path = "/v1/teams/{team}/auth-profiles/{slug}/browser-session",
    tag = "auth-profiles",
    operation_id = "set_browser_session",
    summary = "Sets the storage state of a `browser_session` profile.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    request_body = BrowserSessionRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The profile.", body = AuthProfileResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn set_browser_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<BrowserSessionRequest>,
) -> Result<Json<AuthProfileResponse>, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let slug = parse_profile(&slug)?;
    let input = BrowserSessionInput {
        storage_state: request.storage_state,
        browser_kind: request.browser_kind,
        cdp_url: request.cdp_url,
    };
    let request_id = crate::http::audit::request_id_of(&headers);
    Ok(Json(state.auth_profiles.set_browser_session(&team, user, &slug, &input, request_id).await?.into()))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/auth-profiles/{slug}/credentials",
    tag = "auth-profiles",
    operation_id = "profile_credentials",
    summary = "A profile's credentials.",
    params(("team" = String, Path, description = "A team id or slug"), ("slug" = String, Path, description = "An auth profile's slug, or its id (a UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The credentials (`Cache-Control: no-store`).", body = CredentialResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn profile_credentials(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, slug)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<Response, ApiError> {
    let (user, team) = actor(&state, &headers, &query, &team).await?;
    let credential: CredentialResponse =
        state.auth_profiles.credentials(&team, user, &parse_profile(&slug)?).await?.into();
    Ok(no_store(Json(credential)))
}
