//! OpenID Connect discovery (`/.well-known/openid-configuration`), its RFC 8414 twin
//! (`/.well-known/oauth-authorization-server`), and `userinfo`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::token::{OAuthResponse, no_store, preflight, provider};
use crate::domain::client_rules::{ASSERTION_ALGORITHMS, DEFAULT_SCOPES};
use crate::domain::{GrantType, SigningAlg};
use crate::http::AppState;
use crate::http::credentials::Credentials;
use crate::service::op::tokens::UserInfoAnswer;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/.well-known/openid-configuration", get(configuration))
        .route("/.well-known/oauth-authorization-server", get(configuration))
        .route("/oauth/userinfo", get(userinfo).post(userinfo).options(preflight))
}

#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    tag = "oauth",
    operation_id = "openid_configuration",
    summary = "The OpenID Provider's metadata (also at `/.well-known/oauth-authorization-server`).",
    responses(crate::http::openapi::OAuthErrors, (status = 200, description = "The metadata.", body = Object, content_type = "application/json")),
    security(()),
)]
async fn configuration(State(state): State<Arc<AppState>>) -> Result<Response, OAuthResponse> {
    let op = provider(&state)?;
    let algs: Vec<&str> = SigningAlg::ALL.iter().map(|a| a.as_str()).collect();
    // The client-assertion algorithms the client rules accept (jsonwebtoken names them as JOSE).
    let assertion_algs: Vec<String> = ASSERTION_ALGORITHMS.iter().map(|a| format!("{a:?}")).collect();
    let grants: Vec<&str> = GrantType::ALL.iter().map(|g| g.as_str()).collect();
    let document = serde_json::json!({
        "issuer": op.issuer(),
        "authorization_endpoint": op.endpoint("/oauth/authorize"),
        "token_endpoint": op.endpoint("/oauth/token"),
        "userinfo_endpoint": op.endpoint("/oauth/userinfo"),
        "jwks_uri": op.endpoint("/oauth/jwks"),
        "introspection_endpoint": op.endpoint("/oauth/introspect"),
        "revocation_endpoint": op.endpoint("/oauth/revoke"),
        "end_session_endpoint": op.endpoint("/oauth/logout"),
        "pushed_authorization_request_endpoint": op.endpoint("/oauth/par"),
        // The scopes Tessera knows; clients may be allowed others (for their resources).
        "scopes_supported": DEFAULT_SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grants,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        // RFC 8414 section 2: required with private_key_jwt; the same as the token endpoint's.
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "azp", "amr", "idp", "email", "email_verified", "name", "teams"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "require_pushed_authorization_requests": false,
    });
    let mut response = Json(document).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(response)
}

/// An RFC 6750 section 3 refusal: `WWW-Authenticate: Bearer error=…` (with the `scope` needed,
/// for `insufficient_scope`), and the same in a body.
fn bearer_error(status: StatusCode, error: &'static str, description: &'static str) -> Response {
    let mut response =
        (status, Json(serde_json::json!({ "error": error, "error_description": description }))).into_response();
    let scope = if error == "insufficient_scope" { ", scope=\"openid\"" } else { "" };
    let challenge = format!("Bearer error=\"{error}\", error_description=\"{description}\"{scope}");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    no_store(response.headers_mut());
    response
}

#[utoipa::path(
    get,
    path = "/oauth/userinfo",
    tag = "oauth",
    operation_id = "userinfo",
    summary = "The UserInfo endpoint.",
    responses(crate::http::openapi::UserinfoResponses),
    security(("bearer" = [])),
)]
async fn userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, OAuthResponse> {
    let op = provider(&state)?;
    let token = match Credentials::read(&headers) {
        Ok(credentials) => credentials.user_token(),
        Err(_) => {
            let description = "send one access token, in one Authorization header";
            return Ok(bearer_error(StatusCode::BAD_REQUEST, "invalid_request", description));
        }
    };
    let Some(token) = token else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        no_store(response.headers_mut());
        return Ok(response);
    };
    Ok(match op.userinfo(token).await? {
        UserInfoAnswer::Claims(claims) => {
            let mut response = Json(claims).into_response();
            no_store(response.headers_mut());
            response
        }
        UserInfoAnswer::Inactive => {
            bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", "the access token is not active")
        }
        UserInfoAnswer::WithoutOpenid => bearer_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the access token was not issued for openid; authorize again with it",
        ),
    })
}
