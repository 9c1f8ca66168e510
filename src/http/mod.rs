//! The HTTP layer: extract, authorise, parse into domain types, call a service, map the result to
//! a response (every JSON success body is a type in [`responses`]). No rules and no SQL here.

pub mod account;
pub mod admin;
pub mod admin_auth;
pub mod admin_listing;
pub mod admin_teams;
pub mod audit;
pub mod auth;
pub mod auth_profiles;
pub mod caller;
pub mod cookies;
pub mod credentials;
pub mod csrf;
pub mod extract;
pub mod health;
pub mod login;
pub mod mcp;
pub mod me;
pub mod members;
pub mod op;
pub mod openapi;
pub mod pages;
pub mod problem;
pub mod prometheus;
pub mod request_body;
pub mod responses;
pub mod serve;
pub mod validation;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Uri};
use axum::http::{HeaderName, Response};
use axum::middleware;
use axum::response::IntoResponse;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use self::admin_auth::AdminTokens;
use self::problem::ApiError;
use crate::error::ErrorCode;
use crate::service::audit::Audit;
use crate::service::auth_profiles::AuthProfiles;
use crate::service::op::clients::Clients;
use crate::service::op::keys::SigningKeys;
use crate::service::op::provider::OpenIdProvider;
use crate::service::provisioning::Provisioner;
use crate::service::sessions::Sessions;
use crate::service::signin::SignIn;
use crate::service::teams::Teams;
use crate::service::users::Users;
use crate::service::validation::Validator;
use crate::service::webhooks::Webhooks;
use crate::store::Store;
use crate::upstream::oauth_flow::OAuthFlows;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The store, for readiness.
    pub store: Arc<dyn Store>,
    /// Provisioning and user lookups.
    pub provisioner: Provisioner,
    /// Token validation.
    pub validator: Arc<Validator>,
    /// Teams and discovery.
    pub teams: Teams,
    /// The authorization-code flows (sign-in, linking, connecting).
    pub flows: OAuthFlows,
    /// Browser sign-in and linking.
    pub sign_in: SignIn,
    /// Auth profiles (connected accounts).
    pub auth_profiles: AuthProfiles,
    /// Browser sessions.
    pub sessions: Sessions,
    /// Cookie names and attributes.
    pub cookies: cookies::Cookies,
    /// Admin token digests.
    pub admin_tokens: AdminTokens,
    /// Registered clients of the OpenID Provider.
    pub clients: Clients,
    /// Tessera's own token-signing keys; `None` while the OpenID Provider is off (it needs
    /// `auth.public_url` and the key ring).
    pub signing_keys: Option<SigningKeys>,
    /// The OpenID Provider; `None` while it is off.
    pub op: Option<OpenIdProvider>,
    /// The pages' branding, stylesheet and security headers.
    pub pages: pages::Pages,
    /// Webhook endpoints.
    pub webhooks: Webhooks,
    /// Operators' user listings and deletions.
    pub users: Users,
    /// The metrics endpoint; `None` while metrics are off (`metrics.enabled`).
    pub metrics: Option<prometheus::Metrics>,
    /// The audit log.
    pub audit: Audit,
    /// Applies other instances' changes to this instance's caches (its last read for `/metrics`).
    pub cache_sync: crate::service::cache_sync::CacheSync,
    /// Set on SIGTERM when `server.drain_delay_seconds` is not zero: `/readyz` answers 503
    /// while the server still accepts connections.
    pub draining: std::sync::atomic::AtomicBool,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client `X-Request-Id` kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Builds the router with every route, the problem+json fallbacks and the middleware stack.
pub fn router(state: Arc<AppState>, limits: &crate::config::ServerConfig) -> Router {
    let admin = admin::routes()
        .merge(admin_teams::routes())
        .merge(admin_listing::routes())
        .merge(members::admin_routes())
        .merge(op::clients::admin_routes())
        .merge(webhooks::routes())
        .merge(audit::routes());
    // `/metrics` on the main listener needs an admin token, like the admin API.
    let admin = match &state.metrics {
        Some(metrics) if !metrics.own_listener => admin.merge(prometheus::routes()),
        _ => admin,
    };
    // Inside the authentication: every successful change by an admin token is audited. Every
    // answer is kept out of caches: users' emails and identities, clients' secrets at creation.
    let admin = private(
        admin
            .route_layer(middleware::from_fn_with_state(state.clone(), audit::record_admin_action))
            .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth::require_admin)),
    );
    let app = Router::new()
        .merge(health::routes())
        .merge(private(validation::routes()))
        .merge(auth::routes())
        .merge(login::routes())
        .merge(account::routes())
        .merge(pages::routes())
        .merge(auth_profiles::page_routes())
        .merge(private(
            me::routes()
                .route_layer(middleware::from_fn(caller::refuse_named_user))
                .merge(auth_profiles::api_routes())
                .merge(members::routes())
                .route_layer(middleware::from_fn_with_state(state.clone(), csrf::cookie_changes_from_this_origin))
                .route_layer(middleware::from_fn_with_state(state.clone(), caller::credentials_first)),
        ))
        .merge(op::routes().route_layer(middleware::from_fn_with_state(state.clone(), audit::count_client_refusals)))
        .merge(mcp::routes(&state))
        .merge(openapi::routes())
        // Changes an admin token makes on behalf of a user are audited too.
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record_admin_action))
        .merge(admin)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed);
    let app = traced(bodies_and_panics(app, limits.body_read_timeout));
    // Served over HTTPS (`auth.cookie_secure`, the default): browsers are told to keep to it, so
    // that a first visit by plain http cannot be intercepted and relayed with its session cookie.
    // Browsers ignore the header on plain http; a proxy that sets its own keeps its own.
    let app = if state.cookies.secure() {
        app.layer(middleware::map_response(|mut response: Response<axum::body::Body>| async move {
            response
                .headers_mut()
                .entry(axum::http::header::STRICT_TRANSPORT_SECURITY)
                .or_insert(axum::http::HeaderValue::from_static("max-age=31536000"));
            response
        }))
    } else {
        app
    };
    // While draining, every answer tells its client to leave the connection: a keep-alive one
    // (a proxy's pool, say) would otherwise send its next request as the listener closes it,
    // and a request lost there is not retried (nginx does not retry a POST).
    let draining = state.clone();
    let app = app.layer(middleware::map_response(move |mut response: Response<axum::body::Body>| {
        let draining = draining.draining.load(std::sync::atomic::Ordering::Acquire);
        async move {
            if draining {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            }
            response
        }
    }));
    // Outside the panic catcher, so that a panic counts as the 500 it becomes.
    let app = match state.metrics {
        Some(_) => app.layer(middleware::from_fn(prometheus::track_requests)),
        None => app,
    };
    app.layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // Outermost: a client's id reaches the logs and the response only when it is safe.
        .layer(MapRequestLayer::new(drop_unsafe_request_id))
        .with_state(state)
}

/// `routes` with every answer kept out of caches: they answer what one caller may know (a
/// user's profiles, a membership, an admin's listings), and the credential may come in
/// `X-Admin-Token` or `X-User-Token`, which does not bar a shared cache as `Authorization` does.
fn private(routes: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    routes.route_layer(middleware::map_response(|response: axum::response::Response| async {
        responses::no_store(response)
    }))
}

/// Each request in a span, and each answer logged. Spans carry the method (a standard one's
/// name, else `other`: a client may send a method of any length), the matched route (never the
/// raw URI, whose query may hold codes or tokens) and the request id; no header or body is
/// logged.
fn traced<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
                let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                let method = crate::observability::method_name(request.method());
                tracing::info_span!("request", method, route, request_id)
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
}

/// `router` with the body limits and the answer to a panic: a body declared too large is
/// refused unread, one arriving too slowly is cut off, and a handler's panic becomes a logged 500.
fn bodies_and_panics<S: Clone + Send + Sync + 'static>(router: Router<S>, body_read_timeout: Duration) -> Router<S> {
    router
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        // Inside the request's span: the 500 a panic becomes is logged with the request id and
        // the panic's message, and answered with its "response" line like any other.
        .layer(CatchPanicLayer::custom(|panic: Box<dyn std::any::Any + Send>| {
            let message = crate::error::panic_message(panic.as_ref());
            let error = ApiError::internal(std::io::Error::other(format!("panicked: {message}")));
            let mut response = responses::no_store(error.into_response());
            response.extensions_mut().insert(Panicked);
            response
        }))
        // A browser meets the panic on a page: a fixed one, with a next step.
        .layer(middleware::from_fn(page_for_a_panic))
        // A body declared too large is refused unread; one arriving too slowly is cut off. Outside
        // the panic's answer, which then says `Connection: close` too when the body was left
        // unread (the next request on a kept-alive connection would otherwise meet its close).
        .layer(middleware::from_fn_with_state(body_read_timeout, request_body::guard))
}

/// Marks the answer to a handler's panic.
#[derive(Debug, Clone, Copy)]
struct Panicked;

/// For a browser, the answer to a panic is a page (fixed: nothing more can be trusted to
/// render), not the problem+json an API client gets.
async fn page_for_a_panic(request: Request, next: middleware::Next) -> axum::response::Response {
    // Only kept here (a cheap clone); read only for the rare panic.
    let accept = request.headers().get(axum::http::header::ACCEPT).cloned();
    let response = next.run(request).await;
    if response.extensions().get::<Panicked>().is_some() {
        let mut headers = HeaderMap::new();
        headers.extend(accept.map(|value| (axum::http::header::ACCEPT, value)));
        if pages::wants_html(&headers) {
            return pages::unrendered_page();
        }
    }
    response
}

/// The router of `metrics.listen`: `/metrics` alone, without authentication (that listener is
/// meant for a private network), requests counted, logged and kept from panics like the main
/// listener's.
pub fn metrics_router(state: Arc<AppState>, limits: &crate::config::ServerConfig) -> Router {
    let routes = prometheus::routes().fallback(not_found).method_not_allowed_fallback(method_not_allowed);
    traced(bodies_and_panics(routes, limits.body_read_timeout))
        .layer(middleware::from_fn(prometheus::track_requests))
        // An `X-Request-Id` on every answer here too, kept from the client only when safe.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(MapRequestLayer::new(drop_unsafe_request_id))
        .with_state(state)
}

/// Removes a client's `X-Request-Id` unless it is one header of 1 to [`MAX_REQUEST_ID_LEN`]
/// characters of `A-Z a-z 0-9 . _ -`, so that [`SetRequestIdLayer`] generates one instead. An id
/// is echoed in the response and written to every log line of the request: a long or odd one
/// would let a client bloat logs, forge log fields or smuggle text into other systems.
fn drop_unsafe_request_id(mut request: Request) -> Request {
    let mut ids = request.headers().get_all(&REQUEST_ID).iter();
    let safe = match (ids.next(), ids.next()) {
        (None, _) => return request,
        (Some(id), None) => is_safe_request_id(id.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !safe {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Whether a client's request id is kept (see [`drop_unsafe_request_id`]).
pub fn is_safe_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no route matches this path")
}

/// The fallback: a page for a browser; under `/oauth/`, RFC 6749's JSON (`invalid_request`, with
/// the status); problem+json otherwise.
async fn no_route(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> axum::response::Response {
    refused_route(&state, &uri, &headers, not_found().await)
}

async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> axum::response::Response {
    let error =
        ApiError::new(ErrorCode::MethodNotAllowed, "this route does not accept this method; see the Allow header");
    refused_route(&state, &uri, &headers, error)
}

/// A request no route takes, answered in the format of the path's clients (see [`no_route`]).
fn refused_route(state: &AppState, uri: &Uri, headers: &HeaderMap, error: ApiError) -> axum::response::Response {
    if uri.path().starts_with("/oauth/") && !pages::wants_html(headers) {
        return op::token::OAuthResponse::from(error).into_response();
    }
    pages::refused(state, headers, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_a_500_that_is_not_stored_and_closes_a_connection_with_an_unread_body() {
        use tower::ServiceExt as _;
        async fn boom() -> &'static str {
            panic!("a bug")
        }
        let app = bodies_and_panics(Router::new().route("/boom", axum::routing::post(boom)), Duration::from_secs(5));
        let request = Request::post("/boom")
            .header(axum::http::header::CONTENT_LENGTH, "10")
            .body(axum::body::Body::from("0123456789"))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[axum::http::header::CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[axum::http::header::CONNECTION], "close", "its body was never read");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "internal_error");
        assert!(!problem.to_string().contains("a bug"), "the panic's message is logged, not told: {problem}");
        // A browser gets a page, with the pages' headers.
        let app = bodies_and_panics(Router::new().route("/boom", axum::routing::get(boom)), Duration::from_secs(5));
        let request =
            Request::get("/boom").header(axum::http::header::ACCEPT, "text/html").body(axum::body::Body::empty());
        let response = app.oneshot(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers();
        assert_eq!(headers[axum::http::header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["cache-control"], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let page = String::from_utf8(body.to_vec()).unwrap();
        assert!(page.contains("internal_error") && page.contains("href=\"/account\"") && !page.contains("a bug"));
    }

    #[test]
    fn only_short_safe_request_ids_are_kept() {
        for id in ["a", "0193f0c2-7d3e-7c4e-8f00-000000000000", "trace.span_1-2", &"x".repeat(MAX_REQUEST_ID_LEN)] {
            assert!(is_safe_request_id(id.as_bytes()), "{id}");
        }
        for id in ["", "a b", "a\"b", "a/b", "{\"level\":\"error\"}", "é", &"x".repeat(MAX_REQUEST_ID_LEN + 1)] {
            assert!(!is_safe_request_id(id.as_bytes()), "{id}");
        }
    }

    #[test]
    fn an_unsafe_or_repeated_request_id_is_removed() {
        let request = |ids: &[&str]| {
            let mut builder = Request::builder();
            for id in ids {
                builder = builder.header(&REQUEST_ID, *id);
            }
            drop_unsafe_request_id(builder.body(axum::body::Body::empty()).unwrap())
        };
        let ids = |request: &Request| request.headers().get_all(&REQUEST_ID).iter().count();
        assert_eq!(request(&["abc"]).headers()[&REQUEST_ID], "abc");
        assert_eq!(ids(&request(&[])), 0);
        assert_eq!(ids(&request(&["a b"])), 0);
        assert_eq!(ids(&request(&["abc", "abc"])), 0);
    }
}
