//! The admin API's listings and team creation, for operators:
//!
//! - `GET /admin/users?email=&issuer=&subject=&team=&disabled=&cursor=&limit=`
//! - `GET /admin/teams?slug_prefix=&cursor=&limit=`, `POST /admin/teams` `{slug, name, owner?}`
//! - `GET /admin/teams/{team}/members?cursor=&limit=`
//!
//! Every listing answers `{"<items>": [...], "next_cursor": "…" | null}`: pass `next_cursor` back
//! as `cursor` for the next page. `limit` is 1 to 200, 50 by default.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::extract::{ApiJson, ApiQuery, parse_team, required};
use super::problem::ApiError;
use super::responses::{TeamListResponse, TeamMemberListResponse, TeamResponse, UserListResponse};
use crate::domain::{DisplayName, Email, EmailError, Issuer, IssuerError, Slug, Subject, TextError, UserId};
use crate::error::ErrorCode;
use crate::service::users::{PageRequest, UserFilter};

/// The routes (authentication is layered on by the caller).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/users", get(list_users))
        .route("/admin/teams", get(list_teams).post(create_team))
        .route("/admin/teams/{team}/members", get(list_team_members))
}

/// The query of `GET /admin/users`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    email: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    team: Option<String>,
    disabled: Option<bool>,
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "admin",
    operation_id = "list_users",
    summary = "Lists users, filtered, a page at a time.",
    params(UsersQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of users.", body = UserListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_users(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<UsersQuery>,
) -> Result<Json<UserListResponse>, ApiError> {
    let page = PageRequest::parse(query.cursor.as_deref(), query.limit)?;
    let email = query
        .email
        .as_deref()
        .map(|email| {
            Email::parse(email).map_err(|e| {
                let code = if e == EmailError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidEmail };
                ApiError::new(code, format!("`email`: {e}")).field("email")
            })
        })
        .transpose()?;
    let identity = match (query.issuer.as_deref(), query.subject.as_deref()) {
        (None, None) => None,
        (Some(issuer), Some(subject)) => {
            let issuer = Issuer::parse(issuer).map_err(|e| {
                let code = if e == IssuerError::TooLong { ErrorCode::FieldTooLong } else { ErrorCode::InvalidIssuer };
                ApiError::new(code, format!("`issuer`: {e}")).field("issuer")
            })?;
            let subject = Subject::parse(subject).map_err(|e| {
                let code = match e {
                    TextError::Empty => ErrorCode::MissingField,
                    TextError::TooLong(_) => ErrorCode::FieldTooLong,
                    TextError::ControlCharacters => ErrorCode::InvalidSubject,
                };
                ApiError::new(code, format!("`subject`: {e}")).field("subject")
            })?;
            Some((issuer, subject))
        }
        (Some(_), None) | (None, Some(_)) => {
            let missing = if query.issuer.is_none() { "issuer" } else { "subject" };
            return Err(ApiError::new(
                ErrorCode::MissingField,
                "`issuer` and `subject` filter together (one identity): send both or neither",
            )
            .field(missing));
        }
    };
    let team = query.team.as_deref().map(parse_team).transpose()?;
    let filter = UserFilter { email, identity, team, disabled: query.disabled };
    Ok(Json(state.users.list(&filter, page).await?.into()))
}

/// The query of `GET /admin/teams`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TeamsQuery {
    slug_prefix: Option<String>,
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/admin/teams",
    tag = "admin",
    operation_id = "list_teams",
    summary = "Lists teams, a page at a time.",
    params(TeamsQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of teams.", body = TeamListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_teams(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<TeamsQuery>,
) -> Result<Json<TeamListResponse>, ApiError> {
    let page = PageRequest::parse(query.cursor.as_deref(), query.limit)?;
    let prefix = query.slug_prefix.as_deref().filter(|p| !p.is_empty());
    // Nothing else can match, and the database need not see other bytes.
    if prefix.is_some_and(|p| !Slug::could_begin(p)) {
        let detail = format!("`slug_prefix` is up to {} characters of a-z, 0-9 and -", Slug::MAX_LEN);
        return Err(ApiError::new(ErrorCode::InvalidRequest, detail).field("slug_prefix"));
    }
    Ok(Json(state.teams.list(prefix, page).await?.into()))
}

/// The query of `GET /admin/teams/{team}/members`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/admin/teams/{team}/members",
    tag = "admin",
    operation_id = "list_team_members",
    summary = "Lists a team's members, a page at a time.",
    params(("team" = String, Path, description = "A team id or slug"), PageQuery),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of members.", body = TeamMemberListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_team_members(
    State(state): State<Arc<AppState>>,
    super::extract::ApiPath(team): super::extract::ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<TeamMemberListResponse>, ApiError> {
    let team = parse_team(&team)?;
    let page = PageRequest::parse(query.cursor.as_deref(), query.limit)?;
    Ok(Json(state.teams.members(&team, page).await?.into()))
}

/// The body of `POST /admin/teams` (a misspelt `owner` would make a team without one: refused).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateTeamRequest {
    #[schema(required = true, value_type = String)]
    slug: Option<String>,
    #[schema(required = true, value_type = String)]
    name: Option<String>,
    owner: Option<String>,
}

#[utoipa::path(
    post,
    path = "/admin/teams",
    tag = "admin",
    operation_id = "create_team",
    summary = "Creates a team.",
    request_body = CreateTeamRequest,
    responses(crate::http::openapi::ApiErrors, (status = 201, description = "The team (`Location` names it).", body = TeamResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn create_team(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CreateTeamRequest>,
) -> Result<Response, ApiError> {
    let slug = Slug::parse(required(&request.slug, "slug")?.trim())
        .map_err(|e| ApiError::new(ErrorCode::InvalidSlug, format!("`slug`: {e}")).field("slug"))?;
    let name = DisplayName::parse_optional(Some(required(&request.name, "name")?))
        .map_err(|e| {
            let code =
                if matches!(e, TextError::TooLong(_)) { ErrorCode::FieldTooLong } else { ErrorCode::InvalidName };
            ApiError::new(code, format!("`name`: {e}")).field("name")
        })?
        .ok_or_else(|| ApiError::new(ErrorCode::MissingField, "`name` is required").field("name"))?;
    let owner = request
        .owner
        .as_deref()
        .map(|owner| {
            owner.trim().parse::<UserId>().map_err(|_| {
                ApiError::new(ErrorCode::InvalidUserId, "`owner` must be a user id (a UUID)").field("owner")
            })
        })
        .transpose()?;
    let team = state.teams.create(slug, name.as_str().to_owned(), owner).await?;
    let location = format!("/admin/teams/{}", team.id);
    let mut response = (StatusCode::CREATED, Json(TeamResponse::from(team))).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    // Who was made its owner, which the answer does not show: the audit row names them.
    if let Some(owner) = owner {
        let details = serde_json::Map::from_iter([("owner".to_owned(), owner.to_string().into())]);
        response.extensions_mut().insert(super::audit::AuditDetails(details));
    }
    Ok(response)
}
