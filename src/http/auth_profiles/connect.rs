//! Auth-profile connect links: `GET /connect/{token}/oauth/start` checks that the signed-in user
//! is the one the link was made for, consumes the link, and sends the browser to the provider
//! with a fresh state, PKCE verifier and nonce. Otherwise the flow stops with a page that says
//! why. Pages carry `Referrer-Policy: no-referrer`, so the token never leaks to the provider in
//! `Referer`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use secrecy::ExposeSecret;

use crate::http::AppState;
use crate::http::auth::{login_cookie, redirect};
use crate::http::credentials::cookie;
use crate::http::extract::ApiPath;
use crate::http::pages;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/connect/{token}/oauth/start", get(start_connect))
}

async fn start_connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
) -> Response {
    let current_user = match cookie(&headers, state.cookies.session()) {
        Ok(Some(session)) => match state.sessions.resolve(session).await {
            Ok(user) => user,
            Err(error) => return pages::error(&headers, error.into()),
        },
        Ok(None) => None,
        Err(error) => return pages::error(&headers, error),
    };
    match state.auth_profiles.start(&token, current_user).await {
        Ok(started) => redirect(started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]),
        Err(error) => pages::error(&headers, error.into()),
    }
}
