//! The OAuth 2.0 mechanics shared by every provider, on the `oauth2` crate: the authorization URL
//! (with PKCE S256 and, for OpenID, a nonce) and the code and refresh-token exchanges, over
//! Tessera's HTTP client; plus RFC 7009 revocation.

use std::future::Future;
use std::pin::Pin;

use chrono::Utc;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{AuthorizationRequest, ProviderError, TokenSet};
use crate::config::ProviderConfig;

/// The `id_token` field of an OpenID token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type Response = StandardTokenResponse<IdTokenField, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    Response,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
>;

/// How a provider's client authenticates at its token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`), the OAuth 2.0 default.
    Basic,
    /// In the form body (`client_secret_post`), as GitHub documents.
    Body,
}

fn client(config: &ProviderConfig, auth: ClientAuth) -> Client {
    let mut client = Client::new(ClientId::new(config.client_id.clone())).set_auth_type(match auth {
        ClientAuth::Basic => AuthType::BasicAuth,
        ClientAuth::Body => AuthType::RequestBody,
    });
    if let Some(secret) = &config.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    client
}

/// The authorization URL: response type `code`, the configured scopes, `state`, the S256 PKCE
/// challenge of `request.pkce_verifier`, and the nonce when `with_nonce`.
pub(super) fn authorization_url(
    config: &ProviderConfig,
    endpoint: &Url,
    request: &AuthorizationRequest<'_>,
    with_nonce: bool,
) -> Url {
    let verifier = PkceCodeVerifier::new(request.pkce_verifier.to_owned());
    let client = client(config, ClientAuth::Basic)
        .set_auth_uri(AuthUrl::from_url(endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(request.redirect_uri.clone()));
    let state = request.state.to_owned();
    let mut builder = client
        .authorize_url(move || CsrfToken::new(state))
        .add_scopes(request.scopes.unwrap_or(&config.scopes).iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
    if with_nonce {
        builder = builder.add_extra_param("nonce", request.nonce);
    }
    builder.url().0
}

/// Exchanges an authorization code.
pub(super) async fn exchange_code(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    auth: ClientAuth,
    code: &str,
    pkce_verifier: &str,
    redirect_uri: &Url,
) -> Result<TokenSet, ProviderError> {
    let client = client(config, auth)
        .set_token_uri(TokenUrl::from_url(endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    let adapter = Http(http.clone());
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
        .request_async(&adapter)
        .await;
    token_set(response, ProviderError::InvalidCode)
}

/// Exchanges a refresh token.
pub(super) async fn refresh(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    auth: ClientAuth,
    refresh_token: &str,
) -> Result<TokenSet, ProviderError> {
    let client = client(config, auth).set_token_uri(TokenUrl::from_url(endpoint.clone()));
    let adapter = Http(http.clone());
    let token = RefreshToken::new(refresh_token.to_owned());
    let response = client.exchange_refresh_token(&token).request_async(&adapter).await;
    token_set(response, ProviderError::InvalidGrant)
}

/// Revokes a refresh (or access) token at an RFC 7009 endpoint. Written out rather than through
/// `oauth2`, whose revocation refuses the plain-HTTP loopback endpoints that configuration
/// allows for development; endpoint URLs are validated when the configuration is read.
pub(super) async fn revoke(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    token: &str,
) -> Result<(), ProviderError> {
    let mut form = vec![("token", token), ("token_type_hint", "refresh_token")];
    let mut request = http.post(endpoint.clone());
    match &config.client_secret {
        Some(secret) => request = request.basic_auth(&config.client_id, Some(secret.expose_secret())),
        None => form.push(("client_id", &config.client_id)),
    }
    let response = request.form(&form).send().await.map_err(|e| ProviderError::Unavailable(e.to_string()))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status if status.is_server_error() => Err(ProviderError::Unavailable(format!("revocation answered {status}"))),
        status => Err(ProviderError::InvalidResponse(format!("revocation answered {status}"))),
    }
}

fn token_set(
    response: Result<Response, RequestTokenError<HttpError, BasicErrorResponse>>,
    refused: ProviderError,
) -> Result<TokenSet, ProviderError> {
    match response {
        Ok(response) => Ok(TokenSet {
            access_token: SecretString::from(response.access_token().secret().to_owned()),
            refresh_token: response.refresh_token().map(|t| SecretString::from(t.secret().to_owned())),
            expires_at: response.expires_in().and_then(|d| chrono::TimeDelta::from_std(d).ok()).map(|d| Utc::now() + d),
            scopes: response.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()).unwrap_or_default(),
            id_token: response.extra_fields().id_token.clone(),
        }),
        Err(RequestTokenError::ServerResponse(error)) if *error.error() == BasicErrorResponseType::InvalidGrant => {
            Err(refused)
        }
        Err(RequestTokenError::ServerResponse(error)) => {
            Err(ProviderError::InvalidResponse(format!("the token endpoint answered {}", error.error())))
        }
        Err(RequestTokenError::Request(error)) => Err(ProviderError::Unavailable(error.to_string())),
        // Some providers (GitHub) answer errors with status 200: read the error from the body.
        Err(RequestTokenError::Parse(_, body)) => {
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            match error.as_deref() {
                Some("invalid_grant" | "bad_verification_code" | "bad_refresh_token") => Err(refused),
                Some(other) => Err(ProviderError::InvalidResponse(format!("the token endpoint answered {other}"))),
                None => Err(ProviderError::InvalidResponse("the token endpoint's answer does not parse".into())),
            }
        }
        Err(RequestTokenError::Other(message)) => Err(ProviderError::InvalidResponse(message)),
    }
}

/// Why an HTTP exchange with a provider failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    /// The request could not be made or completed.
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The provider answered with a server error.
    #[error("the provider answered {0}")]
    Server(u16),
    /// The response could not be rebuilt.
    #[error("invalid response: {0}")]
    Invalid(String),
}

/// `oauth2`'s HTTP client interface over Tessera's reqwest client (no redirects, bounded time).
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            if response.status().is_server_error() {
                return Err(HttpError::Server(response.status().as_u16()));
            }
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await?;
            builder.body(body.to_vec()).map_err(|e| HttpError::Invalid(e.to_string()))
        })
    }
}
