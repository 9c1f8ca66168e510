//! The one credential of a request.
//!
//! Tokens come in `Authorization: Bearer <token>`, `X-Admin-Token: <token>` or
//! `X-User-Token: <token>`; browsers bring the session cookie (and, during a sign-in, the sign-in
//! cookie). Proxies and frameworks disagree about which copy of a repeated header counts — the
//! first, the last, or all of them joined — so a request whose credential is not unambiguous is
//! refused with 400 `ambiguous_credentials` before anything else happens:
//!
//! - any of the three headers appears more than once;
//! - two of them carry different tokens (the same token in two of them is fine), or a non-Bearer
//!   `Authorization` is sent beside another credential header;
//! - a Tessera cookie name appears more than once, in one `Cookie` header or across several.
//!
//! Every place that reads a credential goes through [`Credentials::read`] or [`cookie`].

use axum::http::{HeaderMap, HeaderName, header};

use super::problem::ApiError;
use crate::error::ErrorCode;

const ADMIN_TOKEN: HeaderName = HeaderName::from_static("x-admin-token");
const USER_TOKEN: HeaderName = HeaderName::from_static("x-user-token");

/// The credential headers of a request, checked for ambiguity. Its `Debug` hides the token.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'h> {
    /// The one token presented, if any.
    token: Option<&'h str>,
    /// Which headers carried it.
    in_authorization: bool,
    in_admin_header: bool,
    in_user_header: bool,
}

crate::debug_redacted!(Credentials<'h> {
    shown: [in_authorization, in_admin_header, in_user_header],
    secret: [token],
});

/// One credential header's value.
enum Value<'h> {
    /// Absent, blank, or an `Authorization` without a Bearer token.
    None,
    /// `Authorization` with another scheme (`Basic …`): not a token Tessera reads.
    OtherScheme,
    /// A token.
    Token(&'h str),
}

impl<'h> Credentials<'h> {
    /// Reads `Authorization: Bearer`, `X-Admin-Token` and `X-User-Token`, refusing duplicates and
    /// disagreements (400 `ambiguous_credentials`) and values that are not visible ASCII (400
    /// `invalid_request`).
    pub fn read(headers: &'h HeaderMap) -> Result<Self, ApiError> {
        let authorization = match single(headers, &header::AUTHORIZATION, "Authorization")? {
            None => Value::None,
            Some(value) => {
                bearer(value).map_or(Value::OtherScheme, |t| if t.is_empty() { Value::None } else { Value::Token(t) })
            }
        };
        let admin = single(headers, &ADMIN_TOKEN, "X-Admin-Token")?.map_or(Value::None, plain);
        let user = single(headers, &USER_TOKEN, "X-User-Token")?.map_or(Value::None, plain);

        let mut credentials = Credentials::default();
        let mut others = 0;
        for (value, flag) in [
            (&authorization, &mut credentials.in_authorization),
            (&admin, &mut credentials.in_admin_header),
            (&user, &mut credentials.in_user_header),
        ] {
            match *value {
                Value::None => {}
                Value::OtherScheme => others += 1,
                Value::Token(token) => {
                    if credentials.token.is_some_and(|seen| seen != token) {
                        return Err(ambiguous(
                            "the credential headers carry different tokens; send the token in one header only",
                        ));
                    }
                    credentials.token = Some(token);
                    *flag = true;
                }
            }
        }
        if others > 0 && credentials.token.is_some() {
            return Err(ambiguous(
                "`Authorization` uses another scheme than Bearer beside a token header; send the token in one header only",
            ));
        }
        Ok(credentials)
    }

    /// The token to check against the admin tokens: from `Authorization: Bearer` or
    /// `X-Admin-Token` (never from `X-User-Token`).
    pub fn admin_token(&self) -> Option<&'h str> {
        self.token.filter(|_| self.in_authorization || self.in_admin_header)
    }

    /// The token of `X-Admin-Token` itself: meant as an admin token, whatever the route.
    pub fn admin_header_token(&self) -> Option<&'h str> {
        self.token.filter(|_| self.in_admin_header)
    }

    /// The upstream user token: from `Authorization: Bearer` or `X-User-Token` (never from
    /// `X-Admin-Token`).
    pub fn user_token(&self) -> Option<&'h str> {
        self.token.filter(|_| self.in_authorization || self.in_user_header)
    }
}

/// The value of the cookie `name` (blank counts as absent); 400 `ambiguous_credentials` when the
/// name appears more than once, in one `Cookie` header or across several.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    let mut found = None;
    // Bytes, not text: a header that is not valid text must not hide a second copy of the name.
    let pairs =
        headers.get_all(header::COOKIE).iter().flat_map(|value| value.as_bytes().split(|b| *b == b';')).filter_map(
            |pair| {
                let at = pair.iter().position(|b| *b == b'=')?;
                Some((pair[..at].trim_ascii(), pair[at + 1..].trim_ascii()))
            },
        );
    for (key, value) in pairs {
        if key != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(ambiguous(format!(
                "the cookie `{name}` is sent more than once; delete this site's cookies and sign in again"
            )));
        }
        // A value that is not text is no credential of ours: it counts as absent.
        found = Some(std::str::from_utf8(value).map_or("", |value| value.trim_matches('"')));
    }
    Ok(found.filter(|value| !value.is_empty()))
}

/// The value of a header that must not be repeated.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName, shown: &str) -> Result<Option<&'h str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ambiguous(format!("the `{shown}` header is sent more than once; send it once")));
    }
    // Malformed rather than refused: a 400, so that no 401 goes out without its challenge.
    let value = first
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("the `{shown}` header must be visible ASCII")))?;
    Ok(Some(value.trim()))
}

/// The token of a `Bearer` credential; `None` for another scheme.
fn bearer(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        None if value.eq_ignore_ascii_case("bearer") => Some(""),
        _ => None,
    }
}

fn plain(value: &str) -> Value<'_> {
    if value.is_empty() { Value::None } else { Value::Token(value) }
}

fn ambiguous(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::AmbiguousCredentials, detail)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        headers
    }

    fn code(result: Result<Credentials<'_>, ApiError>) -> ErrorCode {
        result.expect_err("refused").code()
    }

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        let h = headers(&[("authorization", "bearer  abc ")]);
        let read = Credentials::read(&h).unwrap();
        assert_eq!((read.admin_token(), read.user_token()), (Some("abc"), Some("abc")));
        for value in ["Basic abc", "Bearer", "Bearer   "] {
            let h = headers(&[("authorization", value)]);
            assert_eq!(Credentials::read(&h).unwrap().user_token(), None, "{value}");
        }
    }

    #[test]
    fn each_header_is_a_credential_of_its_own_kind() {
        let h = headers(&[("x-admin-token", " a ")]);
        let read = Credentials::read(&h).unwrap();
        assert_eq!((read.admin_token(), read.user_token()), (Some("a"), None));
        let h = headers(&[("x-user-token", "u")]);
        let read = Credentials::read(&h).unwrap();
        assert_eq!((read.admin_token(), read.user_token()), (None, Some("u")));
        let h = headers(&[("authorization", "Bearer t"), ("x-user-token", "t"), ("x-admin-token", "t")]);
        assert_eq!(Credentials::read(&h).unwrap().user_token(), Some("t"), "the same token twice is no ambiguity");
        let h = headers(&[("x-admin-token", "")]);
        assert_eq!(Credentials::read(&h).unwrap().admin_token(), None);
    }

    #[test]
    fn repeated_or_disagreeing_credentials_are_refused() {
        for pairs in [
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")][..],
            &[("authorization", "Bearer a"), ("authorization", "Bearer a")],
            &[("x-admin-token", "a"), ("x-admin-token", "b")],
            &[("x-user-token", "a"), ("x-user-token", "a")],
            &[("authorization", "Basic a"), ("authorization", "Bearer a")],
            &[("authorization", "Bearer a"), ("x-user-token", "b")],
            &[("authorization", "Bearer a"), ("x-admin-token", "b")],
            &[("x-admin-token", "a"), ("x-user-token", "b")],
            &[("authorization", "Basic YTpi"), ("x-admin-token", "a")],
        ] {
            assert_eq!(code(Credentials::read(&headers(pairs))), ErrorCode::AmbiguousCredentials, "{pairs:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-admin-token", axum::http::HeaderValue::from_bytes(b"t\xff").unwrap());
        assert_eq!(
            code(Credentials::read(&h)),
            ErrorCode::InvalidRequest,
            "malformed, so 400: a 401 would need its challenge"
        );
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header_but_only_once() {
        let h = headers(&[("cookie", "a=1; __Host-tessera_session=abc"), ("cookie", "tessera_login=xyz")]);
        assert_eq!(cookie(&h, "__Host-tessera_session").unwrap(), Some("abc"));
        assert_eq!(cookie(&h, "tessera_login").unwrap(), Some("xyz"));
        assert_eq!(cookie(&h, "tessera_session").unwrap(), None);
        let h = headers(&[("cookie", "s=; t=\"q\"")]);
        assert_eq!(cookie(&h, "s").unwrap(), None);
        assert_eq!(cookie(&h, "t").unwrap(), Some("q"));

        for pairs in [&[("cookie", "s=1; s=2")][..], &[("cookie", "s=1"), ("cookie", "s=1")], &[("cookie", "s=1; s=")]]
        {
            let refused = cookie(&headers(pairs), "s").expect_err("refused");
            assert_eq!(refused.code(), ErrorCode::AmbiguousCredentials, "{pairs:?}");
        }
    }

    #[test]
    fn a_cookie_header_that_is_not_text_cannot_hide_a_second_session_cookie() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("__Host-tessera_session=A"));
        headers.append(header::COOKIE, HeaderValue::from_bytes(b"__Host-tessera_session=B; x=\xe9").unwrap());
        let refused = cookie(&headers, "__Host-tessera_session").unwrap_err();
        assert_eq!(refused.code(), ErrorCode::AmbiguousCredentials);

        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_bytes(b"__Host-tessera_session=\xe9\xe9").unwrap());
        assert_eq!(cookie(&headers, "__Host-tessera_session").unwrap(), None, "not text: no credential");
    }

    #[test]
    fn a_credential_header_that_is_not_visible_ascii_is_a_bad_request_not_a_bare_401() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xe9").unwrap());
        let refused = Credentials::read(&headers).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidRequest);
    }
}
