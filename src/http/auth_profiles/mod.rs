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

/// The routes of all of them.
pub fn routes() -> Router<Arc<AppState>> {
    api::routes()
        .merge(connect::routes())
        .merge(credentials::routes())
        .merge(env_form::routes())
        .merge(actions::routes())
}
