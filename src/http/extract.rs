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
        JsonRejection::JsonDataError(e) => ApiError::new(ErrorCode::InvalidRequest, e.body_text()),
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
