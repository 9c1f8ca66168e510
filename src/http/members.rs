//! Team members, through two doors: team owners (session or bearer token, or the admin token on
//! behalf of a member) and the admin API.
//!
//! - `POST /v1/teams/{team}/members` `{user_id, role}`, `PATCH /v1/teams/{team}/members/{user_id}`
//!   `{role}`, `DELETE /v1/teams/{team}/members/{user_id}` (team owners)
//! - `POST /admin/teams/{team}/members` `{user_id, role}`: 201 added, 200 role changed (or
//!   already that);
//!   `PATCH /admin/teams/{team}/members/{user_id}` `{role}`: 200, never adding anyone (404);
//!   `DELETE /admin/teams/{team}/members/{user_id}`: 204 (never the last owner: 409)

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::AppState;
use super::audit::{self, AuditAction, AuditDetails, NothingChanged};
use super::caller::{OnBehalf, actor};
use super::extract::{ApiJson, ApiPath, ApiQuery, parse_team, parse_user_id, required};
use super::problem::ApiError;
use super::responses::MemberResponse;
use crate::domain::{Role, UserId};
use crate::error::ErrorCode;
use crate::service::teams::{MemberChange, MemberWrite};

/// The routes for team owners.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/teams/{team}/members", post(add_team_member))
        .route("/v1/teams/{team}/members/{user_id}", delete(remove_team_member).patch(change_team_member_role))
}

/// The admin routes (authentication is layered on by the caller).
pub fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/teams/{team}/members", post(add_member))
        .route("/admin/teams/{team}/members/{user_id}", delete(remove_member).patch(change_member_role))
}

/// The body of member requests.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MemberRequest {
    #[schema(required = true, value_type = uuid::Uuid)]
    user_id: Option<String>,
    #[schema(required = true, value_type = crate::http::responses::MemberRole)]
    role: Option<String>,
}

/// Parses a member request into a user and a role.
fn parse_member(request: &MemberRequest) -> Result<(UserId, Role), ApiError> {
    // Trimmed, as `owner` is where a team is created.
    let user = required(&request.user_id, "user_id")?
        .trim()
        .parse::<UserId>()
        .map_err(|_| ApiError::new(ErrorCode::InvalidUserId, "`user_id` must be a UUID").field("user_id"))?;
    Ok((user, parse_role(&request.role)?))
}

/// The body of a role change: the member is named by the path.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleRequest {
    /// `owner`, `admin` or `member`.
    #[schema(required = true, value_type = crate::http::responses::MemberRole)]
    role: Option<String>,
}

fn parse_role(role: &Option<String>) -> Result<Role, ApiError> {
    Role::parse(required(role, "role")?.trim())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRole, "`role` must be owner, admin or member").field("role"))
}

#[utoipa::path(
    patch,
    path = "/v1/teams/{team}/members/{user_id}",
    tag = "teams",
    operation_id = "change_team_member_role",
    summary = "Changes a member's role (owners only); never adds anyone: 404 for a user who is not a member.",
    params(("team" = String, Path, description = "A team id or slug"), ("user_id" = String, Path, description = "A user id (UUID)"), crate::http::openapi::OnBehalfParams),
    request_body = RoleRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The role is changed (or was that already).", body = MemberResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn change_team_member_role(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((named, user)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<RoleRequest>,
) -> Result<MemberAnswer, ApiError> {
    let (acting, team) = actor(&state, &headers, &query, &named).await?;
    let user = parse_user_id(&user)?;
    let role = parse_role(&request.role)?;
    let work = async move {
        let change = state.teams.write_member(&team, Some(acting), user, role, MemberWrite::RoleOnly).await?;
        if change == MemberChange::RoleChanged {
            let details = serde_json::json!({ "user_id": user.to_string(), "role": role.as_str() });
            audit::team_member_changed(&state, &headers, acting, &named, "team.member_role_changed", details).await;
        }
        Ok(member_answer(change, user, role))
    };
    crate::run_to_end(work).await.unwrap_or_else(|| Err(audit::shutting_down()))
}

#[utoipa::path(
    patch,
    path = "/admin/teams/{team}/members/{user_id}",
    tag = "admin",
    operation_id = "admin_change_team_member_role",
    summary = "Changes a member's role; never adds anyone: 404 for a user who is not a member.",
    params(("team" = String, Path, description = "A team id or slug"), ("user_id" = String, Path, description = "A user id (UUID)")),
    request_body = RoleRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The role is changed (or was that already).", body = MemberResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn change_member_role(
    State(state): State<Arc<AppState>>,
    ApiPath((team, user)): ApiPath<(String, String)>,
    ApiJson(request): ApiJson<RoleRequest>,
) -> Result<MemberAnswer, ApiError> {
    let team = parse_team(&team)?;
    let user = parse_user_id(&user)?;
    let role = parse_role(&request.role)?;
    let change = state.teams.write_member(&team, None, user, role, MemberWrite::RoleOnly).await?;
    Ok(member_answer(change, user, role))
}

#[utoipa::path(
    post,
    path = "/v1/teams/{team}/members",
    tag = "teams",
    operation_id = "add_team_member",
    summary = "Adds a member to a team (owners only).",
    params(("team" = String, Path, description = "A team id or slug"), crate::http::openapi::OnBehalfParams),
    request_body = MemberRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Already a member: the role is changed (or was that already).", body = MemberResponse), (status = 201, description = "Added.", body = MemberResponse)),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn add_team_member(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(named): ApiPath<String>,
    ApiQuery(query): ApiQuery<OnBehalf>,
    ApiJson(request): ApiJson<MemberRequest>,
) -> Result<MemberAnswer, ApiError> {
    let (acting, team) = actor(&state, &headers, &query, &named).await?;
    let (user, role) = parse_member(&request)?;
    // The change and its audit row go to their end together (a client that hangs up must not
    // leave a membership given and not recorded).
    let work = async move {
        let change = state.teams.write_member(&team, Some(acting), user, role, MemberWrite::Put).await?;
        let action = match change {
            MemberChange::Added => Some("team.member_added"),
            MemberChange::RoleChanged => Some("team.member_role_changed"),
            MemberChange::Unchanged => None,
        };
        if let Some(action) = action {
            let details = serde_json::json!({ "user_id": user.to_string(), "role": role.as_str() });
            audit::team_member_changed(&state, &headers, acting, &named, action, details).await;
        }
        Ok(member_answer(change, user, role))
    };
    crate::run_to_end(work).await.unwrap_or_else(|| Err(audit::shutting_down()))
}

#[utoipa::path(
    delete,
    path = "/v1/teams/{team}/members/{user_id}",
    tag = "teams",
    operation_id = "remove_team_member",
    summary = "Removes a member from a team (owners only, or oneself).",
    params(("team" = String, Path, description = "A team id or slug"), ("user_id" = String, Path, description = "A user id (UUID)"), crate::http::openapi::OnBehalfParams),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Removed.")),
    security(("bearer" = []), ("session" = []), ("admin_token" = []), ("admin_token_header" = [])),
)]
async fn remove_team_member(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath((team, user)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<OnBehalf>,
) -> Result<RemovalAnswer, ApiError> {
    let named = team;
    let (acting, team) = actor(&state, &headers, &query, &named).await?;
    let user = parse_user_id(&user)?;
    let work = async move {
        let team_deleted = state.teams.remove_member(&team, Some(acting), user).await?;
        let mut details = serde_json::json!({ "user_id": user.to_string() });
        if team_deleted {
            // The last member left: the team, its domain claims and connected accounts went too.
            details["team_deleted"] = true.into();
        }
        audit::team_member_changed(&state, &headers, acting, &named, "team.member_removed", details).await;
        Ok(removal_answer(team_deleted))
    };
    crate::run_to_end(work).await.unwrap_or_else(|| Err(audit::shutting_down()))
}

#[utoipa::path(
    post,
    path = "/admin/teams/{team}/members",
    tag = "admin",
    operation_id = "admin_add_team_member",
    summary = "Adds a member to a team.",
    params(("team" = String, Path, description = "A team id or slug")),
    request_body = MemberRequest,
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Already a member: the role is changed (or was that already).", body = MemberResponse), (status = 201, description = "Added.", body = MemberResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn add_member(
    State(state): State<Arc<AppState>>,
    ApiPath(team): ApiPath<String>,
    ApiJson(request): ApiJson<MemberRequest>,
) -> Result<MemberAnswer, ApiError> {
    let team = parse_team(&team)?;
    let (user, role) = parse_member(&request)?;
    let change = state.teams.write_member(&team, None, user, role, MemberWrite::Put).await?;
    Ok(member_answer(change, user, role))
}

#[utoipa::path(
    delete,
    path = "/admin/teams/{team}/members/{user_id}",
    tag = "admin",
    operation_id = "admin_remove_team_member",
    summary = "Removes a member from a team.",
    params(("team" = String, Path, description = "A team id or slug"), ("user_id" = String, Path, description = "A user id (UUID)")),
    responses(crate::http::openapi::ApiErrors, (status = 204, description = "Removed.")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn remove_member(
    State(state): State<Arc<AppState>>,
    ApiPath((team, user)): ApiPath<(String, String)>,
) -> Result<RemovalAnswer, ApiError> {
    let team = parse_team(&team)?;
    let user = parse_user_id(&user)?;
    let team_deleted = state.teams.remove_member(&team, None, user).await?;
    Ok(removal_answer(team_deleted))
}

/// The answer to removing a member: 204, telling an admin token's audit row (written by
/// [`audit::record_admin_action`]) that the team went with its last member.
type RemovalAnswer = (Option<Extension<AuditDetails>>, StatusCode);

fn removal_answer(team_deleted: bool) -> RemovalAnswer {
    let details = team_deleted
        .then(|| Extension(AuditDetails(serde_json::Map::from_iter([("team_deleted".to_owned(), true.into())]))));
    (details, StatusCode::NO_CONTENT)
}

/// The answer to adding a member: 201 when they joined, else 200; the audit row names a role
/// change as such, and a repeat that changed nothing writes none.
type MemberAnswer =
    (StatusCode, Option<Extension<AuditAction>>, Option<Extension<NothingChanged>>, Json<MemberResponse>);

fn member_answer(change: MemberChange, user: UserId, role: Role) -> MemberAnswer {
    let status = if change == MemberChange::Added { StatusCode::CREATED } else { StatusCode::OK };
    let renamed = (change == MemberChange::RoleChanged).then_some(Extension(AuditAction("team.member_role_changed")));
    let unchanged = (change == MemberChange::Unchanged).then_some(Extension(NothingChanged));
    (status, renamed, unchanged, Json(MemberResponse::new(user, role)))
}
