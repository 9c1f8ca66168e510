//! The API for backends holding an upstream bearer JWT: `POST /v1/validate`, `GET /v1/check`,
//! and the public `POST /v1/auth/discover`.
//!
//! The token comes in `Authorization: Bearer …` or `X-User-Token: …` (once: a repeated or
//! disagreeing credential header is a 400). Every refused token is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and a code saying why.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::credentials::Credentials;
use super::extract::{ApiJson, ApiQuery, required};
use super::problem::ApiError;
use super::responses::{DiscoverResponse, ValidateResponse};
use crate::domain::{Email, EmailError, TeamRef};
use crate::error::ErrorCode;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/validate", post(validate_token))
        .route("/v1/check", get(check_team))
        .route("/v1/auth/discover", post(discover_sign_in))
}

/// The upstream token of a request; 401 `missing_credentials` without one, 400
/// `ambiguous_credentials` when the credential headers repeat or disagree, or a user is named
/// beside it (`X-On-Behalf-Of`, `?on_behalf_of=`): the answer is about the token's user only.
fn required_token<'h>(headers: &'h HeaderMap, query: Option<&str>) -> Result<&'h str, ApiError> {
    let credentials = Credentials::read(headers)?;
    super::caller::no_user_named(headers, query)?;
    credentials.user_token().ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingCredentials,
            "send the user's token as `Authorization: Bearer <token>` or `X-User-Token: <token>`",
        )
        .challenge("Bearer realm=\"tessera\"")
    })
}

/// An unknown parameter is refused: `audiance=…` ignored would skip the audience check asked for.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ValidateQuery {
    /// The audience the token must have been issued for (in its `aud`): for one of Tessera's own
    /// access tokens, the calling backend's resource URL or client id; for an upstream token,
    /// one of its issuer's configured audiences.
    audience: Option<String>,
    /// `?on_behalf_of=` sent blank (clients that send every parameter): it names nobody, and a
    /// user named there is refused before this is read (`ambiguous_credentials`).
    #[serde(default, rename = "on_behalf_of")]
    #[param(ignore)]
    _on_behalf_of: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/validate",
    tag = "sign-in",
    operation_id = "validate_token",
    summary = "Validates a bearer token and returns its user (provisioned on first sight).",
    params(ValidateQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The token's user.", body = ValidateResponse)),
    security(("bearer" = [])),
)]
async fn validate_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<ValidateResponse>, ApiError> {
    // The credential first: `?on_behalf_of=` is answered as such, not as an unknown parameter.
    let token = required_token(&headers, uri.query())?;
    let ApiQuery(query) = ApiQuery::<ValidateQuery>::from_uri(&uri)?;
    Ok(Json(state.validator.validate_for(token, asked_audience(&query.audience)?).await?.into()))
}

/// `?audience=`, when sent: not blank.
fn asked_audience(audience: &Option<String>) -> Result<Option<&str>, ApiError> {
    audience.is_some().then(|| required(audience, "audience")).transpose()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CheckQuery {
    #[param(required = true, value_type = String)]
    team: Option<String>,
    /// The audience the token must have been issued for, as at `/v1/validate`.
    audience: Option<String>,
    /// `?on_behalf_of=` sent blank (clients that send every parameter): it names nobody, and a
    /// user named there is refused before this is read (`ambiguous_credentials`).
    #[serde(default, rename = "on_behalf_of")]
    #[param(ignore)]
    _on_behalf_of: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/check",
    tag = "sign-in",
    operation_id = "check_team",
    summary = "Whether the token's user is a member of a team.",
    params(CheckQuery),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "A member.")),
    security(("bearer" = [])),
)]
async fn check_team(State(state): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Result<StatusCode, ApiError> {
    let token = required_token(&headers, uri.query())?;
    let ApiQuery(query) = ApiQuery::<CheckQuery>::from_uri(&uri)?;
    let team = TeamRef::parse(required(&query.team, "team")?)
        .map_err(|e| ApiError::new(ErrorCode::InvalidTeam, e.to_string()).field("team"))?;
    if state.validator.is_member(token, &team, asked_audience(&query.audience)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(ErrorCode::NotAMember, "the user is not a member of this team"))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct DiscoverRequest {
    #[schema(required = true, value_type = String)]
    email: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/auth/discover",
    tag = "sign-in",
    operation_id = "discover_sign_in",
    summary = "How an email address signs in.",
    request_body = DiscoverRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The sign-in method.", body = DiscoverResponse)),
    security(()),
)]
async fn discover_sign_in(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<DiscoverRequest>,
) -> Result<Json<DiscoverResponse>, ApiError> {
    let email = Email::parse(required(&request.email, "email")?).map_err(|e| {
        let code = if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail };
        ApiError::new(code, format!("`email`: {e}")).field("email")
    })?;
    Ok(Json(DiscoverResponse::new(state.teams.discover(&email).await?, email.domain_name())))
}
