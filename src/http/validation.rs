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
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AppState;
use super::credentials::Credentials;
use super::extract::{ApiJson, ApiQuery, required};
use super::problem::ApiError;
use crate::domain::{Email, EmailError, Issuer, Subject, TeamRef, TeamRole, UserId};
use crate::error::ErrorCode;
use crate::service::teams::Discovery;

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

/// The body of a successful validation.
#[derive(Debug, Serialize)]
struct ValidateResponse {
    user_id: UserId,
    created: bool,
    issuer: Issuer,
    subject: Subject,
    email: Option<String>,
    email_verified: bool,
    teams: Vec<TeamRole>,
    expires_at: DateTime<Utc>,
}

async fn validate_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ValidateResponse>, ApiError> {
    let validated = state.validator.validate(required_token(&headers)?).await?;
    let (token, principal) = (&validated.token, &validated.principal);
    Ok(Json(ValidateResponse {
        user_id: principal.user.id,
        created: validated.created,
        issuer: token.issuer.clone(),
        subject: token.subject.clone(),
        email: principal.user.email.clone(),
        email_verified: principal.user.email_verified,
        teams: principal.teams.clone(),
        expires_at: token.expires_at,
    }))
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
) -> Result<Json<Value>, ApiError> {
    let email = Email::parse(required(&request.email, "email")?).map_err(|e| {
        let code = if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail };
        ApiError::new(code, format!("`email`: {e}")).field("email")
    })?;
    let domain = email.domain_name();
    Ok(Json(match state.teams.discover(&email).await? {
        Discovery::Sso { issuer, provider } => {
            json!({ "method": "sso", "issuer": issuer, "provider": provider, "domain": domain })
        }
        Discovery::Default => json!({ "method": "default", "domain": domain }),
    }))
}
