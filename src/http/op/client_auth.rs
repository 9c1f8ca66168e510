//! Reading a token request's client credentials (RFC 6749 2.3.1, RFC 7521/7523): the
//! `Authorization: Basic` header and the `client_*` form parameters. The rules (which method,
//! whether it holds) are the service's: [`crate::service::op::clients::Clients::authenticate`].

use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::Deserialize;

use crate::service::op::clients::{ClientAuthError, ClientCredentials};

/// The client parameters of a token (or introspection, revocation) request body; flatten it
/// into the endpoint's form (`#[serde(flatten)]`).
#[derive(Clone, Default, Deserialize)]
pub struct ClientAuthForm {
    /// `client_id`.
    pub client_id: Option<String>,
    /// `client_secret`.
    pub client_secret: Option<String>,
    /// `client_assertion_type`.
    pub client_assertion_type: Option<String>,
    /// `client_assertion`.
    pub client_assertion: Option<String>,
}

crate::debug_redacted!(ClientAuthForm {
    shown: [client_id, client_assertion_type],
    secret: [client_secret, client_assertion],
});

/// The client credentials of a request: `Authorization: Basic` (once; its user and password are
/// form-urlencoded, RFC 6749 2.3.1) and the form's `client_*` parameters. Another scheme in
/// `Authorization` is not a client credential and is ignored; a repeated header is
/// `invalid_request`, a malformed `Basic` `invalid_client`. Blank parameters count as absent.
pub fn client_credentials(headers: &HeaderMap, form: ClientAuthForm) -> Result<ClientCredentials, ClientAuthError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(ClientAuthError::InvalidRequest("the Authorization header is sent more than once"));
        }
        // The scheme first, on the raw bytes: only a `Basic` value that does not decode is a
        // failed client authentication; another scheme's value, whatever its bytes, is ignored.
        (Some(value), None) => {
            let bytes = value.as_bytes();
            let (scheme, rest) = bytes.split_at(bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len()));
            if scheme.eq_ignore_ascii_case(b"basic") {
                let encoded = std::str::from_utf8(rest).map_err(|_| malformed())?;
                Some(decode_basic(encoded.trim())?)
            } else {
                None
            }
        }
    };
    let present = |value: Option<String>| value.filter(|v| !v.is_empty());
    Ok(ClientCredentials {
        basic,
        client_id: present(form.client_id),
        client_secret: present(form.client_secret),
        client_assertion_type: present(form.client_assertion_type),
        client_assertion: present(form.client_assertion),
    })
}

/// Basic credentials that do not decode: the client tried that scheme and failed, which RFC 6749
/// 5.2 answers `invalid_client` (401, with the scheme's challenge), not `invalid_request`.
fn malformed() -> ClientAuthError {
    ClientAuthError::InvalidClient(
        "the Basic credentials are malformed: base64 of the form-urlencoded client id, ':', and secret",
    )
}

/// Decodes the base64 of `Basic`, splits it at the first `:`, and form-urlencoded-decodes both
/// halves (`%XX` and `+` for a space).
pub fn decode_basic(encoded: &str) -> Result<(String, String), ClientAuthError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let (id, secret) = text.split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id).ok_or_else(malformed)?;
    let secret = form_decode(secret).ok_or_else(malformed)?;
    if id.is_empty() {
        return Err(malformed());
    }
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte; a
/// `%` not followed by two hex digits is kept as it is. `None` when the bytes are not UTF-8.
fn form_decode(value: &str) -> Option<String> {
    let hex = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_form_s_secret_and_assertion_stay_out_of_debug() {
        let form = ClientAuthForm {
            client_id: Some("app".into()),
            client_secret: Some("secret-value".into()),
            client_assertion: Some("assertion-value".into()),
            ..ClientAuthForm::default()
        };
        let debug = format!("{form:?}");
        assert!(debug.contains("app") && !debug.contains("secret-value") && !debug.contains("assertion-value"));
    }

    fn basic(user_and_password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(user_and_password)
    }

    #[test]
    fn basic_credentials_are_form_urlencoded() {
        assert_eq!(decode_basic(&basic("app:s3cret")).unwrap(), ("app".into(), "s3cret".into()));
        // RFC 6749 2.3.1: both halves are form-urlencoded, so a ':' in the secret is %3A.
        assert_eq!(decode_basic(&basic("my%20app:a%3Ab+c%2B")).unwrap(), ("my app".into(), "a:b c+".into()));
        // A raw ':' in the secret stays in the secret (split at the first one).
        assert_eq!(decode_basic(&basic("app:a:b")).unwrap(), ("app".into(), "a:b".into()));
        // A stray '%' is kept.
        assert_eq!(decode_basic(&basic("app:100%")).unwrap(), ("app".into(), "100%".into()));
        assert_eq!(decode_basic(&basic("app:%4")).unwrap(), ("app".into(), "%4".into()));
        assert_eq!(decode_basic(&basic("%C3%A9:x")).unwrap(), ("é".into(), "x".into()));
        assert_eq!(decode_basic(&basic("app:")).unwrap(), ("app".into(), String::new()));
        for bad in [basic("no-colon"), basic(":secret"), "not base64!".into(), basic("%FF:x")] {
            assert_eq!(decode_basic(&bad).unwrap_err().oauth_error(), "invalid_client", "{bad}");
        }
    }

    #[test]
    fn the_header_is_read_once_and_other_schemes_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {}", basic("app:pw"))).unwrap());
        let form = ClientAuthForm { client_id: Some(String::new()), ..Default::default() };
        let creds = client_credentials(&headers, form).unwrap();
        assert_eq!(creds.basic, Some(("app".into(), "pw".into())));
        assert_eq!(creds.client_id, None, "a blank parameter is absent");
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        assert_eq!(
            client_credentials(&headers, ClientAuthForm::default()).unwrap_err().oauth_error(),
            "invalid_request"
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(client_credentials(&bearer, ClientAuthForm::default()).unwrap().basic, None);
        // Another scheme's value is ignored whatever its bytes; a `Basic` one must decode.
        let mut odd = HeaderMap::new();
        odd.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xe9t\xe9").unwrap());
        assert_eq!(client_credentials(&odd, ClientAuthForm::default()).unwrap().basic, None);
        odd.insert(header::AUTHORIZATION, HeaderValue::from_bytes(b"basic \xe9t\xe9").unwrap());
        let refused = client_credentials(&odd, ClientAuthForm::default()).unwrap_err();
        assert_eq!(refused.oauth_error(), "invalid_client");
        odd.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic"));
        assert_eq!(client_credentials(&odd, ClientAuthForm::default()).unwrap_err().oauth_error(), "invalid_client");
    }
}
