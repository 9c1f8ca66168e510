//! Forward-auth for reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Caddy
//! `forward_auth`, Envoy ext_authz): `GET /auth/verify` answers 200 with the user in
//! `X-Tessera-User-Id`, `X-Tessera-Email`, `X-Tessera-Email-Verified` and `X-Tessera-Teams` (all
//! always present, empty when unknown, so that a client's own copies never pass through) for a
//! live Tessera session cookie or a valid Tessera access token issued for the protected app, and
//! 401 otherwise.
//!
//! A token counts only when the proxy names the app it protects (`?audience=`, an `aud` of the
//! token: a client id or a registered resource): a token one app obtained is not a key to
//! every other app behind the proxy. Without `audience`, only session cookies count.
//!
//! A session is resolved as for `/v1/me` (from the session cache, or one round trip), so signing
//! out or disabling the user takes effect at once on the instance that did it and within 1 s on
//! the others. An access token is verified locally, with no database read: it counts
//! until it expires (ten minutes by default); use introspection where a revocation must show at
//! once.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::AppState;
use crate::http::credentials::{Credentials, cookie};
use crate::http::problem::ApiError;

const USER_ID: HeaderName = HeaderName::from_static("x-tessera-user-id");
const EMAIL: HeaderName = HeaderName::from_static("x-tessera-email");
const EMAIL_VERIFIED: HeaderName = HeaderName::from_static("x-tessera-email-verified");
const TEAMS: HeaderName = HeaderName::from_static("x-tessera-teams");

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/auth/verify", get(verify))
}

fn unauthorized() -> Response {
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The 200 for `user`; `email` with whether it is verified (an email a provider was not trusted
/// to verify is `false`: an app must not treat it as proof of who the user is).
fn allowed(user: &str, email: Option<(&str, Option<bool>)>, teams: &[&str]) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(USER_ID, value(user));
    headers.insert(EMAIL, value(email.map_or("", |(email, _)| email)));
    let verified = match email.and_then(|(_, verified)| verified) {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
    };
    headers.insert(EMAIL_VERIFIED, HeaderValue::from_static(verified));
    headers.insert(TEAMS, value(&teams.join(",")));
    response
}

/// The `audience` a proxy names, once.
fn audience(query: Option<&str>) -> Option<String> {
    let mut found = url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).filter(|(k, _)| k == "audience");
    match (found.next(), found.next()) {
        (Some((_, value)), None) if !value.is_empty() => Some(value.into_owned()),
        _ => None,
    }
}

#[utoipa::path(
    get,
    path = "/auth/verify",
    tag = "oauth",
    operation_id = "verify",
    summary = "Forward authentication for a reverse proxy: 200 with `X-Tessera-*` headers, or 401.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Allowed (user in headers)."), (status = 401, description = "No valid session or token (`WWW-Authenticate: Bearer`, no body).")),
    security(("session" = []), ("bearer" = [])),
)]
async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let credentials = Credentials::read(&headers)?;
    // Read (and a repeated one refused) even when a token is sent: one credential per request.
    let session = cookie(&headers, state.cookies.session())?;
    if let Some(token) = credentials.user_token() {
        let (Some(op), Some(audience)) = (state.op.as_ref(), audience(query.as_deref())) else {
            return Ok(unauthorized());
        };
        return Ok(match op.verify_access(token).await {
            Some(claims) if claims.gid.is_some() && claims.aud == audience => {
                let teams: Vec<&str> = claims.teams.iter().flatten().map(String::as_str).collect();
                allowed(&claims.sub, claims.email.as_deref().map(|e| (e, claims.email_verified)), &teams)
            }
            _ => unauthorized(),
        });
    }
    let Some(session) = session else { return Ok(unauthorized()) };
    Ok(match state.sessions.resolve_profile(session).await? {
        Some(profile) => {
            let teams: Vec<&str> = profile.teams.iter().map(|m| m.team.slug.as_str()).collect();
            let email = profile.user.email.as_deref().map(|e| (e, Some(profile.user.email_verified)));
            allowed(&profile.user.id.to_string(), email, &teams)
        }
        None => unauthorized(),
    })
}
