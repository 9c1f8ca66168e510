//! `GET /oauth/jwks`: the public keys of Tessera's signing keys, as a JWK Set, cacheable for
//! `oidc.jwks_max_age_seconds` (a new key is published that long, and more, before it signs).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::super::AppState;
use super::super::problem::ApiError;

/// The media type of a JWK Set (RFC 7517 section 8.5.1).
pub const JWK_SET_JSON: &str = "application/jwk-set+json";

/// The JWKS route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/oauth/jwks", get(get_jwks))
}

#[utoipa::path(
    get,
    path = "/oauth/jwks",
    tag = "oauth",
    operation_id = "get_jwks",
    summary = "The signing keys' public JWK Set.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The JWK Set.", body = Object, content_type = "application/jwk-set+json")),
    security(()),
)]
async fn get_jwks(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let keys = super::signing_keys(&state)?;
    let jwks = keys.jwks().await?;
    let cache_control = format!("public, max-age={}", jwks.max_age.as_secs());
    Ok((
        [(header::CONTENT_TYPE, JWK_SET_JSON.to_owned()), (header::CACHE_CONTROL, cache_control)],
        jwks.document.to_string(),
    )
        .into_response())
}
