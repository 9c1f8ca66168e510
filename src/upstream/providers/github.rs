//! GitHub (or GitHub Enterprise, through endpoint overrides): OAuth 2.0 plus the REST API.
//!
//! The identity is keyed by the provider's fixed issuer (`https://github.com` by default) and the
//! numeric account id — never the login, which users can change. The email is the primary
//! verified one from `GET /user/emails`, when the `user:email` scope grants it.

use crate::error::ErrorChain as _;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use super::oauth;
use super::{AuthorizationRequest, Provider, ProviderError, ResponseIssuer, TokenKind, TokenSet, UserInfo};
use crate::config::ProviderConfig;
use crate::domain::{DisplayName, Email};

const AUTHORIZE: &str = "https://github.com/login/oauth/authorize";
const TOKEN: &str = "https://github.com/login/oauth/access_token";
const API: &str = "https://api.github.com";

/// The GitHub provider.
#[derive(Debug)]
pub struct GitHubProvider {
    config: ProviderConfig,
    http: reqwest::Client,
    authorize: Url,
    token: Url,
    api: Url,
}

#[derive(Debug, Deserialize)]
struct GitHubUser {
    id: u64,
    login: Option<String>,
    name: Option<String>,
    avatar_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GitHubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

impl GitHubProvider {
    /// Creates the provider with github.com's endpoints unless overridden.
    pub fn new(config: ProviderConfig, http: reqwest::Client) -> Self {
        let parse = |url: &str| Url::parse(url).expect("a valid built-in URL");
        Self {
            authorize: config.endpoints.authorization.clone().unwrap_or_else(|| parse(AUTHORIZE)),
            token: config.endpoints.token.clone().unwrap_or_else(|| parse(TOKEN)),
            api: config.endpoints.api.clone().unwrap_or_else(|| parse(API)),
            config,
            http,
        }
    }

    /// `GET /{path}` of GitHub's API with `access_token`, as GitHub asks to be called.
    async fn send_get(&self, path: &str, access_token: &str) -> Result<reqwest::Response, ProviderError> {
        self.http
            .get(format!("{}/{}", self.api.as_str().trim_end_matches('/'), path))
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.chain().to_string()))
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        tokens: &TokenSet,
    ) -> Result<Option<T>, ProviderError> {
        let response = self.send_get(path, tokens.access_token.expose_secret()).await?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!("GET /{path} answered {status}")));
        }
        // A rate limit is GitHub unavailable for now, not a refusal: read as "no emails", it
        // would provision a person without the address an existing account of theirs holds.
        let Unthrottled::Answer(response) = unthrottled(path, response).await? else { return Ok(None) };
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ProviderError::InvalidResponse(format!("GET /{path} answered {status}")));
        }
        super::json_answer(response, &format!("GET /{path}")).await.map(Some)
    }
}

/// A GitHub API answer once a rate limit is told apart.
enum Unthrottled {
    /// The answer, whatever its status but a 403.
    Answer(reqwest::Response),
    /// A 403 with GitHub's message that is no rate limit: the token may not read this.
    Refused,
}

/// GitHub's answer to `GET /{path}`, or `Unavailable` when it is a rate limit: a 429, a 403 with
/// no requests left or a wait named, or one whose message says so (a secondary rate limit may
/// leave requests and name no wait: only its message tells it from a token without the scope,
/// GitHub's documented way to recognise one; older GitHub Enterprise Server words it "abuse
/// detection"). A 403 without GitHub's JSON message (a proxy's, say) is taken for no refusal
/// either.
async fn unthrottled(path: &str, mut response: reqwest::Response) -> Result<Unthrottled, ProviderError> {
    let status = response.status();
    let headers = response.headers();
    let rate_limited = status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || (status == reqwest::StatusCode::FORBIDDEN
            && (headers.get("x-ratelimit-remaining").is_some_and(|left| left == "0")
                || headers.contains_key(reqwest::header::RETRY_AFTER)));
    if rate_limited {
        return Err(ProviderError::Unavailable(format!("GET /{path} is rate limited")));
    }
    if status != reqwest::StatusCode::FORBIDDEN {
        return Ok(Unthrottled::Answer(response));
    }
    #[derive(Deserialize)]
    struct Refusal {
        message: String,
    }
    let read = crate::upstream::jwks::read_capped(&mut response).await;
    let Some(Refusal { message }) = read.ok().flatten().and_then(|body| serde_json::from_slice::<Refusal>(&body).ok())
    else {
        return Err(ProviderError::Unavailable(format!("GET /{path} answered 403 without GitHub's message")));
    };
    let message = message.to_ascii_lowercase();
    if message.contains("rate limit") || message.contains("abuse detection") {
        return Err(ProviderError::Unavailable(format!("GET /{path} is rate limited")));
    }
    Ok(Unthrottled::Refused)
}

#[async_trait]
impl Provider for GitHubProvider {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    async fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, ProviderError> {
        Ok(oauth::authorization_url(&self.config, &self.authorize, request, false))
    }

    async fn response_issuer(&self) -> Result<ResponseIssuer, ProviderError> {
        Ok(ResponseIssuer { issuer: self.config.issuer.clone(), required: false })
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        oauth::exchange_code(&self.http, &self.config, &self.token, code, pkce_verifier, redirect_uri).await
    }

    async fn user_info(&self, tokens: &TokenSet, _nonce: &str) -> Result<UserInfo, ProviderError> {
        let user: GitHubUser = self
            .get("user", tokens)
            .await?
            .ok_or_else(|| ProviderError::InvalidResponse("GET /user refused the token".into()))?;
        let emails: Vec<GitHubEmail> = self.get("user/emails", tokens).await?.unwrap_or_default();
        let email = emails.iter().find(|e| e.primary && e.verified).and_then(|e| Email::parse(&e.email).ok());
        Ok(UserInfo {
            account_id: user.id.to_string(),
            login: user.login,
            email_verified: email.is_some(),
            email,
            name: DisplayName::parse_optional(user.name.as_deref()).ok().flatten().map(|n| n.as_str().to_owned()),
            avatar_url: user.avatar_url,
            authenticated_at: None,
            email_unread: false,
        })
    }

    async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, ProviderError> {
        oauth::refresh(&self.http, &self.config, &self.token, refresh_token).await
    }

    async fn revoke(&self, token: &str, _: TokenKind) -> Result<bool, ProviderError> {
        // GitHub's own revocation API: DELETE /applications/{client_id}/token, as the app.
        let Some(secret) = &self.config.client_secret else {
            return Ok(false);
        };
        let url = format!("{}/applications/{}/token", self.api.as_str().trim_end_matches('/'), self.config.client_id);
        let response = self
            .http
            .delete(url)
            .basic_auth(&self.config.client_id, Some(secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .json(&serde_json::json!({ "access_token": token }))
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.chain().to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!("revocation answered {status}")));
        }
        // 404: GitHub knows no such live token (expired, or revoked already): nothing to end.
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(true);
        }
        Err(ProviderError::InvalidResponse(format!("revocation answered {status}")))
    }

    fn revokes_by_access_token(&self) -> bool {
        // `DELETE /applications/{client_id}/token` takes an access token (`gho_`, `ghu_`), not a
        // GitHub App's refresh token (`ghr_`), which it answers with a 4xx.
        true
    }
    async fn check_access_token(&self, access_token: &str) -> Result<Option<u16>, ProviderError> {
        let response = self.send_get("user", access_token).await?;
        // A rate limit is GitHub's to lift, not the token's scopes to fix.
        match unthrottled("user", response).await? {
            Unthrottled::Answer(response) => Ok(Some(response.status().as_u16())),
            Unthrottled::Refused => Ok(Some(reqwest::StatusCode::FORBIDDEN.as_u16())),
        }
    }

    async fn checks_access_tokens(&self) -> Result<bool, ProviderError> {
        Ok(true)
    }
}
