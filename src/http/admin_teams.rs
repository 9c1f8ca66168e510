//! The admin API for teams: look a team up, and manage the email domains it claims for
//! home-realm discovery.
//!
//! - `GET /admin/teams/{team}` (id or slug)
//! - `DELETE /admin/teams/{team}`: 204, with everything of the team; 409 `default_team` for a
//!   member's default team
//! - `POST /admin/teams/{team}/domains` `{domain, issuer, verified?}`: 201 when new, 200 when the
//!   team's claim was updated, 409 `domain_already_claimed` when another team holds it
//! - `GET /admin/teams/{team}/domains`
//! - `DELETE /admin/teams/{team}/domains/{domain}`: 204

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::AppState;
use super::audit::{AuditDetails, NothingChanged};
use super::extract::parse_team;
use super::extract::{ApiJson, ApiPath, required};
use super::problem::ApiError;
use super::responses::{DomainClaimListResponse, DomainClaimResponse, TeamResponse};
use crate::domain::{DomainName, Issuer, IssuerError};
use crate::error::ErrorCode;
use crate::service::teams::ClaimChange;

/// The routes (authentication is layered on by the caller).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/teams/{team}", get(get_team).delete(delete_team))
        .route("/admin/teams/{team}/domains", get(list_team_domains).post(claim_team_domain))
        .route("/admin/teams/{team}/domains/{domain}", delete(release_team_domain))
}

fn parse_domain(value: &str) -> Result<DomainName, ApiError> {
    DomainName::parse(value).map_err(|e| ApiError::new(ErrorCode::InvalidDomain, e.to_string()).field("domain"))
}

#[utoipa::path(
    get,
    path = "/admin/teams/{team}",
    tag = "admin",
    operation_id = "get_team",
    summary = "A team.",
    params(("team" = String, Path, description = "A team id or slug")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The team.", body = TeamResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn get_team(
    State(state): State<Arc<AppState>>,
    ApiPath(team): ApiPath<String>,
) -> Result<Json<TeamResponse>, ApiError> {
    Ok(Json(state.teams.find(&parse_team(&team)?).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/admin/teams/{team}",
    tag = "admin",
    operation_id = "delete_team",
    summary = "Deletes a team with its memberships, domain claims and connected accounts (revoked); not a member's default team (409 `default_team`: it goes with its user).",
    params(("team" = String, Path, description = "A team id or slug")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "The team is gone.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn delete_team(
    State(state): State<Arc<AppState>>,
    ApiPath(team): ApiPath<String>,
) -> Result<(Extension<AuditDetails>, StatusCode), ApiError> {
    let (id, members) = state.teams.delete(&parse_team(&team)?).await?;
    // The id too: a slug the path named is free for another team from now on.
    let details = AuditDetails(serde_json::Map::from_iter([
        ("team_id".to_owned(), id.to_string().into()),
        ("members".to_owned(), members.into()),
    ]));
    Ok((Extension(details), StatusCode::NO_CONTENT))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = DomainClaimRequest)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    #[schema(required = true, value_type = String)]
    domain: Option<String>,
    #[schema(required = true, value_type = String)]
    issuer: Option<String>,
    verified: Option<bool>,
}

#[utoipa::path(
    post,
    path = "/admin/teams/{team}/domains",
    tag = "admin",
    operation_id = "claim_team_domain",
    summary = "Claims a domain for a team.",
    params(("team" = String, Path, description = "A team id or slug")),
    request_body = ClaimRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The domain was already claimed by this team: the claim.", body = DomainClaimResponse), (status = 201, description = "The claim.", body = DomainClaimResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn claim_team_domain(
    State(state): State<Arc<AppState>>,
    ApiPath(team): ApiPath<String>,
    ApiJson(request): ApiJson<ClaimRequest>,
) -> Result<(StatusCode, Option<Extension<NothingChanged>>, Json<DomainClaimResponse>), ApiError> {
    let team = parse_team(&team)?;
    let domain = parse_domain(required(&request.domain, "domain")?)?;
    let issuer = Issuer::parse(required(&request.issuer, "issuer")?).map_err(|e| {
        let code = if e == IssuerError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidIssuer };
        ApiError::new(code, format!("`issuer`: {e}")).field("issuer")
    })?;
    let (claim, change) = state.teams.claim_domain(&team, domain, issuer, request.verified).await?;
    // A repeated claim changed nothing: no audit row for it.
    let unchanged = (change == ClaimChange::Unchanged).then_some(Extension(NothingChanged));
    let status = if change == ClaimChange::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, unchanged, Json(claim.into())))
}

#[utoipa::path(
    get,
    path = "/admin/teams/{team}/domains",
    tag = "admin",
    operation_id = "list_team_domains",
    summary = "A team's domain claims.",
    params(("team" = String, Path, description = "A team id or slug")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The claims.", body = DomainClaimListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_team_domains(
    State(state): State<Arc<AppState>>,
    ApiPath(team): ApiPath<String>,
) -> Result<Json<DomainClaimListResponse>, ApiError> {
    Ok(Json(state.teams.domains(&parse_team(&team)?).await?.into()))
}

#[utoipa::path(
    delete,
    path = "/admin/teams/{team}/domains/{domain}",
    tag = "admin",
    operation_id = "release_team_domain",
    summary = "Releases a team's domain claim.",
    params(("team" = String, Path, description = "A team id or slug"), ("domain" = String, Path, description = "A domain name")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Released.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn release_team_domain(
    State(state): State<Arc<AppState>>,
    ApiPath((team, domain)): ApiPath<(String, String)>,
) -> Result<(Extension<AuditDetails>, StatusCode), ApiError> {
    let domain = parse_domain(&domain)?;
    state.teams.release_domain(&parse_team(&team)?, &domain).await?;
    let details = AuditDetails(serde_json::Map::from_iter([("domain".to_owned(), domain.as_str().into())]));
    Ok((Extension(details), StatusCode::NO_CONTENT))
}
