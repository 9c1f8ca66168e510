//! Upstream sign-in providers behind one trait, and the registry built from configuration.
//!
//! Built-in kinds: `oidc` (any OpenID Connect issuer, through discovery; the id_token is verified
//! with the same key machinery as token validation), `gitlab` (the same, with GitLab's defaults),
//! `github` (OAuth2 and the REST API) and `oauth2` (plain OAuth 2.0, the profile read with JSON
//! pointers). Adding a provider is a config entry (often just a catalogue template), or one
//! implementation of [`Provider`].

mod generic;
mod github;
mod oauth;
mod oidc;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use url::Url;

use crate::config::{JwksConfig, ProviderConfig, ProviderKind};
use crate::domain::{Email, Issuer};
use crate::error::{ErrorCode, PublicError};

/// How long a refresh at a provider's token endpoint may take at most: longer than the timeout
/// of other outbound requests (`jwks.fetch_timeout_ms`), because a provider that rotates refresh
/// tokens has spent the old one by the time it answers, and an answer cut off loses the
/// connection. Callers may bound it further (a refresh lease's time left).
pub const REFRESH_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

pub use generic::OAuth2Provider;
pub use github::GitHubProvider;
pub use oidc::OidcProvider;

/// What the browser is sent to the provider with. Its `Debug` hides the state, the PKCE
/// verifier and the nonce.
#[derive(Clone, Copy)]
pub struct AuthorizationRequest<'a> {
    /// Where the provider sends the browser back.
    pub redirect_uri: &'a Url,
    /// The state value (≥ 256 random bits).
    pub state: &'a str,
    /// The PKCE verifier; the provider sends its S256 challenge.
    pub pkce_verifier: &'a str,
    /// The OpenID nonce.
    pub nonce: &'a str,
    /// Scopes to ask for instead of the provider's configured ones.
    pub scopes: Option<&'a [String]>,
    /// Ask for a fresh authentication: `prompt=login` (instead of any configured `prompt`), and
    /// for OpenID Connect `max_age=0`, which makes the id_token carry `auth_time`; or, from a
    /// provider that takes no `prompt=login`, its [`crate::config::FreshLogin`] alone.
    pub fresh_login: bool,
    /// Whether Tessera keeps the tokens of this flow (a connected account, or a sign-in through
    /// an entry with `store_tokens`): the provider's offline parameters are sent too.
    pub offline: bool,
}

crate::debug_redacted!(AuthorizationRequest<'a> {
    shown: [redirect_uri, scopes, fresh_login, offline],
    secret: [state, pkce_verifier, nonce],
});

/// Which of a grant's tokens a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The access token.
    Access,
    /// The refresh token (which ends the whole grant at an RFC 7009 provider).
    Refresh,
}

impl TokenKind {
    /// RFC 7009's `token_type_hint` for it.
    pub fn hint(self) -> &'static str {
        match self {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "refresh_token",
        }
    }
}

/// Tokens from a provider's token endpoint. Its `Debug` shows no token: the id_token, like the
/// others, is a bearer credential at the apps that accept it.
#[derive(Clone)]
pub struct TokenSet {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, if one was issued.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires, if said.
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted scopes, if said.
    pub scopes: Vec<String>,
    /// The OpenID id_token, if any.
    pub id_token: Option<String>,
    /// The answer's other fields, which some providers' profiles are read from (Notion).
    pub fields: TokenFields,
}

impl Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("id_token", &self.id_token.as_ref().map(|_| "[REDACTED]"))
            .field("fields", &self.fields)
            .finish()
    }
}

/// The other fields of a token answer. They may hold secrets (Slack's webhook URLs), so `Debug`
/// shows their names only.
#[derive(Clone, Default)]
pub struct TokenFields(pub serde_json::Map<String, serde_json::Value>);

impl Debug for TokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A provider-agnostic profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The stable account id at the provider (never the login, which users can change).
    pub account_id: String,
    /// The login or preferred user name.
    pub login: Option<String>,
    /// The email, if the provider gave one.
    pub email: Option<Email>,
    /// Whether the provider says the email is verified.
    pub email_verified: bool,
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// When the user last authenticated at the provider (an id_token's `auth_time`); `None` from
    /// providers that do not say.
    pub authenticated_at: Option<DateTime<Utc>>,
    /// Without an email, whether the provider may have one this sign-in could not read: an
    /// OpenID provider's userinfo endpoint is not known until its discovery document is read.
    /// A first sign-in waits for it (the email may be one an account holds); others need none.
    pub email_unread: bool,
}

/// How the `iss` parameter of an authorization response (RFC 9207) is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseIssuer {
    /// The value `iss` must have when present.
    pub issuer: Issuer,
    /// Whether the provider advertises it, so that it must be present.
    pub required: bool,
}

/// A provider's JSON answer, read no further than [`read_capped`](crate::upstream::jwks::read_capped)
/// allows; `what` names it in the error.
pub(crate) async fn json_answer<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    what: &str,
) -> Result<T, ProviderError> {
    // A body cut off (a reset, the time limit) is the provider's outage, not an answer.
    let body = crate::upstream::jwks::read_capped(&mut response)
        .await
        .map_err(|e| ProviderError::Unavailable(format!("{what}: {e}")))?
        .ok_or_else(|| ProviderError::InvalidResponse(format!("{what}: the answer is too large")))?;
    serde_json::from_slice(&body).map_err(|e| ProviderError::InvalidResponse(format!("{what}: {e}")))
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the authorization code (`invalid_grant`).
    #[error("the provider refused the authorization code")]
    InvalidCode,
    /// The provider refused the refresh token (`invalid_grant`).
    #[error("the provider refused the refresh token")]
    InvalidGrant,
    /// The id_token does not verify (signature, issuer, audience, expiry or nonce).
    #[error("the id_token is not acceptable: {0}")]
    InvalidIdToken(String),
    /// The provider cannot be reached, or answered with a server error.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something Tessera cannot use.
    #[error("the provider answered unexpectedly: {0}")]
    InvalidResponse(String),
}

impl PublicError for ProviderError {
    fn code(&self) -> ErrorCode {
        match self {
            ProviderError::InvalidCode | ProviderError::InvalidGrant => ErrorCode::InvalidCode,
            ProviderError::InvalidIdToken(_) => ErrorCode::InvalidIdToken,
            ProviderError::Unavailable(_) | ProviderError::InvalidResponse(_) => ErrorCode::ProviderUnavailable,
        }
    }
}

/// An upstream provider.
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// Its configuration (name, issuer, client, settings).
    fn config(&self) -> &ProviderConfig;

    /// Its unique name.
    fn name(&self) -> &str {
        &self.config().name
    }

    /// The issuer that keys this provider's identities.
    fn identity_issuer(&self) -> &Issuer {
        &self.config().issuer
    }

    /// The URL to send the browser to.
    async fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, ProviderError>;

    /// Whether the provider's answer says when the user authenticated
    /// ([`UserInfo::authenticated_at`]), so that a fresh authentication can be checked rather
    /// than only asked for. OpenID Connect providers do; plain OAuth 2.0 ones cannot.
    fn attests_authentication_time(&self) -> bool {
        false
    }

    /// How to check the `iss` parameter of the authorization response.
    async fn response_issuer(&self) -> Result<ResponseIssuer, ProviderError>;

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError>;

    /// The profile behind `tokens`; `nonce` is the one sent with the authorization request.
    async fn user_info(&self, tokens: &TokenSet, nonce: &str) -> Result<UserInfo, ProviderError>;

    /// Exchanges a refresh token for fresh tokens, waiting up to [`REFRESH_CALL_LIMIT`] for the
    /// provider's answer (not the shorter timeout of the other outbound requests).
    async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, ProviderError>;

    /// Revokes a token at the provider, where it offers a way to; `Ok(false)` when it does not.
    /// Which token: see [`Provider::revokes_by_access_token`]; `kind` says which it is (RFC 7009's
    /// `token_type_hint`).
    async fn revoke(&self, token: &str, kind: TokenKind) -> Result<bool, ProviderError>;

    /// Whether [`Provider::revoke`] takes the access token even when there is a refresh token.
    /// RFC 7009 providers take the refresh token, which ends the whole grant; GitHub's API
    /// revokes access tokens only.
    fn revokes_by_access_token(&self) -> bool {
        false
    }

    /// Checks that an access token works by calling the provider's user endpoint with it (OpenID
    /// userinfo, GitHub's `GET /user`): the HTTP status it answered, or `None` when the provider
    /// has no such endpoint. Only a failure to get an answer at all is an error.
    async fn check_access_token(&self, access_token: &str) -> Result<Option<u16>, ProviderError> {
        let _ = access_token;
        Ok(None)
    }

    /// Whether [`Provider::check_access_token`] has an endpoint to call: asked before a token is
    /// read (and perhaps refreshed) for a check that cannot be made.
    async fn checks_access_tokens(&self) -> Result<bool, ProviderError> {
        Ok(false)
    }
}

/// The configured providers by name.
#[derive(Debug, Default)]
pub struct ProviderRegistry {
    providers: HashMap<String, Arc<dyn Provider>>,
    default: Option<String>,
}

impl ProviderRegistry {
    /// Builds every configured provider. Names are unique (checked with the configuration).
    pub fn new(configs: &[ProviderConfig], default: Option<String>, http: reqwest::Client, jwks: &JwksConfig) -> Self {
        let providers = configs
            .iter()
            .map(|config| {
                let provider: Arc<dyn Provider> = match config.kind {
                    ProviderKind::Oidc | ProviderKind::GitLab => {
                        Arc::new(OidcProvider::new(config.clone(), http.clone(), jwks))
                    }
                    ProviderKind::GitHub => Arc::new(GitHubProvider::new(config.clone(), http.clone())),
                    ProviderKind::OAuth2 => Arc::new(OAuth2Provider::new(config.clone(), http.clone())),
                };
                (config.name.clone(), provider)
            })
            .collect();
        Self { providers, default }
    }

    /// A provider by name, or the default one when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name.or(self.default.as_deref())?)
    }

    /// The provider a sign-in without a choice goes through: `auth.default_provider`, else the
    /// only one people sign in with; `None` when several are and none is the default (the
    /// chooser decides).
    pub fn default_or_only(&self) -> Option<&Arc<dyn Provider>> {
        self.get(None).or_else(|| {
            let mut all = self.all();
            match (all.next(), all.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        })
    }

    /// The sign-in provider of a team's issuer ([`crate::service::teams::Discovery::Sso`]): the
    /// one named like the issuer's configuration, else the first (by name) that signs in
    /// through that issuer — never one of another issuer, whatever its name.
    pub fn for_issuer(&self, name: &str, issuer: &Issuer) -> Option<&Arc<dyn Provider>> {
        let signs_in_there = |p: &&Arc<dyn Provider>| p.config().protocol.sign_in && p.identity_issuer() == issuer;
        self.providers.get(name).filter(signs_in_there).or_else(|| self.all().find(signs_in_there))
    }

    /// The issuers of the identities people can sign in with here (see [`Self::all`]).
    pub fn sign_in_issuers(&self) -> Vec<Issuer> {
        self.all().map(|p| p.identity_issuer().clone()).collect()
    }

    /// Every provider people sign in with, by name (those serving connected accounts only, such
    /// as Slack's workspaces, are left out).
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        let mut providers: Vec<_> = self.providers.values().filter(|p| p.config().protocol.sign_in).collect();
        providers.sort_by(|a, b| a.name().cmp(b.name()));
        providers.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_set_debugs_without_its_tokens() {
        let fields = serde_json::json!({ "incoming_webhook": { "url": "https://hooks.example/T0/secret-path" } });
        let tokens = TokenSet {
            access_token: SecretString::from("access-secret"),
            refresh_token: Some(SecretString::from("refresh-secret")),
            expires_at: None,
            scopes: vec!["openid".into()],
            id_token: Some("eyJhbGciOiJSUzI1NiJ9.id-token-payload.signature".into()),
            fields: TokenFields(fields.as_object().unwrap().clone()),
        };
        let shown = format!("{tokens:?}");
        for secret in ["access-secret", "refresh-secret", "id-token-payload", "secret-path"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("openid") && shown.contains("incoming_webhook"), "{shown}");
    }
}
