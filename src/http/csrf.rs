//! CSRF protection for the pages' forms, and for the JSON API a browser session may call.
//!
//! Every form that changes something posts a `csrf` field: the token of the browser's session,
//! `base64url(SHA-256("tessera-csrf-v1" ‖ 0 ‖ session cookie value))`. Only the browser holds
//! the cookie value (the server keeps its SHA-256 under another hash input), and the cookie is
//! `HttpOnly`, so another site can neither read nor compute the token; it changes with every
//! sign-in and dies with the session, and needs no storage. The check compares in constant
//! time, and also refuses a request the browser marks as cross-site (`Sec-Fetch-Site`), on top
//! of the cookies' `SameSite=Lax`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::credentials::cookie;
use super::problem::ApiError;
use crate::crypto::{constant_time_eq, sha256_base64url};
use crate::error::ErrorCode;

/// The name of the form field.
pub const FIELD: &str = "csrf";

/// The CSRF token of a session, from its cookie value.
pub fn token(session_cookie: &str) -> String {
    let mut input = b"tessera-csrf-v1\0".to_vec();
    input.extend_from_slice(session_cookie.as_bytes());
    sha256_base64url(&input)
}

/// Checks a form post: sent from this site, carrying the session's token.
pub fn check(headers: &HeaderMap, session_cookie: &str, sent: Option<&str>) -> Result<(), ApiError> {
    from_this_origin(headers)?;
    let Some(sent) = sent else { return Err(refused()) };
    if constant_time_eq(sent.as_bytes(), token(session_cookie).as_bytes()) { Ok(()) } else { Err(refused()) }
}

/// Where a browser says a request came from (`Sec-Fetch-Site`: `same-origin`, `same-site`,
/// `cross-site` or `none`); `None` from clients that say nothing (not browsers, or old ones).
pub fn fetch_site(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get("sec-fetch-site").map(|site| site.as_bytes())
}

/// Whether a request may have been sent by one of this origin's own pages: a browser says
/// `Sec-Fetch-Site: same-origin`, or says nothing (an old one, which could never say it, and
/// must not be asked at every step). Not another site, not a sibling host, not a link opened
/// from a mail or chat app or the address bar (`none`).
pub fn from_our_pages(headers: &HeaderMap) -> bool {
    matches!(fetch_site(headers), None | Some(b"same-origin"))
}

/// Refuses a request that a browser says came from another origin (`Sec-Fetch-Site` other than
/// `same-origin` or `none`); clients that are not browsers send no such header.
fn from_this_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    match fetch_site(headers) {
        Some(site) if !matches!(site, b"same-origin" | b"none") => Err(refused()),
        _ => Ok(()),
    }
}

/// Whether a request without `Sec-Fetch-Site` names an origin other than `ours` (that of
/// `auth.public_url`; nothing is known without it): browsers without Fetch Metadata (Safari
/// before 16.4) still send `Origin` on a change, and `null` from a sandboxed or privacy-bound
/// page. Clients that are not browsers send neither header.
fn names_another_origin(headers: &HeaderMap, ours: Option<&str>) -> bool {
    if headers.contains_key("sec-fetch-site") {
        return false;
    }
    match (headers.get(header::ORIGIN), ours) {
        (Some(sent), Some(ours)) => sent.as_bytes() != ours.as_bytes(),
        _ => false,
    }
}

/// [`from_this_origin`], and for a browser that sends no `Sec-Fetch-Site`, the `Origin` it names
/// against `ours` (see [`names_another_origin`]): the check of a change made with the session
/// cookie but without a form's CSRF token.
pub fn sent_from_this_origin(headers: &HeaderMap, ours: Option<&str>) -> Result<(), ApiError> {
    from_this_origin(headers)?;
    if names_another_origin(headers, ours) { Err(refused()) } else { Ok(()) }
}

/// Middleware for the JSON API that a browser session may call (`/v1/me…`, `/v1/teams/…`): a
/// request that changes something (any method but `GET`, `HEAD` and `OPTIONS`), carries the
/// session cookie and is marked by the browser as sent from another origin is refused with 403
/// `csrf_failed`. `SameSite=Lax` keeps the cookie off cross-site posts but not off those from a
/// sibling subdomain (same site, another origin), which a form or a `fetch` without a preflight
/// (a bodyless or `text/plain` POST) can send; Tessera's own pages are same-origin, and clients
/// that are not browsers send no `Sec-Fetch-Site`. A browser that sends no `Sec-Fetch-Site` is
/// judged by its `Origin` instead (see [`names_another_origin`]).
pub async fn cookie_changes_from_this_origin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // Reads (`GET /v1/me`, the hot path) pass without a look at the cookies.
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && sent_from_this_origin(request.headers(), state.flows.public_origin().as_deref()).is_err() {
        // A repeated cookie is the handler's to refuse (400 `ambiguous_credentials`); here it
        // counts as present.
        let with_cookie = cookie(request.headers(), state.cookies.session()).map_or(true, |found| found.is_some());
        if with_cookie {
            return ApiError::new(
                ErrorCode::CsrfFailed,
                "a change sent with the session cookie from a page of another origin is refused; send it from \
                 this origin, or with a bearer token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn refused() -> ApiError {
    ApiError::new(ErrorCode::CsrfFailed, "the form is from an old page or another site; reload it")
}

/// The fields of a form body (`application/x-www-form-urlencoded`).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The one value of a field, if sent exactly once.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut values = fields.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_sessions_own_token_from_this_site_passes() {
        let good = token("cookie-a");
        assert_eq!(good.len(), 43);
        assert_ne!(good, token("cookie-b"));
        let mut headers = HeaderMap::new();
        assert!(check(&headers, "cookie-a", Some(&good)).is_ok());
        assert!(check(&headers, "cookie-b", Some(&good)).is_err());
        assert!(check(&headers, "cookie-a", None).is_err());
        assert!(check(&headers, "cookie-a", Some("")).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check(&headers, "cookie-a", Some(&good)).is_ok());
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(check(&headers, "cookie-a", Some(&good)).unwrap_err().code(), ErrorCode::CsrfFailed);
    }

    #[test]
    fn a_repeated_field_counts_as_missing() {
        let fields = form_fields(b"csrf=a&csrf=b&x=1");
        assert_eq!(field(&fields, "csrf"), None);
        assert_eq!(field(&fields, "x"), Some("1"));
    }
}
