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
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType, SEND_JSON));
        }
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        refuse_array(&bytes)?;
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                // The same error without its path, to tell the path from it (see `json_rejection`).
                let inner = serde_json::from_slice::<T>(&bytes).err().map(|e| e.to_string());
                Err(json_rejection(rejection, inner.as_deref()))
            }
        }
    }
}

/// Refuses a body that is a JSON array: every body is an object, and serde would also fill a
/// struct from an array of its fields in order, a shape no client means.
fn refuse_array(bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return Ok(());
    }
    Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => ApiError::new(ErrorCode::InvalidRequest, "the body must be a JSON object"),
        Err(_) => ApiError::new(ErrorCode::MalformedJson, "the body is not valid JSON"),
    })
}

/// Whether the request's content type is JSON as axum's `Json` reads it: `application/json`, or
/// `application/…+json`.
pub fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    content_type_essence(headers).is_some_and(|essence| {
        essence == "application/json" || essence.strip_prefix("application/").is_some_and(|sub| sub.ends_with("+json"))
    })
}

/// The detail of a body sent without a JSON content type.
const SEND_JSON: &str = "send the body as JSON with `Content-Type: application/json`";

/// The answer to a body axum's `Json` refused; `inner`, for a body of the wrong shape, is serde's
/// error without the path axum puts before it.
fn json_rejection(rejection: JsonRejection, inner: Option<&str>) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(_) => ApiError::new(ErrorCode::MalformedJson, "the body is not valid JSON"),
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let text = text.strip_prefix("Failed to deserialize the JSON body into the target type: ").unwrap_or(&text);
            // The path names the field (`values.A`), but a map's keys are the sender's text, as
            // values are (a secret pasted as a key): only segments spelled as field names stay.
            let text = match inner.and_then(|inner| Some((text.strip_suffix(inner)?.strip_suffix(": ")?, inner))) {
                Some((path, inner)) => format!("{}: {inner}", field_path(path)),
                None => text.to_owned(),
            };
            ApiError::new(ErrorCode::InvalidRequest, without_values(&text))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(ErrorCode::UnsupportedMediaType, SEND_JSON),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("the body must not exceed {MAX_BODY_BYTES} bytes"))
        }
        // A body that could not be read (cut off, or stalled past the body-read timeout): said
        // in a fixed sentence, as `ApiBytes` does, not in the transport's own words.
        _ => ApiError::new(ErrorCode::InvalidRequest, UNREADABLE_BODY),
    }
}

/// The request fields whose members are the client's own keys (an env profile's `values`, a
/// browser session's `storage_state`), not the API's field names.
const MAP_FIELDS: [&str; 2] = ["values", "storage_state"];

/// A path of serde's (`values.A`, `redirect_uris[2]`) with each segment that is a map's key shown
/// as `…`: all that follows a [`MAP_FIELDS`] field, as one `…` whatever its spelling (a key may be
/// a secret that looks like a field name, or hold dots), and any segment not spelled as one of
/// the API's field names (snake case).
fn field_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let mut segments = Vec::new();
    for (at, segment) in parts.iter().copied().enumerate() {
        let name = segment.split('[').next().unwrap_or_default();
        let indices = &segment[name.len()..];
        let field = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let indexed = indices.chars().all(|c| c.is_ascii_digit() || c == '[' || c == ']');
        segments.push(if field && indexed { segment } else { "…" });
        if MAP_FIELDS.contains(&name) && at + 1 < parts.len() {
            segments.push("…");
            break;
        }
    }
    segments.join(".")
}

/// The detail of a body that could not be read.
const UNREADABLE_BODY: &str = "the body could not be read: it was cut off or stalled";

/// Whether the request declares its body as JSON (`Content-Type: application/json`, with or
/// without parameters such as `charset`).
pub fn declares_json(headers: &axum::http::HeaderMap) -> bool {
    content_type_essence(headers).is_some_and(|essence| essence == "application/json")
}

/// The request's media type without its parameters, lowercased.
fn content_type_essence(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// The media ranges of the request's `Accept` headers, each with its weight (`q`: 1 when absent,
/// `None` when malformed, for the caller to judge), the type lowercased and without its
/// parameters.
pub fn media_ranges(headers: &axum::http::HeaderMap) -> Vec<(String, Option<f32>)> {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| {
            let mut parts = range.split(';');
            let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|param| param.trim().split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, value)| value.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)));
            (essence, q)
        })
        .filter(|(essence, _)| !essence.is_empty())
        .collect()
}

/// Parses a JSON body read as bytes (an optional body, which [`ApiJson`] cannot take) with the
/// same answers: an array refused, `malformed_json` for text that is not JSON, `invalid_request` (naming the field,
/// quoting no value) for JSON of the wrong shape.
pub fn json_bytes<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    refuse_array(body)?;
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(ErrorCode::InvalidRequest, without_values(&e.to_string())),
        _ => ApiError::new(ErrorCode::MalformedJson, "the body is not valid JSON"),
    })
}

/// A shape error's text without the values it quotes: serde names a refused string (`invalid
/// type: string "…"`), an unknown enum variant (`` unknown variant `…`, expected … ``) and an
/// unknown field (a map's key: a value pasted as the key, say) verbatim, and axum a path segment it cannot parse (`` with value `…` to a … ``); such a value
/// may be a secret pasted into the wrong place. The field's name or path, and what was expected,
/// stay; numbers and booleans are quoted as they are.
pub(crate) fn without_values(text: &str) -> String {
    /// Where a quoted value ends.
    enum Close {
        /// At the first `"` not escaped by a backslash (Rust's debug form, which serde uses for
        /// strings).
        DebugQuote,
        /// At the first of these texts, which follow the value (quoted in backticks without
        /// escaping, so a backtick inside the value must not end it); at the end of the text
        /// when none follows.
        Before(&'static [&'static str]),
    }
    const QUOTED: [(&str, Close, &str); 4] = [
        ("string \"", Close::DebugQuote, "a string"),
        ("unknown variant `", Close::Before(&["`, expected", "`, there are no variants"]), "an unknown variant"),
        ("unknown field `", Close::Before(&["`, expected", "`, there are no fields"]), "an unknown field"),
        ("with value `", Close::Before(&["` to a `"]), "with a value that does not parse"),
    ];
    let text = without_type_names(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    loop {
        let found = QUOTED.iter().filter_map(|quoted| rest.find(quoted.0).map(|at| (at, quoted))).min_by_key(|f| f.0);
        let Some((at, (opening, close, replacement))) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str(replacement);
        let value = &rest[at + opening.len()..];
        let resume = match close {
            Close::DebugQuote => {
                let mut escaped = false;
                value
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map(|(end, _)| end + 1)
            }
            // The text after the value stays, minus the value's closing backtick.
            Close::Before(suffixes) => suffixes.iter().filter_map(|suffix| value.find(suffix)).min().map(|end| end + 1),
        };
        match resume {
            Some(resume) => rest = &value[resume..],
            None => return out,
        }
    }
}

/// A shape error's text without the names of Tessera's own types (serde says `expected struct
/// BootstrapRequest`, and `with 6 elements` for an array in its place): "a JSON object" instead.
fn without_type_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if name_len == 0 {
            out.push_str("struct ");
            rest = after;
            continue;
        }
        out.push_str("a JSON object");
        rest = &after[name_len..];
        // ` with 6 elements`, the struct's field count.
        if let Some(tail) = rest.strip_prefix(" with ")
            && let Some(end) = tail.find(" element")
            && tail[..end].bytes().all(|b| b.is_ascii_digit())
        {
            let word_end = tail[end + 1..].find(|c: char| !c.is_ascii_alphabetic()).map_or(tail.len(), |e| end + 1 + e);
            rest = &tail[word_end..];
        }
    }
    out.push_str(rest);
    out
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
            Err(_) => Err(ApiError::new(ErrorCode::InvalidRequest, UNREADABLE_BODY)),
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
            Err(error) => Err(super::pages::refused(state, &headers, error)),
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
            .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, without_values(&rejection.body_text())))
    }
}

/// Path parameters of a page's route: like [`ApiPath`], but a path that does not parse (a
/// segment that is not UTF-8 once decoded, say) gets the error page.
#[derive(Debug)]
pub struct PagePath<T>(pub T);

impl<T> FromRequestParts<std::sync::Arc<super::AppState>> for PagePath<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &std::sync::Arc<super::AppState>,
    ) -> Result<Self, Self::Rejection> {
        match ApiPath::<T>::from_request_parts(parts, state).await {
            Ok(ApiPath(value)) => Ok(PagePath(value)),
            Err(error) => Err(super::pages::refused(state, &parts.headers, error)),
        }
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

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_uri(&parts.uri)
    }
}

impl<T: DeserializeOwned> ApiQuery<T> {
    /// Parses a request's query, with the same answers as the extractor: for a handler that must
    /// check something else first.
    pub fn from_uri(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::new(ErrorCode::InvalidRequest, without_values(&rejection.body_text())))
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

/// A listing's `limit` query parameter: `default` when absent, else 1 to `max`; anything
/// outside is `invalid_request` rather than a silently different page.
pub fn page_limit<N>(value: Option<N>, default: N, max: N) -> Result<N, ApiError>
where
    N: PartialOrd + From<u8> + std::fmt::Display + Copy,
{
    let limit = value.unwrap_or(default);
    if limit < N::from(1) || limit > max {
        return Err(ApiError::new(ErrorCode::InvalidRequest, format!("`limit` must be 1 to {max}")).field("limit"));
    }
    Ok(limit)
}

/// A listing's `before` query parameter, the `next_before` of a previous page (a positive
/// number): anything else is `invalid_cursor`, not an empty page.
pub fn before_cursor(value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|before| {
            before.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidCursor, "`before` must be the `next_before` of a previous page")
                    .field("before")
            })
        })
        .transpose()
}

/// Parses a team reference from a path segment.
pub(crate) fn parse_team(value: &str) -> Result<crate::domain::TeamRef, ApiError> {
    crate::domain::TeamRef::parse(value).map_err(|e| ApiError::new(crate::error::ErrorCode::InvalidTeam, e.to_string()))
}

/// Parses a user id from a path segment.
pub(crate) fn parse_user_id(value: &str) -> Result<crate::domain::UserId, ApiError> {
    value.parse().map_err(|_| {
        ApiError::new(
            crate::error::ErrorCode::InvalidUserId,
            "the user id must be a UUID such as 0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a",
        )
    })
}

/// A time given in a query string (`since`, `until`), RFC 3339. A `+hh:mm` offset sent without
/// percent-encoding arrives as a space (form decoding reads `+` as one), and is read as the `+`
/// it was: `2026-11-30T00:00:00 01:00` is `2026-11-30T00:00:00+01:00`.
pub fn query_time(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let parsed = chrono::DateTime::parse_from_rfc3339(value).or_else(|error| match value.rsplit_once(' ') {
        Some((time, offset)) if offset.len() == 5 && offset.as_bytes()[2] == b':' => {
            chrono::DateTime::parse_from_rfc3339(&format!("{time}+{offset}"))
        }
        _ => Err(error),
    });
    parsed.ok().map(|time| time.with_timezone(&chrono::Utc))
}

/// A JSON value in which no object names a key twice, at any depth. `serde_json::Value` keeps
/// the last of a repeated key where a proxy or a log in front may read the first — two views of
/// one credential (a browser session's `storage_state`): a repeated key is refused, as a
/// repeated `env` value is.
pub struct DistinctJson(pub serde_json::Value);

impl<'de> serde::Deserialize<'de> for DistinctJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, SeqAccess, Visitor};
        use serde_json::Value;
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::from(v))
            }
            fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::String(v))
            }
            fn visit_unit<E: Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                <DistinctJson as serde::Deserialize>::deserialize(d).map(|json| json.0)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(DistinctJson(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let DistinctJson(value) = map.next_value()?;
                    if object.insert(key, value).is_some() {
                        // Without the key: it is the sender's, and may be anything.
                        return Err(A::Error::custom("an object names the same key twice"));
                    }
                }
                Ok(Value::Object(object))
            }
        }
        deserializer.deserialize_any(Visit).map(DistinctJson)
    }
}

/// A field holding a [`DistinctJson`] (`#[serde(deserialize_with = "distinct_json")]`).
pub fn distinct_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    <DistinctJson as serde::Deserialize>::deserialize(d).map(|json| json.0)
}

/// An optional field holding a [`DistinctJson`] (with `#[serde(default)]`).
pub fn optional_distinct_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    <Option<DistinctJson> as serde::Deserialize>::deserialize(d).map(|json| json.map(|json| json.0))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::body::Body;

    use super::*;

    #[test]
    fn media_ranges_carry_their_weight_or_say_it_is_malformed() {
        let mut headers = axum::http::HeaderMap::new();
        let accept = "Application/JSON, text/event-stream;q=abc, text/html ; q=0, a/b;q=-0.1, c/d;level=1;q=0.5";
        headers.insert(axum::http::header::ACCEPT, accept.parse().unwrap());
        headers.append(axum::http::header::ACCEPT, "e/f".parse().unwrap());
        let expected = [
            ("application/json", Some(1.0)),
            ("text/event-stream", None),
            ("text/html", Some(0.0)),
            ("a/b", None),
            ("c/d", Some(0.5)),
            ("e/f", Some(1.0)),
        ];
        let expected: Vec<(String, Option<f32>)> = expected.iter().map(|(t, q)| ((*t).to_owned(), *q)).collect();
        assert_eq!(media_ranges(&headers), expected);
    }

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
        assert!(detail.starts_with("values.…: ") && detail.contains("integer `5`"), "numbers stay: {detail}");
        // Nor is a map's key, which is the sender's text too.
        let detail = detail_of(r#"{"values": {"sk-live-XYZ": 5}}"#).await;
        assert!(!detail.contains("sk-live") && detail.starts_with("values.…: "), "{detail}");
    }

    #[test]
    fn a_path_keeps_the_field_names_and_indices_not_map_keys() {
        assert_eq!(field_path("redirect_uris[2]"), "redirect_uris[2]");
        assert_eq!(field_path("jwks.keys[0].kty"), "jwks.keys[0].kty");
        assert_eq!(field_path("values.OPENAI_API_KEY"), "values.…");
        assert_eq!(field_path("values.sk-live-1[0]"), "values.…");
        assert_eq!(field_path("values.a b"), "values.…");
        // A key spelled as a field name may still be a secret, and may hold dots.
        assert_eq!(field_path("values.abc123livesecret"), "values.…");
        assert_eq!(field_path("values.sk_live.abc123secret"), "values.…");
        assert_eq!(field_path("values.K.my_secret_token"), "values.…");
    }

    #[test]
    fn only_quoted_values_are_cut() {
        assert_eq!(without_values("plain text"), "plain text");
        assert_eq!(
            without_values("invalid length 0, expected struct BootstrapRequest with 6 elements at line 1 column 2"),
            "invalid length 0, expected a JSON object at line 1 column 2"
        );
        assert_eq!(
            without_values(r#"team: invalid type: string "x", expected struct TeamRef"#),
            "team: invalid type: a string, expected a JSON object"
        );
        assert_eq!(
            without_values(r#"a: invalid type: string "x\"y", expected z"#),
            "a: invalid type: a string, expected z"
        );
        assert_eq!(without_values(r#"two: string "1" and string "2"!"#), "two: a string and a string!");
        assert_eq!(without_values("unknown variant `v`, expected `env`"), "an unknown variant, expected `env`");
        assert_eq!(without_values(r#"cut: string "never closed"#), "cut: a string");
        // A backtick or a backslash inside a variant does not end it early.
        assert_eq!(
            without_values(r"unknown variant `x`sk-live\`, expected `env`"),
            "an unknown variant, expected `env`"
        );
        assert_eq!(
            without_values("unknown variant `sk`, there are no variants"),
            "an unknown variant, there are no variants"
        );
        assert_eq!(without_values("unknown variant `never closed"), "an unknown variant");
        assert_eq!(
            without_values("unknown field `sk-live-1`, expected `name` or `slug` at line 1 column 12"),
            "an unknown field, expected `name` or `slug` at line 1 column 12"
        );
        assert_eq!(
            without_values("Cannot parse `id` with value `sk-1`2` to a `u32`"),
            "Cannot parse `id` with a value that does not parse to a `u32`"
        );
    }
}
