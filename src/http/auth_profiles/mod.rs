//! Auth profiles (connected accounts) over HTTP, the routes under `/v1/teams/{team}/auth-profiles`
//! and `/connect/`:
//!
//! - [`api`] — the JSON API for team members, and for services acting on behalf of a member;
//! - [`credentials`] — setting and reading the credentials of every kind (env values, browser
//!   sessions, tokens);
//! - [`connect`] — the connect links a member opens in a browser to connect an account;
//! - [`env_form`] — the form an `env_keys` connect link opens.
//! - [`actions`] — updates, the default profile per connector, credentials by connector, tests.

pub mod actions;
pub mod api;
pub mod connect;
pub mod credentials;
pub mod env_form;

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;

use super::AppState;
use crate::service::auth_profiles::AuthProfileError;

/// The JSON API under `/v1/teams/{team}/…` ([`api`], [`credentials`], [`actions`]).
pub fn api_routes() -> Router<Arc<AppState>> {
    api::routes().merge(credentials::routes()).merge(actions::routes())
}

/// The pages a connect link opens under `/connect/` ([`connect`], [`env_form`]), whose forms
/// check their own CSRF token.
pub fn page_routes() -> Router<Arc<AppState>> {
    connect::routes().merge(env_form::routes())
}

/// The path of a connect link's page `suffix` (`oauth/start`, `env`), to come back to and retry:
/// the link's token as the path gave it, put back into links as it is — so `None` (a link it
/// cannot be: `invalid_connect_link`) when it is not of a connect token's form (base64url), rather
/// than let a token such as `..%2F..%2Fauth%2Flink` make those links point elsewhere on this origin.
pub(super) fn connect_page(token: &str, suffix: &str) -> Option<String> {
    let well_formed =
        (1..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| format!("/connect/{token}/{suffix}"))
}

/// The page of a link that is not one.
pub(super) fn not_a_link(state: &AppState, headers: &HeaderMap) -> Response {
    state.pages.error(headers, AuthProfileError::InvalidConnectLink.into())
}
