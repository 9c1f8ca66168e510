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
