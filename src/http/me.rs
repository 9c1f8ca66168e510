//! The signed-in user's own account: `GET /v1/me`, and choosing or unlinking identities.
//! Callers authenticate with their session cookie or an upstream bearer token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::AppState;
use super::caller::{acting_caller, acting_caller_signed_in_lately, missing_credentials, session_without_token};
use super::extract::ApiPath;
use super::problem::ApiError;
use super::responses::{UserProfileResponse, no_store};
use crate::domain::IdentityId;
use crate::error::ErrorCode;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/me", get(get_me))
        .route("/v1/me/identities/{identity_id}", delete(unlink_identity))
        .route("/v1/me/identities/{identity_id}/primary", post(make_identity_primary))
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "account",
    operation_id = "get_me",
    summary = "The token's user, identities and teams.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The user.", body = UserProfileResponse)),
    security(("bearer" = []), ("session" = [])),
)]
async fn get_me(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    // A person's email and identities: kept out of every cache (a browser's disk cache too).
    // A browser with a session and no token: the session and the profile in one read (and a
    // session that has ended is answered from it, not read a second time).
    if let Some(session) = session_without_token(&state, &headers)? {
        let profile = state.sessions.resolve_profile(session).await?.ok_or_else(missing_credentials)?;
        return Ok(no_store(Json(UserProfileResponse::from(profile))));
    }
    // One of Tessera's own tokens must be for Tessera's API: an app's token for itself carries
    // only what its user consented to give it (userinfo), not their identities and teams.
    let user = acting_caller(&state, &headers).await?;
    Ok(no_store(Json(UserProfileResponse::from(state.validator.profile(user).await?))))
}

fn parse_identity(value: &str) -> Result<IdentityId, ApiError> {
    value.parse().map_err(|_| ApiError::new(ErrorCode::IdentityNotFound, "no identity has this id"))
}

#[utoipa::path(
    delete,
    path = "/v1/me/identities/{identity_id}",
    tag = "account",
    operation_id = "unlink_my_identity",
    summary = "Unlinks one of the user's identities.",
    params(("identity_id" = String, Path, description = "An identity id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Unlinked.")),
    security(("bearer" = []), ("session" = [])),
)]
async fn unlink_identity(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(identity): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user = acting_caller_signed_in_lately(&state, &headers).await?;
    let sign_in = state.flows.providers().sign_in_issuers();
    state
        .provisioner
        .unlink_identity(user, parse_identity(&identity)?, &sign_in, super::audit::request_id(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/me/identities/{identity_id}/primary",
    tag = "account",
    operation_id = "make_my_identity_primary",
    summary = "Makes an identity the user's primary one.",
    params(("identity_id" = String, Path, description = "An identity id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The user.", body = UserProfileResponse)),
    security(("bearer" = []), ("session" = [])),
)]
async fn make_identity_primary(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(identity): ApiPath<String>,
) -> Result<Response, ApiError> {
    let user = acting_caller_signed_in_lately(&state, &headers).await?;
    state.provisioner.set_primary_identity(user, parse_identity(&identity)?).await?;
    Ok(no_store(Json(UserProfileResponse::from(state.validator.profile(user).await?))))
}
