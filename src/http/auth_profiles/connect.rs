//! Auth-profile connect links: `GET /connect/{token}/oauth/start` checks that the signed-in user
//! is the one the link was made for, consumes the link, and sends the browser to the provider
//! with a fresh state, PKCE verifier and nonce. Otherwise the flow stops with a page that says
//! why and what to do next (sign in, or sign in as the right user, coming back to the link). Pages carry `Referrer-Policy: no-referrer`, so the token never leaks to the provider in
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
use crate::http::pages::errors;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/connect/{token}/oauth/start", get(start_connect))
}

#[utoipa::path(
    get,
    path = "/connect/{token}/oauth/start",
    tag = "pages",
    operation_id = "start_connect",
    summary = "Starts connecting an OAuth profile: redirects to the provider.",
    params(("token" = String, Path, description = "A connect token (from a connect link)")),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn start_connect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
) -> Response {
    // "Sign in" (as the right user) comes back to this link, still unused.
    let here = format!("/connect/{token}/oauth/start");
    let signed_out = errors::Context { return_to: Some(here.clone()), signed_in: false };
    let current_user = match cookie(&headers, state.cookies.session()) {
        Ok(Some(session)) => match state.sessions.resolve(session).await {
            Ok(user) => user,
            Err(error) => return state.pages.error_in(&headers, error.into(), &signed_out),
        },
        Ok(None) => None,
        Err(error) => return state.pages.error_in(&headers, error, &signed_out),
    };
    let context = errors::Context { return_to: Some(here), signed_in: current_user.is_some() };
    match state.auth_profiles.start(&token, current_user).await {
        Ok(started) => redirect(started.location.as_str(), &[login_cookie(&state, started.state.expose_secret())]),
        Err(error) => state.pages.error_in(&headers, error.into(), &context),
    }
}
