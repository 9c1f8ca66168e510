//! Extractors that turn every rejection into a problem+json [`ApiError`] with a precise code.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use crate::error::ErrorCode;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body. Syntax errors are `malformed_json`, shape errors `invalid_request`, a body over
/// [`MAX_BODY_BYTES`] `payload_too_large`, a missing JSON content type `unsupported_media_type`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::new(ErrorCode::MalformedJson, "the body is not valid JSON"),
        JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidRequest, without_values(&e.body_text())),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must not exceed {MAX_BODY_BYTES} bytes"))
        }
        other => ApiError::new(ErrorCode::InvalidRequest, other.body_text()),
    }
}

/// A shape error's text without the values it quotes: serde names a refused string (`invalid
/// type: string "…"`) and an unknown enum variant (`` unknown variant `…` ``) verbatim, and such a
/// value may be a secret pasted into the wrong field. The path of the field and what was expected
/// stay.
fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let string = rest.find("string \"").map(|at| (at, "string \"", '"', "a string"));
        let variant = rest.find("unknown variant `").map(|at| (at, "unknown variant `", '`', "an unknown variant"));
        let Some((at, opening, closing, replacement)) = string.into_iter().chain(variant).min_by_key(|found| found.0)
        else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str(replacement);
        // The quoted value ends at the first closing quote not escaped by a backslash (serde
        // quotes strings in Rust's debug form).
        let value = &rest[at + opening.len()..];
        let mut escaped = false;
        let end = value.char_indices().find(|&(_, c)| {
            let closes = c == closing && !escaped;
            escaped = c == '\\' && !escaped;
            closes
        });
        match end {
            Some((end, _)) => rest = &value[end + 1..],
            None => return out,
        }
    }
}

/// A raw body, for routes whose body is optional: a body over [`MAX_BODY_BYTES`] is
/// `payload_too_large`, one that cannot be read (cut off, or stalled past the body-read timeout)
/// `invalid_request` — problem+json either way, like every other error.
#[derive(Debug)]
pub struct ApiBytes(pub axum::body::Bytes);

impl<S> FromRequest<S> for ApiBytes
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(ApiBytes(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body must not exceed {MAX_BODY_BYTES} bytes"),
            )),
            Err(_) => {
                Err(ApiError::new(ErrorCode::InvalidRequest, "the body could not be read: it was cut off or stalled"))
            }
        }
    }
}

/// A form body posted from one of Tessera's pages: like [`ApiBytes`], but a body that is too
/// large or cut off gets the error page (problem+json for a client that does not want HTML).
#[derive(Debug)]
pub struct PageBytes(pub axum::body::Bytes);

impl FromRequest<std::sync::Arc<super::AppState>> for PageBytes {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &std::sync::Arc<super::AppState>) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        match ApiBytes::from_request(req, state).await {
            Ok(ApiBytes(bytes)) => Ok(PageBytes(bytes)),
            Err(error) => Err(state.pages.error(&headers, error)),
        }
    }
}

/// Path parameters, with rejections as `invalid_request`.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()))
    }
}

/// Query parameters, with rejections as `invalid_request`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()))
    }
}

/// A required, non-blank text field of a request.
pub fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, ApiError> {
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => {
            Err(ApiError::new(ErrorCode::MissingField, format!("`{field}` is required and must not be blank"))
                .field(field))
        }
    }
}

/// Parses a team reference from a path segment.
pub(crate) fn parse_team(value: &str) -> Result<crate::domain::TeamRef, ApiError> {
    crate::domain::TeamRef::parse(value).map_err(|e| ApiError::new(crate::error::ErrorCode::InvalidTeam, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::body::Body;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        values: HashMap<String, String>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Env,
    }

    async fn detail_of(body: &str) -> String {
        let request = Request::post("/").header("content-type", "application/json").body(Body::from(body.to_owned()));
        let error = ApiJson::<Shape>::from_request(request.unwrap(), &()).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidRequest);
        error.describe().detail
    }

    #[tokio::test]
    async fn a_refused_value_is_not_echoed_but_its_field_is_named() {
        let detail = detail_of(r#"{"values": "OPENAI_API_KEY=sk-sec\"ret\\"}"#).await;
        assert!(
            detail.contains("values") && detail.contains("a string") && detail.contains("expected a map"),
            "{detail}"
        );
        assert!(!detail.contains("sk-sec") && !detail.contains("ret"), "{detail}");

        let detail = detail_of(r#"{"values": {}, "kind": "sk-live-123"}"#).await;
        assert!(detail.contains("kind") && detail.contains("an unknown variant") && detail.contains("env"), "{detail}");
        assert!(!detail.contains("sk-live"), "{detail}");

        let detail = detail_of(r#"{"values": {"A": 5}}"#).await;
        assert!(detail.contains("values.A") && detail.contains("integer `5`"), "numbers stay: {detail}");
    }

    #[test]
    fn only_quoted_values_are_cut() {
        assert_eq!(without_values("plain text"), "plain text");
        assert_eq!(
            without_values(r#"a: invalid type: string "x\"y", expected z"#),
            "a: invalid type: a string, expected z"
        );
        assert_eq!(without_values(r#"two: string "1" and string "2"!"#), "two: a string and a string!");
        assert_eq!(without_values("unknown variant `v`, expected `env`"), "an unknown variant, expected `env`");
        assert_eq!(without_values(r#"cut: string "never closed"#), "cut: a string");
    }
}
