//! The API for backends holding an upstream bearer JWT: `POST /v1/validate`, `GET /v1/check`,
//! and the public `POST /v1/auth/discover`.
//!
//! The token comes in `Authorization: Bearer …` or `X-User-Token: …` (once: a repeated or
//! disagreeing credential header is a 400). Every refused token is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and a code saying why.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
/// `ambiguous_credentials` when the credential headers repeat or disagree.
fn required_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    Credentials::read(headers)?.user_token().ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingCredentials,
            "send the user's token as `Authorization: Bearer <token>` or `X-User-Token: <token>`",
        )
        .challenge("Bearer realm=\"tessera\"")
    })
}

async fn validate_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ValidateResponse>, ApiError> {
    Ok(Json(state.validator.validate(required_token(&headers)?).await?.into()))
}

#[derive(Debug, Deserialize)]
struct CheckQuery {
    team: Option<String>,
}

async fn check_team(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CheckQuery>,
) -> Result<StatusCode, ApiError> {
    let token = required_token(&headers)?;
    let team = TeamRef::parse(required(&query.team, "team")?)
        .map_err(|e| ApiError::new(ErrorCode::InvalidTeam, e.to_string()).field("team"))?;
    if state.validator.is_member(token, &team).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(ErrorCode::NotAMember, "the user is not a member of this team"))
    }
}

#[derive(Debug, Deserialize)]
struct DiscoverRequest {
    email: Option<String>,
}

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
