//! The client-facing OAuth endpoints, all `POST` forms authenticated as the client (the token
//! and revocation endpoints also from browser apps on other origins):
//! `/oauth/token`, `/oauth/introspect` (RFC 7662), `/oauth/revoke` (RFC 7009) and `/oauth/par`
//! (RFC 9126). Errors are RFC 6749's JSON (`error`, `error_description`), never problem+json;
//! every response carries `Cache-Control: no-store`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::client_auth::{ClientAuthForm, client_credentials};
use crate::domain::Client;
use crate::http::AppState;
use crate::http::extract::ApiBytes;
use crate::service::op::authorize::{AuthorizationParams, AuthorizeError, Unsupported};
use crate::service::op::clients::ClientCredentials;
use crate::service::op::provider::{OAuthError, OpenIdProvider};
use crate::service::op::tokens::{TokenForm, single_valued};

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/oauth/introspect", post(introspect))
}

/// The routes a public client in a browser calls (served with CORS).
pub fn public_client_routes() -> Router<Arc<AppState>> {
    // OPTIONS is routed (and answered by the CORS layer) so that a preflight is not a 405.
    Router::new()
        .route("/oauth/token", post(token).options(preflight))
        .route("/oauth/revoke", post(revoke).options(preflight))
        // A public client in a browser may push its request too (RFC 9126 section 2).
        .route("/oauth/par", post(push).options(preflight))
}

/// An OAuth error response (RFC 6749 5.2).
pub(in crate::http) struct OAuthResponse(pub OAuthError);

impl IntoResponse for OAuthResponse {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
        // As the API logs its refusals: a refused client credential or grant at INFO with its
        // code only (the description may name what was sent), anything else at DEBUG; a 5xx was
        // logged with its cause where it was made.
        match error.error {
            _ if status.is_server_error() => {}
            "invalid_client" | "invalid_grant" | "unauthorized_client" => {
                tracing::info!(code = error.error, "oauth request refused")
            }
            _ => tracing::debug!(code = error.error, "oauth request refused"),
        }
        let body = serde_json::json!({ "error": error.error, "error_description": error.description });
        let mut response = (status, Json(body)).into_response();
        no_store(response.headers_mut());
        // Said to the audit middleware, which counts refused client authentications.
        if error.error == "invalid_client" {
            response.extensions_mut().insert(crate::error::ErrorCode::InvalidClient);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tessera\""));
        }
        response
    }
}

/// The form body of these endpoints: one too large or cut off is refused in their own format,
/// `invalid_request` (413 when too large) with `Cache-Control: no-store`, not as axum's text.
pub(super) struct OAuthBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for OAuthBody {
    type Rejection = OAuthResponse;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // ApiBytes's rules and sentences, in RFC 6749's shape.
        ApiBytes::from_request(req, state).await.map(|ApiBytes(bytes)| OAuthBody(bytes)).map_err(OAuthResponse::from)
    }
}

/// An error of the request itself (its body, its route) in RFC 6749's shape: `invalid_request`,
/// with the error's sentence and status.
impl From<crate::http::problem::ApiError> for OAuthResponse {
    fn from(error: crate::http::problem::ApiError) -> Self {
        let described = error.describe();
        Self(OAuthError { error: "invalid_request", description: described.detail, status: described.status.as_u16() })
    }
}

impl From<OAuthError> for OAuthResponse {
    fn from(error: OAuthError) -> Self {
        Self(error)
    }
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 5.1).
pub(super) fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The provider; when it is not enabled, a 404 `invalid_request` that says what to configure.
pub(super) fn provider(state: &AppState) -> Result<&OpenIdProvider, OAuthResponse> {
    state.op.as_ref().ok_or_else(|| {
        OAuthResponse(OAuthError {
            error: "invalid_request",
            description: "the OpenID Provider is not enabled: set auth.public_url and TESSERA_ENCRYPTION_KEYS".into(),
            status: 404,
        })
    })
}

/// A form body's pairs: `application/x-www-form-urlencoded` only.
pub(super) fn form_pairs(headers: &HeaderMap, body: &Bytes) -> Result<Vec<(String, String)>, OAuthError> {
    let form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    if !form {
        return Err(OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"));
    }
    // Callers read them through `single_valued`, which refuses a repeated parameter.
    Ok(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

fn get(map: &BTreeMap<&str, &str>, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_empty()).map(|v| (*v).to_owned())
}

/// `resource`, empty or not: an empty one (a client's template left unfilled) is a resource
/// that is not registered (`invalid_target`, RFC 8707 section 2), not a request without one —
/// which would get a token for the client itself.
fn resource(map: &BTreeMap<&str, &str>) -> Option<String> {
    map.get("resource").map(|v| (*v).to_owned())
}

/// The client's credentials: HTTP Basic and the form's `client_*` parameters (read by
/// [`client_credentials`]).
pub(super) fn credentials(headers: &HeaderMap, map: &BTreeMap<&str, &str>) -> Result<ClientCredentials, OAuthError> {
    let form = ClientAuthForm {
        client_id: get(map, "client_id"),
        client_secret: get(map, "client_secret"),
        client_assertion_type: get(map, "client_assertion_type"),
        client_assertion: get(map, "client_assertion"),
    };
    client_credentials(headers, form).map_err(|e| OAuthError::from_client_auth(&e))
}

fn ok_json(value: impl serde::Serialize) -> Response {
    let mut response = Json(value).into_response();
    no_store(response.headers_mut());
    response
}

#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    operation_id = "token",
    summary = "The token endpoint (RFC 6749).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthErrors, (status = 200, description = "Tokens.", body = Object, content_type = "application/json")),
    security((), ("client_basic" = [])),
)]
async fn token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthResponse> {
    let op = provider(&state)?;
    let pairs = form_pairs(&headers, &body)?;
    let map = single_valued(&pairs)?;
    let creds = credentials(&headers, &map)?;
    let form = TokenForm {
        grant_type: get(&map, "grant_type"),
        code: get(&map, "code"),
        redirect_uri: get(&map, "redirect_uri"),
        code_verifier: get(&map, "code_verifier"),
        refresh_token: get(&map, "refresh_token"),
        scope: get(&map, "scope"),
        resource: resource(&map),
        subject_token: get(&map, "subject_token"),
        subject_token_type: get(&map, "subject_token_type"),
        requested_token_type: get(&map, "requested_token_type"),
        // Empty or not, as `resource`: an empty one is not one of the client's resources.
        audience: map.get("audience").map(|v| (*v).to_owned()),
        actor_token: get(&map, "actor_token"),
        actor_token_type: get(&map, "actor_token_type"),
    };
    Ok(ok_json(op.token(&creds, form, crate::http::audit::request_id_of(&headers)).await?))
}

/// The authenticated client and the `token` of an introspection or revocation request.
async fn client_and_token<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    body: &Bytes,
    path: &str,
) -> Result<(&'s OpenIdProvider, Client, String), OAuthResponse> {
    let op = provider(state)?;
    let pairs = form_pairs(headers, body)?;
    let map = single_valued(&pairs)?;
    let client = op.authenticate(&credentials(headers, &map)?, path).await?;
    let token = get(&map, "token").ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    Ok((op, client, token))
}

#[utoipa::path(
    post,
    path = "/oauth/introspect",
    tag = "oauth",
    operation_id = "introspect",
    summary = "Token introspection (RFC 7662).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthErrors, (status = 200, description = "The token's state.", body = Object, content_type = "application/json")),
    security((), ("client_basic" = [])),
)]
async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthResponse> {
    let (op, client, token) = client_and_token(&state, &headers, &body, "/oauth/introspect").await?;
    if client.is_public() {
        return Err(OAuthError::invalid_client("a public client cannot introspect tokens").into());
    }
    Ok(ok_json(op.introspect(&client, &token).await?))
}

#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    operation_id = "revoke",
    summary = "Token revocation (RFC 7009).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthErrors, (status = 200, description = "Revoked (or unknown).")),
    security((), ("client_basic" = [])),
)]
async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthResponse> {
    let (op, client, token) = client_and_token(&state, &headers, &body, "/oauth/revoke").await?;
    op.revoke(&client, &token).await?;
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/oauth/par",
    tag = "oauth",
    operation_id = "pushed_authorization_request",
    summary = "Pushed authorization requests (RFC 9126).",
    request_body(content = crate::http::openapi::OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::OAuthErrors, (status = 201, description = "The request URI.", body = Object, content_type = "application/json")),
    security((), ("client_basic" = [])),
)]
async fn push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    OAuthBody(body): OAuthBody,
) -> Result<Response, OAuthResponse> {
    let op = provider(&state)?;
    let pairs = form_pairs(&headers, &body)?;
    let map = single_valued(&pairs)?;
    let client = op.authenticate(&credentials(&headers, &map)?, "/oauth/par").await?;
    let params = authorization_params(&map);
    match op.push(&client, params).await {
        Ok((request_uri, expires_in)) => {
            let mut response = (
                StatusCode::CREATED,
                Json(serde_json::json!({ "request_uri": request_uri, "expires_in": expires_in })),
            )
                .into_response();
            no_store(response.headers_mut());
            Ok(response)
        }
        Err(AuthorizeError::Rejected(r)) => {
            Err(OAuthError { error: r.error, description: r.description, status: 400 }.into())
        }
        Err(AuthorizeError::Store(e)) => Err(OAuthError::from(e).into()),
        Err(gone @ AuthorizeError::ConsentGone) => Err(OAuthError::invalid_request(gone.to_string()).into()),
    }
}

/// A CORS preflight (the CORS layer adds its headers).
#[utoipa::path(
    options,
    path = "/oauth/token",
    tag = "oauth",
    operation_id = "token_preflight",
    summary = "CORS preflight (also for `/oauth/revoke` and `/oauth/userinfo`).",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A CORS preflight (`Origin` and `Access-Control-Request-Method`), answered by the CORS layer."), (status = 204, description = "Not a CORS preflight.")),
    security(()),
)]
pub(super) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The authorization parameters of a form or query.
pub(super) fn authorization_params(map: &BTreeMap<&str, &str>) -> AuthorizationParams {
    AuthorizationParams {
        response_type: get(map, "response_type"),
        client_id: get(map, "client_id"),
        redirect_uri: get(map, "redirect_uri"),
        // Empty or not: an empty one is `invalid_scope`, not a request without one (`openid`).
        scope: map.get("scope").map(|v| (*v).to_owned()),
        state: get(map, "state"),
        nonce: get(map, "nonce"),
        code_challenge: get(map, "code_challenge"),
        code_challenge_method: get(map, "code_challenge_method"),
        prompt: get(map, "prompt"),
        max_age: get(map, "max_age"),
        login_hint: get(map, "login_hint"),
        resource: resource(map),
        request_uri: get(map, "request_uri"),
        response_mode: get(map, "response_mode"),
        unsupported: if map.contains_key("request") {
            Some(Unsupported::RequestObject)
        } else if map.contains_key("registration") {
            Some(Unsupported::Registration)
        } else {
            None
        },
        id_token_hint: get(map, "id_token_hint"),
        repeated: None,
    }
}
