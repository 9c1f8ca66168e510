//! Errors as clients see them: RFC 9457 `application/problem+json` bodies carrying a stable
//! `code` from [`ErrorCode`]. Bodies never contain SQL, constraint names, stack traces or
//! secrets; the cause of a 5xx is logged once, here, and never sent.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub use crate::error::INVALID_TOKEN_CHALLENGE;
use crate::error::{Chain, ErrorCode, PublicError};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    status: Option<StatusCode>,
    detail: String,
    extensions: Map<String, Value>,
    www_authenticate: Option<HeaderValue>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl ApiError {
    /// An error with a code and a detail message that says what to fix.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, status: None, detail: detail.into(), extensions: Map::new(), www_authenticate: None, source: None }
    }

    /// Names the request field at fault (the `field` member of the body).
    pub fn field(self, field: &str) -> Self {
        self.extension("field", field)
    }

    /// Adds a member to the body.
    pub fn extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Answers with `status` instead of the code's own. Used for one case only: every refused
    /// bearer token is a 401 (RFC 6750 `invalid_token`), whichever code explains why.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the `WWW-Authenticate` challenge sent with a 401.
    pub fn challenge(mut self, value: &'static str) -> Self {
        self.www_authenticate = Some(HeaderValue::from_static(value));
        self
    }

    /// Keeps the underlying cause for the log.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The public code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The status, code, detail and body members, for an HTML page. Logged here like in
    /// `into_response`, since the page replaces it.
    pub fn describe(self) -> Described {
        let status = self.log();
        let challenge = challenge_of(status, self.www_authenticate);
        Described { status, code: self.code, detail: self.detail, extensions: self.extensions, challenge }
    }

    /// Logs the error as the response is made, at its code's level (see
    /// [`ErrorCode::log_level`]): the cause chain of a 5xx at ERROR (the only place a cause is
    /// ever written), refusals of credentials and sign-ins at INFO with their code only, anything
    /// else at DEBUG. Returns the status.
    fn log(&self) -> StatusCode {
        let code = self.code.as_str();
        match self.code.log_level_now() {
            tracing::Level::ERROR => match &self.source {
                Some(source) => tracing::error!(code, error = %Chain(source.as_ref()), "request failed"),
                None => tracing::error!(code, "request failed"),
            },
            tracing::Level::INFO => tracing::info!(code, "request refused"),
            _ => tracing::debug!(code, "request refused"),
        }
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// An internal error whose cause is logged and not shown.
    pub fn internal(source: impl StdError + Send + Sync + 'static) -> Self {
        Self::new(ErrorCode::InternalError, "an internal error occurred; it has been logged").with_source(source)
    }
}

/// An error as a page shows it (see [`ApiError::describe`]).
#[derive(Debug)]
pub struct Described {
    /// The response status.
    pub status: StatusCode,
    /// The public code.
    pub code: ErrorCode,
    /// The detail (safe to show: a 5xx's is its code's fixed sentence).
    pub detail: String,
    /// The body members, such as `link_url`.
    pub extensions: Map<String, Value>,
    /// The `WWW-Authenticate` challenge a 401 carries (see [`challenge_of`]).
    pub challenge: Option<HeaderValue>,
}

/// The challenge to send: the error's own, or for a 401 without one, `Bearer realm="tessera"` —
/// every 401 carries one (RFC 9110 section 15.5.2), and a bearer token is what every route that
/// can answer 401 accepts.
pub fn challenge_of(status: StatusCode, own: Option<HeaderValue>) -> Option<HeaderValue> {
    own.or_else(|| (status == StatusCode::UNAUTHORIZED).then(|| HeaderValue::from_static("Bearer realm=\"tessera\"")))
}

impl Described {
    /// A string member of the body.
    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions.get(key).and_then(Value::as_str)
    }
}

/// The one conversion from service and store errors: their code, their safe detail and body
/// members, and, for a 5xx, the error itself as the logged cause.
impl<E: PublicError> From<E> for ApiError {
    fn from(error: E) -> Self {
        let code = error.code();
        let status = error.status();
        let mut api = ApiError::new(code, error.detail());
        api.extensions.extend(error.extensions().into_iter().map(|(key, value)| (key.to_owned(), value)));
        api.www_authenticate = error.challenge().map(HeaderValue::from_static);
        if status != code.status() {
            api.status = Some(status);
        }
        if status.is_server_error() {
            api.source = Some(Box::new(error));
        }
        api
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.log();
        let mut body = json!({
            "type": format!("urn:tessera:problem:{}", self.code.as_str()),
            "title": self.code.title(),
            "status": status.as_u16(),
            "detail": self.detail,
            "code": self.code.as_str(),
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extensions);
        }
        let mut response = (status, body.to_string()).into_response();
        // For the layers the answer goes through (the audit of an admin change that failed).
        response.extensions_mut().insert(self.code);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = challenge_of(status, self.www_authenticate) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::validation::ValidateError;
    use crate::telemetry::capture::capture;
    use crate::upstream::tokens::TokenError;

    fn logged_at_info(render: impl FnOnce()) -> String {
        let logs = capture();
        render();
        logs.text()
    }

    #[test]
    fn refused_tokens_and_sign_ins_are_logged_at_info_with_their_code_only() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl ada@example.com";
        for code in [ErrorCode::SignatureInvalid, ErrorCode::TokenExpired, ErrorCode::InvalidCredentials] {
            let log = logged_at_info(|| {
                let _ = ApiError::new(code, format!("refused {secret}"))
                    .with_status(StatusCode::UNAUTHORIZED)
                    .into_response();
            });
            assert!(log.contains(" INFO ") && log.contains(code.as_str()), "{log}");
            assert!(!log.contains("eyJ") && !log.contains("ada@"), "nothing the client sent is logged: {log}");
        }
        for code in [ErrorCode::InvalidState, ErrorCode::ProviderDenied, ErrorCode::InvalidIdToken] {
            // Browsers get an HTML page, through `describe`: logged all the same.
            let log = logged_at_info(|| {
                let _ = ApiError::new(code, secret).describe();
            });
            assert!(log.contains(" INFO ") && log.contains(code.as_str()), "{log}");
            assert!(!log.contains("eyJ"), "{log}");
        }
        for code in [ErrorCode::NotFound, ErrorCode::MissingField, ErrorCode::MissingCredentials] {
            let log = logged_at_info(|| {
                let _ = ApiError::new(code, "other 4xx").into_response();
            });
            assert!(log.is_empty(), "{} stays at debug: {log}", code.as_str());
        }
        let log = logged_at_info(|| {
            let _ = ApiError::internal(std::io::Error::other("disk on fire")).into_response();
        });
        assert!(log.contains("ERROR") && log.contains("disk on fire"), "{log}");
        let log = logged_at_info(|| {
            let _ = ApiError::from(ValidateError::Token(TokenError::IssuerUnavailable)).into_response();
        });
        assert!(log.is_empty(), "an issuer outage is logged by its key cache, not per request: {log}");
    }

    #[test]
    fn an_outage_is_logged_at_error_once_in_a_while_not_per_request() {
        for code in [ErrorCode::StoreUnavailable, ErrorCode::ProviderUnavailable] {
            let log = logged_at_info(|| {
                for _ in 0..5 {
                    let _ = ApiError::new(code, "down").into_response();
                }
            });
            assert!(log.matches("ERROR").count() <= 1, "{}: {log}", code.as_str());
        }
        // Other 5xx are logged each time.
        let log = logged_at_info(|| {
            for _ in 0..3 {
                let _ = ApiError::internal(std::io::Error::other("disk on fire")).into_response();
            }
        });
        assert_eq!(log.matches("ERROR").count(), 3, "{log}");
    }
}
