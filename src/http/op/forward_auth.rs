//! Forward-auth for reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Caddy
//! `forward_auth`): `GET /auth/verify` answers 200 with the user in
//! `X-Tessera-User-Id`, `X-Tessera-Email`, `X-Tessera-Email-Verified` and `X-Tessera-Teams` (all
//! always present, empty when unknown, so that a proxy that replaces them never passes a client's
//! own copies through; Caddy skips empty ones, so README has it remove them first) for a
//! live Tessera session cookie or a valid Tessera access token issued for the protected app, and
//! 401 otherwise (also for a credential sent twice, or a request carrying one of those headers
//! itself, under any spelling: `error="invalid_request"`).
//!
//! A token counts only when the proxy names the app it protects (`?audience=`, an `aud` of the
//! token: a client id or a registered resource): a token one app obtained is not a key to
//! every other app behind the proxy. Without `audience`, only session cookies count.
//!
//! A browser turned away is sent to sign in and back to where it was going, when the proxy says
//! where that was (`X-Original-URL`, or `X-Forwarded-Proto`, `-Host` and `-Uri`) and it is on an
//! allowed origin: the 401 names the sign-in URL in `X-Tessera-Sign-In` (for nginx, which turns it
//! into its own redirect), and with `?redirect=true` (Traefik, Caddy, which pass a refusal on as
//! it is) a browser's navigation gets a 302 to it instead.
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
const SIGN_IN: HeaderName = HeaderName::from_static("x-tessera-sign-in");

/// Whether the request carries a copy of an identity header of its own, not empty, under its
/// name or one spelt with underscores (`X_Tessera_User_Id`): a proxy replaces or removes the name
/// it was told, and an app server that maps both spellings to one variable (CGI, PHP, WSGI, Rack)
/// may read the client's. Only a client forging an identity sends one — or a second check behind
/// a first one that set them, which README asks to strip them first.
fn forges_identity(headers: &HeaderMap) -> bool {
    // Names come lower-cased; compared byte by byte, `_` standing for `-` (no allocation: this
    // runs for every header of every request the proxy checks).
    let spelt_as = |name: &str, ours: &HeaderName| {
        let ours = ours.as_str();
        name.len() == ours.len() && name.bytes().zip(ours.bytes()).all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    headers.iter().any(|(name, value)| {
        !value.is_empty()
            && [&USER_ID, &EMAIL, &EMAIL_VERIFIED, &TEAMS].iter().any(|ours| spelt_as(name.as_str(), ours))
    })
}

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/auth/verify", get(verify))
}

fn unauthorized() -> Response {
    challenge(r#"Bearer realm="tessera""#)
}

/// The refusal of a token that was sent and does not count here (RFC 6750 section 3.1): so that
/// a client behind the proxy can tell a refused token from a missing one.
fn token_refused() -> Response {
    challenge(r#"Bearer realm="tessera", error="invalid_token""#)
}

fn challenge(value: &'static str) -> Response {
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The refusal of a request that carried no valid session. A browser's navigation is told where
/// to sign in: in a 401's `X-Tessera-Sign-In` (nginx turns it into a redirect), or, when the proxy
/// asks for redirects (`redirect=true`), by a 302 there. Any other request (an API call, a form's
/// `POST`) gets the plain 401, which a script can act on, not a sign-in page.
fn sign_in_first(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Response {
    if !navigation(headers) {
        return unauthorized();
    }
    let Some(url) = sign_in_url(state, headers).and_then(|url| HeaderValue::from_str(&url).ok()) else {
        return unauthorized();
    };
    if param(query, "redirect").as_deref() == Some("true") {
        let mut response = StatusCode::FOUND.into_response();
        response.headers_mut().insert(header::LOCATION, url);
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let mut response = unauthorized();
    response.headers_mut().insert(SIGN_IN, url);
    response
}

/// The longest sign-in URL `X-Tessera-Sign-In` or the redirect carries: with the rest of a 401's
/// headers it stays within nginx's default `proxy_buffer_size` (4 KiB), past which nginx would
/// answer the browser 500 instead.
const MAX_SIGN_IN_URL: usize = 3000;

/// `/auth/login` with a `return_to` of the URL the browser asked the proxy for, when that is on
/// Tessera's own origin or an allowed one (`auth.return_to_origins`) and on a host (and scheme:
/// a `Secure` cookie goes over `https`, or to a loopback host) the session cookie reaches: elsewhere the browser, signed in, would come back without the cookie, be sent
/// to sign in again, and loop. A URL too long to come back
/// to (over 2048 characters, or a sign-in URL over [`MAX_SIGN_IN_URL`] once encoded), or one
/// holding what a `return_to` may not (a backslash in its query), comes back to its path without
/// the query, else to the origin's root: a deep link that cannot be kept still leads to sign-in.
fn sign_in_url(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let original = url::Url::parse(&original_url(headers)?).ok()?;
    if !state.cookies.session_reaches(&original, state.flows.public_host()) {
        return None;
    }
    let own = state.flows.public_origin().is_some_and(|own| own == original.origin().ascii_serialization());
    let origin = if own { String::new() } else { original.origin().ascii_serialization() };
    let query = original.query().map(|q| format!("?{q}")).unwrap_or_default();
    let path = original.path();
    [format!("{origin}{path}{query}"), format!("{origin}{path}"), format!("{origin}/")].into_iter().find_map(
        |candidate| {
            let return_to = state.sign_in.check_return_to(&candidate).ok()?;
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("return_to", return_to.as_str())
                .finish();
            Some(format!("{}/auth/login?{query}", state.flows.public_url())).filter(|url| url.len() <= MAX_SIGN_IN_URL)
        },
    )
}

/// The URL the browser asked the proxy for: `X-Original-URL` (nginx), else `X-Forwarded-Proto`,
/// `X-Forwarded-Host` and `X-Forwarded-Uri` (Traefik, Caddy); each header once.
fn original_url(headers: &HeaderMap) -> Option<String> {
    let once = |name: &str| once(headers, name);
    if let Some(url) = once("x-original-url") {
        return Some(url.to_owned());
    }
    let (proto, host, uri) = (once("x-forwarded-proto")?, once("x-forwarded-host")?, once("x-forwarded-uri")?);
    uri.starts_with('/').then(|| format!("{proto}://{host}{uri}"))
}

/// Whether the refused request is a browser's navigation (a `GET` or `HEAD` that asks for
/// HTML), which a redirect to a sign-in page serves; an API call is better told 401.
fn navigation(headers: &HeaderMap) -> bool {
    let method = match headers.contains_key("x-forwarded-method") {
        true => once(headers, "x-forwarded-method"),
        false => Some("GET"),
    };
    matches!(method, Some("GET" | "HEAD")) && crate::http::pages::wants_html(headers)
}

/// A header's value when it is sent exactly once (and is text).
fn once<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
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

/// The value of the query parameter `name`, when it is given once and not empty.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    let mut found = url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).filter(|(k, _)| k == name);
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
    summary = "Forward authentication for a reverse proxy: 200 with `X-Tessera-*` headers, or 401 (or 302 to sign in).",
    params(
        ("audience" = Option<String>, Query, description = "The app the proxy protects (a client id or a registered resource): an access token counts only when this is its `aud`."),
        ("redirect" = Option<bool>, Query, description = "`true`: a browser's navigation without a session gets a 302 to sign in (where the proxy reports the URL it asked for) instead of a 401."),
    ),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Allowed (user in headers)."), (status = 302, description = "With `redirect=true`: a browser's navigation without a session, sent to sign in and back."), (status = 401, description = "No valid session or token (`WWW-Authenticate: Bearer realm=\"tessera\"`, with `error=\"invalid_token\"` when a token was sent and refused; no body; for a browser's navigation — a `GET` or `HEAD` asking for HTML — `X-Tessera-Sign-In` names where it signs in, when the proxy reports the URL it asked for).")),
    security(("session" = []), ("bearer" = [])),
)]
async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // Read (and a repeated one refused) even when a token is sent: one credential per request.
    let (credentials, session) = match (Credentials::read(&headers), cookie(&headers, state.cookies.session())) {
        (Ok(credentials), Ok(session)) => (credentials, session),
        // Refused as a 401, the one refusal every proxy passes on as such (nginx turns any
        // other status of its auth request into a 500), with RFC 6750's error for a malformed
        // request. No sign-in is offered: signing in again would not take the copy away.
        (Err(error), _) | (_, Err(error)) => {
            tracing::info!(code = error.code().as_str(), "forward-auth request refused");
            return Ok(challenge(r#"Bearer realm="tessera", error="invalid_request""#));
        }
    };
    // Refused whoever sends it: the app behind might read the copy as the user.
    if forges_identity(&headers) {
        tracing::info!("forward-auth request refused: it carries an identity header of its own");
        return Ok(challenge(r#"Bearer realm="tessera", error="invalid_request""#));
    }
    if let Some(token) = credentials.user_token() {
        let (Some(op), Some(audience)) = (state.op.as_ref(), param(query.as_deref(), "audience")) else {
            return Ok(token_refused());
        };
        // Keys that could not be read are an outage (503), not a refusal of the token.
        return Ok(match op.verify_access(token).await? {
            Some(claims) if claims.gid.is_some() && claims.aud == audience => {
                let teams: Vec<&str> = claims.teams.iter().flatten().map(String::as_str).collect();
                allowed(&claims.sub, claims.email.as_deref().map(|e| (e, claims.email_verified)), &teams)
            }
            _ => token_refused(),
        });
    }
    let Some(session) = session else { return Ok(sign_in_first(&state, &headers, query.as_deref())) };
    Ok(match state.sessions.resolve_profile(session).await? {
        Some(profile) => {
            let teams: Vec<&str> = profile.teams.iter().map(|m| m.team.slug.as_str()).collect();
            let email = profile.user.email.as_deref().map(|e| (e, Some(profile.user.email_verified)));
            allowed(&profile.user.id.to_string(), email, &teams)
        }
        None => sign_in_first(&state, &headers, query.as_deref()),
    })
}
