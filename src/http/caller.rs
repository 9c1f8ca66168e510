//! Who a request acts for: a user's upstream bearer token (validated like `/v1/validate`), or
//! else their session cookie.

use axum::http::HeaderMap;

use super::AppState;
use super::admin_auth::bearer_token;
use super::cookies;
use super::problem::ApiError;
use crate::domain::UserId;
use crate::error::ErrorCode;

/// The user a request acts for. A bearer token (or `X-User-Token`) wins over a session cookie; a
/// refused token is refused, never passed over for the cookie.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    if let Some(token) = user_token(headers) {
        return Ok(state.validator.validate(token).await?.principal.user.id);
    }
    if let Some(cookie) = cookies::read(headers, state.cookies.session())
        && let Some(user) = state.sessions.resolve(cookie).await?
    {
        return Ok(user);
    }
    Err(ApiError::new(
        ErrorCode::MissingCredentials,
        "sign in, or send the user's token as `Authorization: Bearer <token>` or `X-User-Token: <token>`",
    )
    .challenge("Bearer realm=\"tessera\""))
}

/// The upstream token of a request, from `Authorization: Bearer` or `X-User-Token`.
pub fn user_token(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers)
        .or_else(|| headers.get("x-user-token").and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty()))
}

/// The user a profile or team request acts for: a service holding an admin token names the user
/// in `X-On-Behalf-Of` (or `?on_behalf_of=`); anyone else is their own user (see [`caller`]).
pub async fn acting_user(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Result<UserId, ApiError> {
    let admin = bearer_token(headers)
        .or_else(|| headers.get("x-admin-token").and_then(|v| v.to_str().ok()).map(str::trim))
        .is_some_and(|token| state.admin_tokens.verify(token));
    if !admin {
        return caller(state, headers).await;
    }
    let named = headers
        .get("x-on-behalf-of")
        .and_then(|v| v.to_str().ok())
        .or(query)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingField,
                "with the admin token, name the user to act for in `X-On-Behalf-Of` or `?on_behalf_of=`",
            )
            .field("on_behalf_of")
        })?;
    // No existence check here: every route that acts for a user checks their team membership,
    // and an unknown user is a member of nothing.
    named.parse().map_err(|_| {
        ApiError::new(ErrorCode::InvalidUserId, "on_behalf_of must be a user id (a UUID)").field("on_behalf_of")
    })
}

/// `?on_behalf_of=` for admin-token callers.
#[derive(Debug, serde::Deserialize)]
pub(super) struct OnBehalf {
    pub(super) on_behalf_of: Option<String>,
}

/// The acting member and the team a team route names.
pub(super) async fn actor(
    state: &AppState,
    headers: &HeaderMap,
    query: &OnBehalf,
    team: &str,
) -> Result<(UserId, crate::domain::TeamRef), ApiError> {
    let team = super::extract::parse_team(team)?;
    let user = acting_user(state, headers, query.on_behalf_of.as_deref()).await?;
    Ok((user, team))
}
