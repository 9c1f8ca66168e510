//! The MCP endpoint, `/mcp` (Streamable HTTP, stateless: every POST is answered on its own, in
//! JSON, with no session to keep), and its RFC 9728 protected-resource metadata. The tools themselves
//! are in [`crate::mcp`].
//!
//! Every request needs `Authorization: Bearer <access token>` issued by Tessera's own OpenID
//! Provider for the resource `{public_url}/mcp` (RFC 8707 `resource`, the token's `aud`), whose
//! grant is active and whose user is not disabled. Anything else — no token, an upstream token,
//! the admin token, a token for another resource — is a 401 whose `WWW-Authenticate` names the
//! metadata document, so that an MCP client can find the authorization server.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta as _, ProtocolVersion};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::AppState;
use super::credentials::Credentials;
use super::extract::{ApiBytes, DistinctJson, MAX_BODY_BYTES, declares_json, media_ranges};
use super::op::signing_keys;
use super::problem::ApiError;
use crate::domain::UserId;
use crate::error::ErrorCode;
use crate::mcp::{Caller, McpServer};
use crate::service::op::provider::OpenIdProvider;

/// The endpoint's path; the resource is the public URL with this path.
/// (A literal, which the OpenAPI route check reads; the provider names the resource by
/// [`MCP_RESOURCE_PATH`](crate::service::op::provider::MCP_RESOURCE_PATH), and a test keeps the
/// two equal.)
pub const PATH: &str = "/mcp";
/// Where the protected-resource metadata is served (RFC 9728 section 3; also with the resource's
/// path appended).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The scopes an MCP client asks for: none is needed beyond signing in; `offline_access` gives a
/// long-running agent a refresh token.
const SCOPES: [&str; 2] = ["openid", "offline_access"];

/// The routes: `/mcp` behind the token check, and the metadata document.
pub fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let server = McpServer::new(state.auth_profiles.clone(), state.validator.clone());
    let mut config = StreamableHttpServerConfig::default()
        // Stateless: any instance answers any request, nothing is kept between them.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // Host checks guard unauthenticated servers on loopback against DNS rebinding; every
        // request here needs a bearer token, which a browser never attaches by itself, and
        // Tessera runs behind proxies that choose the Host header.
        .disable_allowed_hosts();
    config.max_request_body_bytes = MAX_BODY_BYTES;
    let service =
        StreamableHttpService::new(move || Ok(server.clone()), Arc::new(NeverSessionManager::default()), config);
    // Bearer tokens only, never cookies: an MCP client running in a browser (an inspector, an
    // agent's web app) may read the metadata, the challenge and the answers from any origin.
    // `Mcp-Method` and `Mcp-Name` route requests of the newer revisions (SEP-2243); the SDK
    // requires them there.
    let mcp_headers = ["mcp-protocol-version", "mcp-session-id", "last-event-id", "mcp-method", "mcp-name"]
        .map(header::HeaderName::from_static);
    let routes = Router::new()
        .route_service(PATH, service)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route(METADATA_PATH, get(metadata))
        .route(&format!("{METADATA_PATH}{PATH}"), get(metadata));
    super::op::for_browser_apps(routes, &mcp_headers)
}

/// The resource identifier of the endpoint.
fn resource(op: &OpenIdProvider) -> String {
    op.endpoint(PATH)
}

/// RFC 9728 protected-resource metadata.
#[utoipa::path(
    get,
    path = "/.well-known/oauth-protected-resource",
    tag = "mcp",
    operation_id = "mcp_resource_metadata",
    summary = "The MCP endpoint's protected-resource metadata (RFC 9728).",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The metadata.", body = Object, content_type = "application/json")),
    security(()),
)]
async fn metadata(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let op = provider(&state)?;
    let document = serde_json::json!({
        "resource": resource(op),
        "authorization_servers": [op.issuer()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": SCOPES,
        "resource_name": "Tessera auth profiles (MCP)",
    });
    let mut response = Json(document).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(response)
}

/// The OpenID Provider, or the 404 that says how to turn it on (it issues the tokens `/mcp`
/// needs).
fn provider(state: &AppState) -> Result<&OpenIdProvider, ApiError> {
    signing_keys(state)?;
    state.op.as_ref().ok_or_else(|| ApiError::new(ErrorCode::OpenidProviderDisabled, "the OpenID Provider is off"))
}

/// Lets a request through with its [`Caller`] only when its token is one of Tessera's for this
/// resource; otherwise answers problem+json, a 401 with the RFC 9728 challenge.
async fn require_token(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let op = match provider(&state) {
        Ok(op) => op,
        Err(error) => return error.into_response(),
    };
    match authenticate(&state, op, request.headers()).await {
        Ok(user) => {
            // The token's user is who acts here: a user named beside it is refused, as on `/v1`,
            // rather than passed over in silence.
            if let Err(named) = super::caller::no_user_named(request.headers(), request.uri().query()) {
                return named.into_response();
            }
            request = match transport_request(request, &state).await {
                Ok(request) => request,
                Err(refused) => return refused,
            };
            request.extensions_mut().insert(Caller(user));
            // A tool's answer can hold a credential: no cache keeps any of them.
            crate::http::responses::no_store(next.run(request).await)
        }
        Err(error) => refuse(op, error),
    }
}

async fn authenticate(state: &AppState, op: &OpenIdProvider, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let resource = resource(op);
    let Some(token) = Credentials::read(headers)?.user_token() else {
        return Err(ApiError::new(
            ErrorCode::MissingCredentials,
            format!(
                "send an access token issued by Tessera for the resource {resource} as `Authorization: Bearer <token>`"
            ),
        ));
    };
    Ok(state.validator.validate_own_for(token, &resource).await?.principal.user.id)
}

/// What the Streamable HTTP transport would refuse in its own words (plain text, or a 500 for a
/// body that breaks off), refused here as every other error is: a method other than POST, a body
/// not declared as JSON, an `Accept` without both `application/json` and `text/event-stream` (the
/// MCP specification asks clients for both), an `MCP-Protocol-Version` it does not know, a body
/// that is too large, cut off, stalled, not JSON or not one JSON-RPC message. The body is read
/// here and handed on whole.
async fn transport_request(request: Request, state: &Arc<AppState>) -> Result<Request, Response> {
    if request.method() != axum::http::Method::POST {
        let mut refused =
            ApiError::new(ErrorCode::MethodNotAllowed, "the MCP endpoint takes POST only").into_response();
        refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(refused);
    }
    checked_body(request, state).await.map_err(IntoResponse::into_response)
}

/// The rest of [`transport_request`]: the headers and the body.
async fn checked_body(request: Request, state: &Arc<AppState>) -> Result<Request, ApiError> {
    let headers = request.headers();
    if !declares_json(headers) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the JSON-RPC message with `Content-Type: application/json`",
        ));
    }
    // A range with `q=0` is one the client does not accept (RFC 9110 12.4.2), as the SDK reads it.
    // A malformed weight is passed over, as the SDK does.
    let accepted: Vec<String> =
        media_ranges(headers).into_iter().filter(|(_, q)| *q != Some(0.0)).map(|(essence, _)| essence).collect();
    if !["application/json", "text/event-stream"].iter().all(|wanted| accepted.iter().any(|a| a == wanted)) {
        return Err(ApiError::new(
            ErrorCode::NotAcceptable,
            "send `Accept: application/json, text/event-stream`, as the MCP specification asks",
        ));
    }
    // The SDK reads the host of every request (the `Host` header, else the URI's authority), and
    // answers in plain text without one it can parse (an HTTP/1.0 client, a proxy that drops it).
    let host_readable = match headers.get(header::HOST) {
        Some(host) => host.to_str().is_ok_and(|host| axum::http::uri::Authority::try_from(host).is_ok()),
        None => request.uri().authority().is_some(),
    };
    if !host_readable {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "send a `Host` header naming this server"));
    }
    let (parts, body) = request.into_parts();
    let ApiBytes(bytes) = ApiBytes::from_request(Request::from_parts(parts.clone(), body), state).await?;
    // Text that is not JSON, or JSON that is not one JSON-RPC message (`{}`, a request without
    // its method, or a batch, which MCP dropped in 2025-06-18): the transport would answer 415 in
    // plain text.
    // A key an object names twice (`"action"` in a tool's arguments, say) is refused: the SDK
    // would keep the last where a gateway or an approval screen in front may read the first.
    let DistinctJson(json) = serde_json::from_slice(&bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidRequest, "an object in the body names the same key twice; send it once")
        }
        _ => ApiError::new(ErrorCode::MalformedJson, "the body is not valid JSON"),
    })?;
    let message = serde_json::from_value::<ClientJsonRpcMessage>(json).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the body is not one JSON-RPC request, notification or response (batches are not part of MCP)",
        )
    })?;
    // As the SDK reads it: a header naming a revision it does not speak is refused (absent, the
    // client speaks 2025-03-26) — unless the request names its revision in its `_meta` too: the
    // SDK then answers with the revisions it speaks (JSON-RPC `data.supported`), which is how a
    // client of a newer revision negotiates down.
    let names_its_revision = matches!(&message, ClientJsonRpcMessage::Request(request)
        if request.request.get_meta().protocol_version().is_some());
    // (A header that is not text the SDK answers in plain text whatever the body says: refused
    // here.)
    let unreadable = |version: &HeaderValue| version.to_str().is_err();
    if let Some(version) = parts.headers.get(MCP_PROTOCOL_VERSION).filter(|v| !names_its_revision || unreadable(v)) {
        let known = ProtocolVersion::KNOWN_VERSIONS.iter().any(|v| v.as_str().as_bytes() == version.as_bytes());
        if !known {
            let known: Vec<&str> = ProtocolVersion::KNOWN_VERSIONS.iter().map(ProtocolVersion::as_str).collect();
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "MCP-Protocol-Version names a revision this server does not speak; send one of {}",
                    known.join(", ")
                ),
            ));
        }
    }
    // An `initialize` whose header differs from the revision its body names: refused here, as
    // the SDK would, but without the SDK's warning, which logs the body's text (64 KiB of what
    // the client likes).
    if let ClientJsonRpcMessage::Request(request) = &message
        && let ClientRequest::InitializeRequest(init) = &request.request
        && let Some(version) = parts.headers.get(MCP_PROTOCOL_VERSION)
        && version.as_bytes() != init.params.protocol_version.as_str().as_bytes()
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "MCP-Protocol-Version differs from the initialize request's protocolVersion; send the same revision",
        ));
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// The header naming the MCP revision a client speaks.
const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// The error as problem+json; a 401 carries `WWW-Authenticate: Bearer` with the metadata URL
/// (and `error="invalid_token"` when a token was sent): the endpoint's own, whose path is the
/// resource's (RFC 9728 3.1), so that a strict client finds `resource` equal to the URL it asked.
fn refuse(op: &OpenIdProvider, error: ApiError) -> Response {
    let missing = error.code() == ErrorCode::MissingCredentials;
    let mut response = error.into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        let metadata = op.endpoint(&format!("{METADATA_PATH}{PATH}"));
        // The scopes to ask for, as the MCP authorization spec asks a server to name them.
        let scope = SCOPES.join(" ");
        let challenge = match missing {
            true => format!("Bearer realm=\"tessera\", resource_metadata=\"{metadata}\", scope=\"{scope}\""),
            false => format!(
                "Bearer realm=\"tessera\", error=\"invalid_token\", resource_metadata=\"{metadata}\", scope=\"{scope}\""
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_route_is_the_providers_mcp_resource() {
        assert_eq!(super::PATH, crate::service::op::provider::MCP_RESOURCE_PATH);
    }
}
