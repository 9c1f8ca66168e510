//! The OAuth 2.0 mechanics shared by every provider, on the `oauth2` crate: the authorization URL
//! (with PKCE S256 and, for OpenID, a nonce) and the code and refresh-token exchanges, over
//! Tessera's HTTP client; plus RFC 7009 revocation.

use crate::error::ErrorChain as _;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::Utc;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{AuthorizationRequest, ProviderError, TokenFields, TokenKind, TokenSet};
use crate::config::{ProviderConfig, ProviderKind, TokenAuth};
use crate::upstream::error_word;
use crate::upstream::jwks::read_capped;

/// The `id_token` field of an OpenID token response, and the answer's other fields (Notion's
/// workspace, Slack's team), which some providers' profiles are read from. Its `Debug` shows the
/// other fields' names only: they may hold tokens (Slack's `authed_user`).
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenField")
            .field("id_token", &self.id_token.as_ref().map(|_| "[REDACTED]"))
            .field("other", &self.other.keys().collect::<Vec<_>>())
            .finish()
    }
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
enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`), the OAuth 2.0 default.
    Basic,
    /// In the form body (`client_secret_post`), as GitHub documents.
    Body,
}

impl ClientAuth {
    /// The configured way, else the kind's own: the form body for GitHub, HTTP Basic otherwise.
    fn of(config: &ProviderConfig) -> Self {
        match (config.protocol.token_auth, config.kind) {
            (Some(TokenAuth::ClientSecretBasic), _) => ClientAuth::Basic,
            (Some(TokenAuth::ClientSecretPost), _) | (None, ProviderKind::GitHub) => ClientAuth::Body,
            (None, _) => ClientAuth::Basic,
        }
    }
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

/// The authorization URL: response type `code`, the scopes ([`ProviderConfig::asked_scopes`],
/// joined with the provider's separator), `state`, the S256 PKCE challenge of `request.pkce_verifier` unless the
/// provider takes no PKCE, the nonce when `with_nonce` (OpenID Connect), and the provider's extra
/// parameters (with its offline ones when `request.offline`); for a fresh login the provider's
/// [`crate::config::FreshLogin`] `prompt` (replacing a configured `prompt`), and, with the nonce and
/// `prompt=login`, `max_age=0` too.
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
    let scopes = config.asked_scopes(request.scopes);
    let mut builder = client.authorize_url(move || CsrfToken::new(state));
    builder = match config.protocol.scope_separator.as_str() {
        " " => builder.add_scopes(scopes.iter().map(|s| Scope::new(s.clone()))),
        _ if scopes.is_empty() => builder,
        separator => builder.add_extra_param("scope", scopes.join(separator)),
    };
    if config.protocol.pkce {
        builder = builder.set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
    }
    if with_nonce {
        builder = builder.add_extra_param("nonce", request.nonce);
    }
    let offline = if request.offline { config.protocol.offline_authorize_params.as_slice() } else { &[] };
    for (name, value) in config.protocol.authorize_params.iter().chain(offline) {
        if !(request.fresh_login && name == "prompt") {
            builder = builder.add_extra_param(name.as_str(), value.as_str());
        }
    }
    if request.fresh_login {
        let fresh = config.protocol.fresh_login;
        builder = builder.add_extra_param("prompt", fresh.prompt());
        if with_nonce && fresh.asks_auth_time() {
            builder = builder.add_extra_param("max_age", "0");
        }
    }
    builder.url().0
}

/// Exchanges an authorization code (with the PKCE verifier, unless the provider takes no PKCE).
pub(super) async fn exchange_code(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    code: &str,
    pkce_verifier: &str,
    redirect_uri: &Url,
) -> Result<TokenSet, ProviderError> {
    let client = client(config, ClientAuth::of(config))
        .set_token_uri(TokenUrl::from_url(endpoint.clone()))
        .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
    let adapter = Http { client: http.clone(), timeout: None };
    let mut request = client.exchange_code(AuthorizationCode::new(code.to_owned()));
    if config.protocol.pkce {
        request = request.set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()));
    }
    let response = request.request_async(&adapter).await;
    token_set(config, response, ProviderError::InvalidCode)
}

/// Exchanges a refresh token.
pub(super) async fn refresh(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    refresh_token: &str,
) -> Result<TokenSet, ProviderError> {
    let client = client(config, ClientAuth::of(config)).set_token_uri(TokenUrl::from_url(endpoint.clone()));
    // Not the client's timeout (`jwks.fetch_timeout_ms`, 5 s by default): a provider that
    // rotates refresh tokens has spent the old one once it answers, so an answer cut off is a
    // connection lost for good. The caller bounds the call by what is left of its lease.
    let adapter = Http { client: http.clone(), timeout: Some(super::REFRESH_CALL_LIMIT) };
    let token = RefreshToken::new(refresh_token.to_owned());
    let response = client.exchange_refresh_token(&token).request_async(&adapter).await;
    token_set(config, response, ProviderError::InvalidGrant)
}

/// Revokes a refresh (or access) token at an RFC 7009 endpoint. Written out rather than through
/// `oauth2`, whose revocation refuses the plain-HTTP loopback endpoints that configuration
/// allows for development; endpoint URLs are validated when the configuration is read.
pub(super) async fn revoke(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    token: &str,
    kind: TokenKind,
) -> Result<(), ProviderError> {
    let request = revocation_request(http, config, endpoint, token, kind);
    let response = request.send().await.map_err(|e| ProviderError::Unavailable(e.chain().to_string()))?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status if status.is_server_error() => Err(ProviderError::Unavailable(format!("revocation answered {status}"))),
        status => Err(ProviderError::InvalidResponse(format!("revocation answered {status}"))),
    }
}

/// The revocation request, the client authenticated as at the token endpoint: in HTTP Basic,
/// its id and secret form-urlencoded first (RFC 6749 2.3.1, as `oauth2` sends them there), so
/// that a secret with `+`, `/` or `%` is the same credential at both endpoints.
fn revocation_request(
    http: &reqwest::Client,
    config: &ProviderConfig,
    endpoint: &Url,
    token: &str,
    kind: TokenKind,
) -> reqwest::RequestBuilder {
    let mut form = vec![("token", token), ("token_type_hint", kind.hint())];
    let mut request = http.post(endpoint.clone());
    match (&config.client_secret, ClientAuth::of(config)) {
        (Some(secret), ClientAuth::Basic) => {
            let encoded = |value: &str| url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
            request = request.basic_auth(encoded(&config.client_id), Some(encoded(secret.expose_secret())));
        }
        (Some(secret), ClientAuth::Body) => {
            form.push(("client_id", &config.client_id));
            form.push(("client_secret", secret.expose_secret()));
        }
        (None, _) => form.push(("client_id", &config.client_id)),
    }
    request.form(&form)
}

fn token_set(
    config: &ProviderConfig,
    response: Result<Response, RequestTokenError<HttpError, BasicErrorResponse>>,
    refused: ProviderError,
) -> Result<TokenSet, ProviderError> {
    match response {
        Ok(response) if response.access_token().secret().is_empty() => {
            Err(ProviderError::InvalidResponse("the token answer's access_token is empty".into()))
        }
        Ok(response) => Ok(TokenSet {
            access_token: SecretString::from(response.access_token().secret().to_owned()),
            // An empty refresh token is none: stored, it would replace the one a refresh keeps.
            refresh_token: response
                .refresh_token()
                .filter(|t| !t.secret().is_empty())
                .map(|t| SecretString::from(t.secret().to_owned())),
            // `"expires_in": 0` is how some providers (Mailchimp) say the token does not expire:
            // as absent, so that `default_expires_in` applies; taken as "now", every use would
            // refresh, or with no refresh token end the account at once.
            expires_at: response
                .expires_in()
                .filter(|d| !d.is_zero())
                .or(config.protocol.default_expires_in)
                // An absurd lifetime (the provider's, not ours to refuse) is held to ten years.
                .and_then(|d| chrono::TimeDelta::from_std(d).ok())
                .map(|d| d.min(chrono::TimeDelta::days(3650)))
                .and_then(|d| Utc::now().checked_add_signed(d))
                // To the microsecond, as both databases keep it: the expiry handed out with a
                // token is the one its profile then shows.
                .map(|at| chrono::SubsecRound::trunc_subsecs(at, 6)),
            // Scopes come back joined with the provider's separator (Slack: commas).
            scopes: response
                .scopes()
                .map(|scopes| {
                    scopes
                        .iter()
                        .flat_map(|s| s.split(config.protocol.scope_separator.as_str()))
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            id_token: response.extra_fields().id_token.clone(),
            fields: TokenFields(response.extra_fields().other.clone()),
        }),
        // RFC 6749's error answer, read as a body outside it is: a provider's own refusal word
        // (`bad_refresh_token`), in any case, is the refusal it is at any status.
        Err(RequestTokenError::ServerResponse(error))
            if is_refusal(&error.error().as_ref().to_ascii_lowercase())
                || is_configured_refusal(config, error.error().as_ref()) =>
        {
            Err(refused)
        }
        Err(RequestTokenError::ServerResponse(error)) => {
            let word = error_word(error.error().as_ref());
            Err(ProviderError::InvalidResponse(format!("the token endpoint answered {word}")))
        }
        Err(RequestTokenError::Request(error)) => Err(ProviderError::Unavailable(error.chain().to_string())),
        // Some providers answer errors with status 200 (GitHub), or without RFC 6749's `error`
        // (HubSpot's `{"status": "BAD_REFRESH_TOKEN"}`): read the error from the body.
        Err(RequestTokenError::Parse(_, body)) => match body_error(&body) {
            Some(error) if is_refusal(&error) || is_configured_refusal(config, &error) => Err(refused),
            Some(other) => {
                Err(ProviderError::InvalidResponse(format!("the token endpoint answered {}", error_word(&other))))
            }
            None => Err(ProviderError::InvalidResponse("the token endpoint's answer does not parse".into())),
        },
        Err(RequestTokenError::Other(message)) => Err(ProviderError::InvalidResponse(message)),
    }
}

/// The error a token endpoint's answer names outside RFC 6749's format: its `error`, else its
/// `status` (HubSpot), in lower case.
fn body_error(body: &[u8]) -> Option<String> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let error = value.get("error").or_else(|| value.get("status"))?.as_str()?;
    Some(error.to_ascii_lowercase())
}

/// Whether a provider's own name for an error says the code or refresh token is refused (for
/// good: the profile needs a reconnection), as `invalid_grant` does: GitHub's, Slack's and
/// HubSpot's.
fn is_refusal(error: &str) -> bool {
    matches!(
        error,
        "invalid_grant"
            | "bad_verification_code"
            | "bad_refresh_token"
            | "bad_auth_code"
            | "invalid_code"
            | "invalid_refresh_token"
    )
}

/// Whether the entry says that `error` refuses the code or refresh token for good
/// (`refusal_errors`).
fn is_configured_refusal(config: &ProviderConfig, error: &str) -> bool {
    config.protocol.refusal_errors.iter().any(|refusal| refusal.eq_ignore_ascii_case(error))
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

/// `oauth2`'s HTTP client interface over Tessera's reqwest client (no redirects, bounded time:
/// the client's timeout, or `timeout` when set).
struct Http {
    client: reqwest::Client,
    timeout: Option<Duration>,
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut request = reqwest::Request::try_from(request)?;
            if let Some(timeout) = self.timeout {
                *request.timeout_mut() = Some(timeout);
            }
            let mut response = self.client.execute(request).await?;
            if response.status().is_server_error() {
                return Err(HttpError::Server(response.status().as_u16()));
            }
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = read_capped(&mut response)
                .await?
                .ok_or_else(|| HttpError::Invalid("the answer is too large".into()))?;
            builder.body(scope_list_as_text(body)).map_err(|e| HttpError::Invalid(e.to_string()))
        })
    }
}

/// A token answer whose `scope` is a JSON array of strings (Linear's, for apps made before
/// December 2023), with that array as RFC 6749's space-separated text, which is all `oauth2`
/// parses; any other body as it is.
fn scope_list_as_text(body: Vec<u8>) -> Vec<u8> {
    // (Most answers hold no list at all: those are not parsed here.)
    if !body.contains(&b'[') {
        return body;
    }
    let Ok(serde_json::Value::Object(mut answer)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let Some(serde_json::Value::Array(scopes)) = answer.get("scope") else { return body };
    let Some(scopes) = scopes.iter().map(serde_json::Value::as_str).collect::<Option<Vec<_>>>() else { return body };
    let text = scopes.join(" ");
    answer.insert("scope".into(), serde_json::Value::String(text));
    serde_json::to_vec(&answer).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_bodies_outside_the_rfc_format() {
        let refused = |body: &str| body_error(body.as_bytes()).is_some_and(|e| is_refusal(&e));
        assert!(refused(r#"{"error": "bad_verification_code"}"#), "GitHub, with status 200");
        assert!(refused(r#"{"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"}"#));
        assert!(refused(r#"{"status": "BAD_AUTH_CODE"}"#), "HubSpot");
        assert!(!refused(r#"{"status": "error", "message": "internal"}"#), "not a refusal");
        assert!(!refused(r#"{"error": "temporarily_unavailable"}"#));
        assert_eq!(body_error(b"<html>"), None);
    }

    fn config() -> ProviderConfig {
        ProviderConfig::for_tests("acme", crate::config::ProviderKind::OAuth2, "https://acme.example")
    }

    #[test]
    fn a_providers_error_word_is_repeated_without_lines_of_its_own() {
        let forged = format!("server_error\n2026-01-01T00:00:00Z  INFO tessera: signed in{}", "x".repeat(500_000));
        let answer = oauth2::StandardErrorResponse::new(
            oauth2::basic::BasicErrorResponseType::Extension(forged),
            Some("a description".into()),
            None,
        );
        let refused = ProviderError::InvalidResponse("refused".into());
        let Err(ProviderError::InvalidResponse(message)) =
            token_set(&config(), Err(RequestTokenError::ServerResponse(answer)), refused)
        else {
            panic!("not an invalid response")
        };
        assert_eq!(
            message,
            "the token endpoint answered server_error2026-01-01T000000ZINFOtesserasignedinxxxxxxxxxxxxxxx"
        );
        assert_eq!(crate::upstream::error_word("invalid_grant"), "invalid_grant");
        assert_eq!(crate::upstream::error_word("Bad.Token-1\r\n"), "Bad.Token-1");
    }

    #[test]
    fn required_scopes_are_asked_beside_a_connected_accounts_own() {
        let redirect = Url::parse("https://tessera.example/auth/callback/acme").unwrap();
        let endpoint = Url::parse("https://acme.example/authorize").unwrap();
        let own = ["read:jira-work".to_owned(), "read:me".to_owned()];
        let request = AuthorizationRequest {
            redirect_uri: &redirect,
            state: "s",
            pkce_verifier: "v".repeat(43).leak(),
            nonce: "n",
            scopes: Some(&own),
            fresh_login: false,
            offline: true,
        };
        let mut atlassian = config();
        atlassian.protocol.required_scopes = vec!["read:me".into(), "offline_access".into()];
        let scope = |request: &AuthorizationRequest<'_>| {
            let url = authorization_url(&atlassian, &endpoint, request, false);
            url.query_pairs().find(|(name, _)| name == "scope").map(|(_, value)| value.into_owned())
        };
        assert_eq!(scope(&request).as_deref(), Some("read:jira-work read:me offline_access"), "each once");
        // A sign-in asks the entry's scopes as they are (no refresh token it would not keep).
        atlassian.scopes = vec!["read:me".into()];
        let sign_in = AuthorizationRequest { scopes: None, offline: false, ..request };
        let url = authorization_url(&atlassian, &endpoint, &sign_in, false);
        let asked = url.query_pairs().find(|(name, _)| name == "scope").map(|(_, value)| value.into_owned());
        assert_eq!(asked.as_deref(), Some("read:me"));
    }

    #[test]
    fn a_scope_sent_as_a_list_is_read_as_one() {
        let linear = br#"{"access_token":"x","token_type":"Bearer","expires_in":315705599,"scope":["read","write"]}"#;
        let body = scope_list_as_text(linear.to_vec());
        let answer: Response = serde_json::from_slice(&body).unwrap();
        let scopes: Vec<&str> = answer.scopes().into_iter().flatten().map(|s| s.as_str()).collect();
        assert_eq!(scopes, ["read", "write"]);
        for other in [&br#"{"scope":"read write"}"#[..], br#"{"scope":[1]}"#, b"<html>", br#"[1]"#] {
            assert_eq!(scope_list_as_text(other.to_vec()), other, "left as it is");
        }
    }

    #[test]
    fn a_fresh_login_asks_each_provider_in_the_words_it_takes() {
        let redirect = Url::parse("https://tessera.example/auth/callback/acme").unwrap();
        let endpoint = Url::parse("https://acme.example/authorize").unwrap();
        let request = AuthorizationRequest {
            redirect_uri: &redirect,
            state: "s",
            pkce_verifier: "v".repeat(43).leak(),
            nonce: "n",
            scopes: None,
            fresh_login: true,
            offline: false,
        };
        let params = |config: &ProviderConfig, request: &AuthorizationRequest<'_>| -> Vec<(String, String)> {
            authorization_url(config, &endpoint, request, true).query_pairs().into_owned().collect()
        };
        let has = |params: &[(String, String)], name: &str, value: &str| {
            params.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>() == [value]
        };
        let login = params(&config(), &request);
        assert!(has(&login, "prompt", "login") && has(&login, "max_age", "0"), "{login:?}");
        // Google takes no `prompt=login`: it is asked to choose the account again, with no
        // `max_age` whose `auth_time` would be checked.
        let mut google = config();
        google.protocol.fresh_login = crate::config::FreshLogin::SelectAccount;
        google.protocol.authorize_params = vec![("prompt".into(), "consent".into())];
        let chosen = params(&google, &request);
        assert!(has(&chosen, "prompt", "select_account"), "{chosen:?}");
        assert!(!chosen.iter().any(|(n, _)| n == "max_age"), "{chosen:?}");
        let plain = params(&google, &AuthorizationRequest { fresh_login: false, ..request });
        assert!(has(&plain, "prompt", "consent"), "a configured prompt otherwise: {plain:?}");
    }

    #[test]
    fn revocation_sends_the_client_secret_form_encoded_in_basic() {
        use base64::Engine;
        let config = ProviderConfig { client_secret: Some(SecretString::from("a+b/c=%")), ..config() };
        let endpoint = Url::parse("https://acme.example/revoke").unwrap();
        let request = revocation_request(&reqwest::Client::new(), &config, &endpoint, "t", TokenKind::Refresh);
        let request = request.build().unwrap();
        let basic = request.headers()["authorization"].to_str().unwrap().strip_prefix("Basic ").unwrap().to_owned();
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "id:a%2Bb%2Fc%3D%25");
    }

    #[test]
    fn refusals_in_an_rfc_error_answer_are_read_in_any_case() {
        let config = config();
        let answer = |error: &str| {
            let kind: oauth2::basic::BasicErrorResponseType = serde_json::from_value(error.into()).unwrap();
            let response = Err(RequestTokenError::ServerResponse(BasicErrorResponse::new(kind, None, None)));
            token_set(&config, response, ProviderError::InvalidGrant)
        };
        for refusal in ["invalid_grant", "INVALID_GRANT", "bad_refresh_token", "Invalid_Refresh_Token"] {
            assert!(matches!(answer(refusal), Err(ProviderError::InvalidGrant)), "{refusal}");
        }
        assert!(matches!(answer("temporarily_unavailable"), Err(ProviderError::InvalidResponse(_))));
    }
}
