//! Tessera as an OpenID Provider, over HTTP: discovery, the OAuth and OpenID endpoints under
//! `/oauth/`, forward-auth for proxies, and the admin API of registered clients. While the
//! provider is off, its routes answer 404 saying what to configure.

pub mod authorize;
pub mod client_auth;
pub mod clients;
pub mod discovery;
pub mod forward_auth;
pub mod jwks;
pub mod token;

use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::http::{Method, header};
use tower_http::cors::{Any, CorsLayer};

use super::AppState;
use super::problem::ApiError;
use crate::error::ErrorCode;
use crate::service::op::keys::SigningKeys;

/// The provider's public routes (the admin routes are [`clients::admin_routes`]).
pub fn routes() -> Router<Arc<AppState>> {
    // What a single-page app on another origin calls with tokens, never cookies: discovery, the
    // keys, the token, revocation and userinfo endpoints answer cross-origin requests.
    let cross_origin =
        Router::new().merge(jwks::routes()).merge(discovery::routes()).merge(token::public_client_routes());
    let cross_origin = for_browser_apps(cross_origin, &[]);
    Router::new().merge(cross_origin).merge(authorize::routes()).merge(token::routes()).merge(forward_auth::routes())
}

/// `routes` answering browser apps on any origin ([`browser_apps_sending`] `extra`), their 405
/// included: set before the CORS layer, the 405 is wrapped by it (the router's own, set later,
/// replaces only a default one), so a preflight (`OPTIONS`) to a `GET`-only route is answered.
pub(crate) fn for_browser_apps(
    routes: axum::Router<Arc<AppState>>,
    extra: &[header::HeaderName],
) -> axum::Router<Arc<AppState>> {
    routes.method_not_allowed_fallback(super::method_not_allowed).layer(browser_apps_sending(extra))
}

/// CORS for browser apps on any origin, without credentials (no cookie is ever sent or read),
/// allowing the request headers `extra` besides `Authorization` and `Content-Type` (an MCP
/// client's, say).
fn browser_apps_sending(extra: &[header::HeaderName]) -> CorsLayer {
    let allowed: Vec<header::HeaderName> =
        [header::AUTHORIZATION, header::CONTENT_TYPE].into_iter().chain(extra.iter().cloned()).collect();
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(allowed)
        // Why userinfo refused a token is in this header (RFC 6750 3), not the body.
        .expose_headers([header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(3600))
}

/// The signing keys, or the 404 that says how to turn the provider on.
pub(crate) fn signing_keys(state: &AppState) -> Result<&SigningKeys, ApiError> {
    state.signing_keys.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::OpenidProviderDisabled,
            "the OpenID Provider is off: configure auth.public_url (TESSERA_PUBLIC_URL) and the key ring \
             (TESSERA_ENCRYPTION_KEYS) to turn it on",
        )
    })
}
