//! Plain OAuth 2.0 providers (kind `oauth2`: Slack, Notion, Linear, Microsoft through Graph, …):
//! the authorization-code flow on configured endpoints, and a profile read with JSON pointers
//! from a profile endpoint — or, without one, from the token answer itself (Notion).
//!
//! Identities are keyed by the configured issuer (the provider's site) and the account id the
//! pointer finds; an email counts as verified only when a configured pointer says so.

use crate::error::ErrorChain as _;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use super::oauth;
use super::{AuthorizationRequest, Provider, ProviderError, ResponseIssuer, TokenKind, TokenSet, UserInfo};
use crate::config::{ProfileMapping, ProviderConfig, UserinfoMethod};
use crate::domain::{DisplayName, Email};

/// A plain OAuth 2.0 provider.
#[derive(Debug)]
pub struct OAuth2Provider {
    config: ProviderConfig,
    http: reqwest::Client,
    authorize: Url,
    token: Url,
    profile: ProfileMapping,
}

impl OAuth2Provider {
    /// Creates the provider. The configuration guarantees both endpoints and the account-id
    /// pointer of an `oauth2` entry.
    pub fn new(config: ProviderConfig, http: reqwest::Client) -> Self {
        let authorize =
            config.endpoints.authorization.clone().expect("an oauth2 provider has an authorization endpoint");
        let token = config.endpoints.token.clone().expect("an oauth2 provider has a token endpoint");
        let profile = config.protocol.profile.clone().expect("an oauth2 provider has a profile mapping");
        Self { config, http, authorize, token, profile }
    }

    /// The request to the user endpoint, as configured (method and body), without credentials.
    fn profile_request(&self, url: &Url) -> reqwest::RequestBuilder {
        match self.profile.method {
            UserinfoMethod::Get => self.http.get(url.clone()),
            UserinfoMethod::Post => {
                let request = self.http.post(url.clone());
                match &self.profile.body {
                    Some(body) => request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone()),
                    None => request,
                }
            }
        }
    }

    /// The profile document: the profile endpoint's answer, or the token answer without one.
    /// The user endpoint `url` called with `access_token`, as sign-in and a token's test call it.
    async fn call_user_endpoint(&self, url: &Url, access_token: &str) -> Result<reqwest::Response, ProviderError> {
        self.profile_request(url)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.chain().to_string()))
    }

    async fn profile_document(&self, tokens: &TokenSet) -> Result<Value, ProviderError> {
        let Some(url) = &self.config.endpoints.userinfo else {
            return Ok(Value::Object(tokens.fields.0.clone()));
        };
        let response = self.call_user_endpoint(url, tokens.access_token.expose_secret()).await?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!("the profile endpoint answered {status}")));
        }
        if !status.is_success() {
            return Err(ProviderError::InvalidResponse(format!("the profile endpoint answered {status}")));
        }
        super::json_answer(response, "the profile endpoint").await
    }
}

/// Maps a profile document to a [`UserInfo`] through the configured pointers.
fn user_info(profile: &ProfileMapping, document: &Value) -> Result<UserInfo, ProviderError> {
    let text = |pointer: &Option<String>| -> Option<String> {
        match document.pointer(pointer.as_deref()?)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let account_id = text(&Some(profile.account_id.clone())).ok_or_else(|| {
        ProviderError::InvalidResponse(format!("the profile has no account id at {}", profile.account_id))
    })?;
    let email = text(&profile.email).and_then(|e| Email::parse(&e).ok());
    let email_verified = email.is_some()
        && profile.email_verified.as_deref().and_then(|p| document.pointer(p)).and_then(Value::as_bool) == Some(true);
    Ok(UserInfo {
        account_id,
        login: text(&profile.login),
        email,
        email_verified,
        name: DisplayName::parse_optional(text(&profile.name).as_deref()).ok().flatten().map(|n| n.as_str().to_owned()),
        avatar_url: None,
        authenticated_at: None,
        email_unread: false,
    })
}

#[async_trait]
impl Provider for OAuth2Provider {
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
        let document = self.profile_document(tokens).await?;
        user_info(&self.profile, &document)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, ProviderError> {
        oauth::refresh(&self.http, &self.config, &self.token, refresh_token).await
    }

    /// The status of the configured user endpoint called with the token (the request sign-in
    /// uses); `None` when the template reads the account from the token answer instead. A
    /// success whose body names no account but refuses the token (Slack's `auth.test` answers a
    /// revoked token with `200 {"ok": false, "error": "token_revoked"}`) is the refusal it is:
    /// 401. Any other such success — a proxy's HTML page, Slack's `service_unavailable`, a body
    /// cut off — says nothing of the token: the provider answered unexpectedly.
    async fn check_access_token(&self, access_token: &str) -> Result<Option<u16>, ProviderError> {
        let Some(url) = &self.config.endpoints.userinfo else {
            return Ok(None);
        };
        let response = self.call_user_endpoint(url, access_token).await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Ok(Some(status));
        }
        let document: serde_json::Value = super::json_answer(response, "the profile endpoint").await?;
        if user_info(&self.profile, &document).is_ok() {
            return Ok(Some(status));
        }
        match document.get("error").and_then(serde_json::Value::as_str) {
            Some(error) if refuses_the_token(error) => Ok(Some(401)),
            _ => Err(ProviderError::InvalidResponse("the profile endpoint's success names no account".into())),
        }
    }

    async fn checks_access_tokens(&self) -> Result<bool, ProviderError> {
        Ok(self.config.endpoints.userinfo.is_some())
    }

    async fn revoke(&self, token: &str, kind: TokenKind) -> Result<bool, ProviderError> {
        match &self.config.endpoints.revocation {
            Some(url) => oauth::revoke(&self.http, &self.config, url, token, kind).await.map(|()| true),
            None => Ok(false),
        }
    }
}

/// Whether an error named in a successful answer's body refuses the access token itself
/// (Slack's names, and OAuth's own), rather than say the provider failed.
fn refuses_the_token(error: &str) -> bool {
    matches!(
        error.to_ascii_lowercase().as_str(),
        "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" | "account_inactive" | "invalid_token"
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping(account_id: &str) -> ProfileMapping {
        ProfileMapping {
            method: UserinfoMethod::Get,
            body: None,
            account_id: account_id.into(),
            login: Some("/workspace_name".into()),
            email: Some("/owner/user/person/email".into()),
            email_verified: None,
            name: Some("/owner/user/name".into()),
        }
    }

    #[test]
    fn pointers_find_the_profile_and_an_unverifiable_email_is_unverified() {
        let answer = json!({"workspace_id": "ws-1", "workspace_name": "Acme",
                            "owner": {"user": {"name": "Ada", "person": {"email": "ada@acme.example"}}}});
        let info = user_info(&mapping("/workspace_id"), &answer).unwrap();
        assert_eq!(info.account_id, "ws-1");
        assert_eq!(info.login.as_deref(), Some("Acme"));
        assert_eq!(info.name.as_deref(), Some("Ada"));
        assert_eq!(info.email.unwrap().as_str(), "ada@acme.example");
        assert!(!info.email_verified, "no pointer says it is verified");
        let numeric = user_info(&mapping("/portalId"), &json!({"portalId": 62515})).unwrap();
        assert_eq!(numeric.account_id, "62515");
        let mut verified = mapping("/id");
        verified.email = Some("/email".into());
        verified.email_verified = Some("/email_verified".into());
        let info = user_info(&verified, &json!({"id": "x", "email": "a@b.example", "email_verified": true})).unwrap();
        assert!(info.email_verified);
        assert!(user_info(&mapping("/workspace_id"), &json!({"workspace_id": ""})).is_err());
        assert!(user_info(&mapping("/missing"), &answer).is_err());
    }
}
