//! Forward-auth for reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Caddy
//! `forward_auth`, Envoy ext_authz): `GET /auth/verify` answers 200 with the user in
//! `X-Tessera-User-Id`, `X-Tessera-Email` and `X-Tessera-Teams` for a live Tessera session
//! cookie or a valid Tessera access token, and 401 otherwise.
//!
//! A session is read from the database (one round trip), so signing out or disabling the user
//! takes effect at once. An access token is verified locally, with no database read: it counts
//! until it expires (ten minutes by default); use introspection where a revocation must show at
//! once.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::AppState;
use crate::http::credentials::{Credentials, cookie};
use crate::http::problem::ApiError;

const USER_ID: HeaderName = HeaderName::from_static("x-tessera-user-id");
const EMAIL: HeaderName = HeaderName::from_static("x-tessera-email");
const TEAMS: HeaderName = HeaderName::from_static("x-tessera-teams");

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/auth/verify", get(verify))
}

fn unauthorized() -> Response {
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn allowed(user: &str, email: Option<&str>, teams: &[&str]) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(user) {
        headers.insert(USER_ID, value);
    }
    if let Some(value) = email.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(EMAIL, value);
    }
    if let Ok(value) = HeaderValue::from_str(&teams.join(",")) {
        headers.insert(TEAMS, value);
    }
    response
}

async fn verify(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let credentials = Credentials::read(&headers)?;
    if let Some(token) = credentials.user_token() {
        let Some(op) = state.op.as_ref() else { return Ok(unauthorized()) };
        return Ok(match op.verify_access(token).await {
            Some(claims) if claims.gid.is_some() => {
                let teams: Vec<&str> = claims.teams.iter().flatten().map(String::as_str).collect();
                allowed(&claims.sub, claims.email.as_deref(), &teams)
            }
            _ => unauthorized(),
        });
    }
    let Some(session) = cookie(&headers, state.cookies.session())? else { return Ok(unauthorized()) };
    Ok(match state.sessions.resolve_profile(session).await? {
        Some(profile) => {
            let teams: Vec<&str> = profile.teams.iter().map(|m| m.team.slug.as_str()).collect();
            allowed(&profile.user.id.to_string(), profile.user.email.as_deref(), &teams)
        }
        None => unauthorized(),
    })
}
