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

use super::AppState;

/// The JSON API under `/v1/teams/{team}/…` ([`api`], [`credentials`], [`actions`]).
pub fn api_routes() -> Router<Arc<AppState>> {
    api::routes().merge(credentials::routes()).merge(actions::routes())
}

/// The pages a connect link opens under `/connect/` ([`connect`], [`env_form`]), whose forms
/// check their own CSRF token.
pub fn page_routes() -> Router<Arc<AppState>> {
    connect::routes().merge(env_form::routes())
}
