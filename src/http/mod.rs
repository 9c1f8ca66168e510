//! The HTTP layer: extract, authorise, parse into domain types, call a service, map the result to
//! a response. No rules and no SQL here.

pub mod admin;
pub mod admin_auth;
pub mod admin_teams;
pub mod auth;
pub mod caller;
pub mod connect;
pub mod cookies;
pub mod credentials;
pub mod extract;
pub mod health;
pub mod me;
pub mod pages;
pub mod problem;
pub mod profiles;
pub mod validation;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Response};
use axum::middleware;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use self::admin_auth::AdminTokens;
use self::problem::ApiError;
use crate::error::ErrorCode;
use crate::service::connections::Connections;
use crate::service::oauth_flow::OAuthFlows;
use crate::service::provisioning::Provisioner;
use crate::service::sessions::Sessions;
use crate::service::signin::SignIn;
use crate::service::teams::Teams;
use crate::service::validation::Validator;
use crate::store::Store;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The store, for readiness.
    pub store: Arc<dyn Store>,
    /// Provisioning and user lookups.
    pub provisioner: Provisioner,
    /// Token validation.
    pub validator: Validator,
    /// Teams and discovery.
    pub teams: Teams,
    /// The authorization-code flows (sign-in, linking, connecting).
    pub flows: OAuthFlows,
    /// Browser sign-in and linking.
    pub sign_in: SignIn,
    /// Connected accounts.
    pub connections: Connections,
    /// Browser sessions.
    pub sessions: Sessions,
    /// Cookie names and attributes.
    pub cookies: cookies::Cookies,
    /// Admin token digests.
    pub admin_tokens: AdminTokens,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router with every route, the problem+json fallbacks and the middleware stack.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = admin::routes()
        .merge(admin_teams::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth::require_admin));
    Router::new()
        .merge(health::routes())
        .merge(validation::routes())
        .merge(auth::routes())
        .merge(me::routes())
        .merge(profiles::routes())
        .merge(connect::routes())
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(
            // Spans carry the method, the matched route (never the raw URI, whose query may hold
            // codes or tokens) and the request id; no header or body is logged.
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                    let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %request.method(), route, request_id)
                })
                .on_request(())
                .on_response(|response: &Response<_>, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
                        "response"
                    );
                })
                .on_failure(()),
        )
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(ErrorCode::InternalError, "an internal error occurred; it has been logged").into_response()
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no route matches this path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not accept this method; see the Allow header")
}
