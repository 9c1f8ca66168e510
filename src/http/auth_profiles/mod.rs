//! Auth profiles (connected accounts) over HTTP, the routes under `/v1/teams/{team}/auth-profiles`
//! and `/connect/`:
//!
//! - [`api`] — the JSON API for team members, and for services acting on behalf of a member;
//! - [`connect`] — the connect links a member opens in a browser to connect an account;
//! - [`actions`] — updates, the default profile per connector, credentials by connector, tests.

pub mod actions;
pub mod api;
pub mod connect;

use std::sync::Arc;

use axum::Router;

use super::AppState;

/// The routes of both.
pub fn routes() -> Router<Arc<AppState>> {
    api::routes().merge(connect::routes()).merge(actions::routes())
}
