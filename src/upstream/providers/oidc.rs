//! Any OpenID Connect issuer (and GitLab, which is one): endpoints from discovery unless
//! configured, and an id_token verified with the same key machinery as token validation —
//! issuer, audience (the client id, and only audiences the entry trusts besides it, with `azp`
//! when there are several), expiry, the algorithm allow-list, and the nonce sent with the
//! authorization request.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::oauth;
use super::{AuthorizationRequest, Provider, ProviderError, ResponseIssuer, TokenKind, TokenSet, UserInfo};
use crate::config::{JwksConfig, ProviderConfig};
use crate::domain::{DisplayName, Email};
use crate::error::ErrorChain as _;
use crate::upstream::jwks::{JwksCache, MAX_MAX_AGE, discovered_endpoint, fetch_discovery};
use crate::upstream::tokens::{IssuedAt, Rules, TokenError, token_issuer, verify_signed};

/// The endpoints of an OpenID provider.
#[derive(Debug, Clone)]
struct Metadata {
    authorization: Url,
    token: Url,
    userinfo: Option<Url>,
    revocation: Option<Url>,
    iss_parameter_supported: bool,
    /// Made of the configured endpoints alone because discovery failed: used, but not kept, so
    /// that discovery is tried again (after the back-off) for the rest.
    partial: bool,
}

impl Metadata {
    /// That the provider has no `endpoint` — unless discovery, which would say, has not been
    /// read yet: the provider is then unavailable for what needs it (a revocation that would
    /// otherwise be skipped without a word, the refresh token left live upstream).
    fn known_without(&self, endpoint: &str) -> Result<(), ProviderError> {
        match self.partial {
            true => {
                Err(ProviderError::Unavailable(format!("{endpoint} is not known until the discovery document is read")))
            }
            false => Ok(()),
        }
    }
}

/// How long discovered endpoints are kept when the document names no `Cache-Control: max-age`
/// (it is clamped to `jwks.min_max_age` … 24 hours).
const DISCOVERY_DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Complete endpoints, and until when they are fresh.
#[derive(Debug)]
struct Kept {
    metadata: Arc<Metadata>,
    fresh_until: Instant,
}

/// An OpenID Connect provider.
#[derive(Debug)]
pub struct OidcProvider {
    config: ProviderConfig,
    http: reqwest::Client,
    keys: JwksCache,
    /// The endpoints of the last discovery that succeeded.
    kept: RwLock<Option<Kept>>,
    /// Held by the one caller that reads the discovery document (again).
    discovering: tokio::sync::Mutex<()>,
    /// The configured endpoints alone, after discovery last failed (see [`Metadata::partial`]).
    partial: Mutex<Option<Arc<Metadata>>>,
    /// When discovery last failed, and how long callers are answered at once from then on
    /// (`jwks.failure_backoff`): a provider that hangs is not asked again by every sign-in in turn.
    failed_at: Mutex<Option<Instant>>,
    backoff: Duration,
    min_max_age: Duration,
}

#[derive(Debug, Deserialize)]
struct IdTokenClaims {
    sub: String,
    aud: Value,
    azp: Option<String>,
    nonce: Option<String>,
    /// When the user authenticated (seconds since the epoch, a JSON number that may have a
    /// fraction, as every NumericDate); required when `max_age` was asked.
    auth_time: Option<Value>,
    /// When the token was issued (checked by [`verify_signed`]).
    iat: Option<Value>,
    #[serde(flatten)]
    profile: Value,
}

impl IssuedAt for IdTokenClaims {
    fn issued_at(&self) -> Option<&Value> {
        self.iat.as_ref()
    }
}

impl OidcProvider {
    /// Creates the provider; discovery happens on first use.
    pub fn new(config: ProviderConfig, http: reqwest::Client, jwks: &JwksConfig) -> Self {
        let keys = JwksCache::new(config.issuer.clone(), config.endpoints.jwks.clone(), http.clone(), jwks);
        Self {
            config,
            http,
            keys,
            kept: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(()),
            partial: Mutex::new(None),
            failed_at: Mutex::new(None),
            backoff: jwks.failure_backoff,
            min_max_age: jwks.min_max_age,
        }
    }

    /// The endpoints of the last discovery that succeeded, and whether they are still fresh.
    fn kept(&self) -> Option<(Arc<Metadata>, bool)> {
        let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        kept.as_ref().map(|kept| (kept.metadata.clone(), Instant::now() < kept.fresh_until))
    }

    /// The provider's endpoints: configured ones win; the rest come from discovery, kept for the
    /// document's `max-age` (read without a lock meanwhile), then read again by one caller while
    /// the others go on with the kept ones. While discovery fails, the endpoints read before,
    /// else the configured ones, stand in, and it is tried again once the back-off has passed;
    /// concurrent first callers wait for one discovery.
    async fn metadata(&self) -> Result<Arc<Metadata>, ProviderError> {
        let kept = self.kept();
        if let Some((metadata, true)) = &kept {
            return Ok(metadata.clone());
        }
        let stale = kept.map(|(metadata, _)| metadata);
        let failed_lately = || {
            let failed_at = *self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
            failed_at.is_some_and(|at| at.elapsed() < self.backoff)
        };
        let unavailable = || ProviderError::Unavailable("the provider's discovery failed moments ago".into());
        let stand_in = |error: ProviderError| {
            stale.clone().or_else(|| self.partial.lock().unwrap_or_else(PoisonError::into_inner).clone()).ok_or(error)
        };
        if failed_lately() {
            return stand_in(unavailable());
        }
        let _discovering = match (&stale, self.discovering.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(stale), Err(_)) => return Ok(stale.clone()),
            (None, Err(_)) => self.discovering.lock().await,
        };
        // Callers that queued behind a discovery do not each read it again.
        if let Some((metadata, true)) = self.kept() {
            return Ok(metadata);
        }
        if failed_lately() {
            return stand_in(unavailable());
        }
        let found = self.discover().await;
        if let Ok((metadata, max_age)) = &found
            && !metadata.partial
        {
            let max_age = max_age.unwrap_or(DISCOVERY_DEFAULT_MAX_AGE).clamp(self.min_max_age, MAX_MAX_AGE);
            let kept = Kept { metadata: metadata.clone(), fresh_until: Instant::now() + max_age };
            *self.kept.write().unwrap_or_else(PoisonError::into_inner) = Some(kept);
            *self.failed_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
            return Ok(metadata.clone());
        }
        // Logged when the failures start, not at every retry while the provider stays down.
        let first_failure =
            self.failed_at.lock().unwrap_or_else(PoisonError::into_inner).replace(Instant::now()).is_none();
        if stale.is_some() && first_failure {
            tracing::warn!(provider = %self.config.name, "cannot read the discovery document again; keeping the endpoints read before");
        }
        match found {
            Ok((partial, _)) => {
                *self.partial.lock().unwrap_or_else(PoisonError::into_inner) = Some(partial.clone());
                Ok(stale.unwrap_or(partial))
            }
            Err(error) => stand_in(error),
        }
    }

    /// Reads the discovery document (unless every endpoint is configured); the endpoints, with
    /// the document's `max-age`.
    async fn discover(&self) -> Result<(Arc<Metadata>, Option<Duration>), ProviderError> {
        let endpoints = &self.config.endpoints;
        // Only with every endpoint configured is discovery left out: an endpoint not overridden
        // (userinfo, revocation) and the RFC 9207 `iss` flag still come from it.
        let all_configured = endpoints.authorization.is_some()
            && endpoints.token.is_some()
            && endpoints.userinfo.is_some()
            && endpoints.revocation.is_some();
        let mut partial = false;
        let (document, max_age) = if all_configured {
            (Value::Null, Some(MAX_MAX_AGE))
        } else {
            match fetch_discovery(&self.http, &self.config.issuer).await {
                Ok(found) => found,
                // With the two endpoints a sign-in needs configured, a provider without a
                // discovery document (or one this network cannot reach) still signs people in
                // (with `jwks_uri` too: see `authorization_url`) and refreshes tokens, without
                // the endpoints and the `iss` flag it would have given.
                Err(error) if endpoints.authorization.is_some() && endpoints.token.is_some() => {
                    // Logged when the failures start, not at every retry (see `metadata`).
                    if self.failed_at.lock().unwrap_or_else(PoisonError::into_inner).is_none() {
                        tracing::warn!(provider = %self.config.name, error = %error.chain(), "no discovery document; going on with the endpoints known until it is read");
                    }
                    partial = true;
                    (Value::Null, None)
                }
                Err(error) => return Err(ProviderError::Unavailable(error.chain().to_string())),
            }
        };
        let found = |field: &str| {
            discovered_endpoint(&document, field, &self.config.issuer)
                .map_err(|e| ProviderError::InvalidResponse(e.to_string()))
        };
        let missing = |field: &str| ProviderError::InvalidResponse(format!("the provider publishes no {field}"));
        let metadata = Arc::new(Metadata {
            authorization: match &endpoints.authorization {
                Some(url) => url.clone(),
                None => found("authorization_endpoint")?.ok_or_else(|| missing("authorization_endpoint"))?,
            },
            token: match &endpoints.token {
                Some(url) => url.clone(),
                None => found("token_endpoint")?.ok_or_else(|| missing("token_endpoint"))?,
            },
            userinfo: match &endpoints.userinfo {
                Some(url) => Some(url.clone()),
                None => found("userinfo_endpoint")?,
            },
            revocation: match &endpoints.revocation {
                Some(url) => Some(url.clone()),
                None => found("revocation_endpoint")?,
            },
            iss_parameter_supported: document
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            partial,
        });
        Ok((metadata, max_age))
    }

    async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<IdTokenClaims, ProviderError> {
        let invalid = |e: TokenError| match e {
            TokenError::IssuerUnavailable => ProviderError::Unavailable("the provider's keys are unavailable".into()),
            other => ProviderError::InvalidIdToken(other.to_string()),
        };
        if token_issuer(id_token).map_err(invalid)? != self.config.issuer {
            return Err(ProviderError::InvalidIdToken("the id_token names another issuer".into()));
        }
        let audiences = [self.config.client_id.clone()];
        let rules = Rules {
            algorithms: &self.config.algorithms,
            audiences: &audiences,
            leeway: std::time::Duration::from_secs(60),
        };
        let (claims, _): (IdTokenClaims, _) = verify_signed(id_token, &self.keys, &rules).await.map_err(invalid)?;
        // OpenID Connect Core 2: `iat` is required (verify_signed checks it where present).
        if claims.iat.is_none() {
            return Err(ProviderError::InvalidIdToken("the id_token has no iat".into()));
        }
        // OpenID Connect Core 3.1.3.7, step 3: every other audience is one this client trusts
        // (a token minted for another relying party too is not this sign-in's).
        let untrusted = claims.aud.as_array().into_iter().flatten().any(|audience| {
            audience.as_str().is_none_or(|audience| {
                audience != self.config.client_id
                    && !self.config.protocol.trusted_audiences.iter().any(|t| t == audience)
            })
        });
        if untrusted {
            return Err(ProviderError::InvalidIdToken(
                "the id_token names an audience this client does not trust".into(),
            ));
        }
        // Steps 4 and 5: with several audiences `azp` must be there, and when it is there it
        // names this client.
        let several = claims.aud.as_array().is_some_and(|a| a.len() > 1);
        let azp_differs = claims.azp.as_deref().is_some_and(|azp| azp != self.config.client_id);
        if azp_differs || (several && claims.azp.is_none()) {
            return Err(ProviderError::InvalidIdToken("azp does not name this client".into()));
        }
        let nonce_matches =
            claims.nonce.as_deref().is_some_and(|n| crate::crypto::constant_time_eq(n.as_bytes(), nonce.as_bytes()));
        if !nonce_matches {
            return Err(ProviderError::InvalidIdToken("the nonce does not match the sign-in".into()));
        }
        Ok(claims)
    }

    /// Claims from the userinfo endpoint, when the id_token lacks the email.
    async fn userinfo(&self, url: &Url, tokens: &TokenSet) -> Result<Value, ProviderError> {
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(tokens.access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.chain().to_string()))?;
        if response.status().is_server_error() {
            return Err(ProviderError::Unavailable(format!("userinfo answered {}", response.status())));
        }
        if !response.status().is_success() {
            return Err(ProviderError::InvalidResponse(format!("userinfo answered {}", response.status())));
        }
        super::json_answer(response, "userinfo").await
    }
}

#[async_trait]
impl Provider for OidcProvider {
    fn config(&self) -> &ProviderConfig {
        &self.config
    }

    async fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, ProviderError> {
        let metadata = self.metadata().await?;
        // The id token's keys are found through the discovery document unless `jwks_uri` is
        // configured: without either, no id token could be checked, and the browser is not sent
        // to the provider for a code that would be spent for nothing.
        if metadata.partial && self.config.endpoints.jwks.is_none() {
            return Err(ProviderError::Unavailable(
                "no discovery document, and no jwks_uri configured: the id token's keys cannot be found".into(),
            ));
        }
        Ok(oauth::authorization_url(&self.config, &metadata.authorization, request, true))
    }

    fn attests_authentication_time(&self) -> bool {
        // Asked for with `max_age=0`, which makes the id_token carry `auth_time`; a provider
        // asked only to choose the account again (Google) need not re-authenticate.
        self.config.protocol.fresh_login.asks_auth_time()
    }

    async fn response_issuer(&self) -> Result<ResponseIssuer, ProviderError> {
        let metadata = self.metadata().await?;
        Ok(ResponseIssuer { issuer: self.config.issuer.clone(), required: metadata.iss_parameter_supported })
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        let metadata = self.metadata().await?;
        oauth::exchange_code(&self.http, &self.config, &metadata.token, code, pkce_verifier, redirect_uri).await
    }

    async fn user_info(&self, tokens: &TokenSet, nonce: &str) -> Result<UserInfo, ProviderError> {
        let id_token = tokens
            .id_token
            .as_deref()
            .ok_or_else(|| ProviderError::InvalidIdToken("the token response has no id_token".into()))?;
        let claims = self.verify_id_token(id_token, nonce).await?;
        let mut profile = claims.profile;
        let (userinfo, email_unread) = match profile.get("email") {
            Some(_) => (None, false),
            None => {
                let metadata = self.metadata().await?;
                // Not known to have none while discovery is unread: said, for a first sign-in
                // to wait (see `UserInfo::email_unread`).
                let unread = metadata.userinfo.is_none() && metadata.partial;
                (metadata.userinfo.clone(), unread)
            }
        };
        if let Some(url) = userinfo {
            let extra = self.userinfo(&url, tokens).await?;
            // Only claims about the same subject may be merged (OpenID Connect Core 5.3.2).
            if extra.get("sub").and_then(Value::as_str) == Some(claims.sub.as_str())
                && let (Value::Object(profile), Value::Object(extra)) = (&mut profile, extra)
            {
                // The email comes from userinfo, and so does whether it is verified: the
                // id_token's `email_verified`, about no email of its own, must not vouch for it.
                profile.remove("email_verified");
                for (key, value) in extra {
                    profile.entry(key).or_insert(value);
                }
            }
        }
        let mut info = profile_into_user_info(claims.sub, &profile);
        info.email_unread = email_unread && info.email.is_none();
        info.authenticated_at = match claims.auth_time {
            None => None,
            Some(seconds) => Some(
                seconds
                    .as_f64()
                    // Not before 1970: no sign-in was, and the databases keep no time of 4713 BC.
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0) as i64))
                    .ok_or_else(|| ProviderError::InvalidIdToken("auth_time is not a time".into()))?,
            ),
        };
        Ok(info)
    }

    async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, ProviderError> {
        let metadata = self.metadata().await?;
        oauth::refresh(&self.http, &self.config, &metadata.token, refresh_token).await
    }

    async fn revoke(&self, token: &str, kind: TokenKind) -> Result<bool, ProviderError> {
        let metadata = self.metadata().await?;
        match metadata.revocation.clone() {
            Some(url) => oauth::revoke(&self.http, &self.config, &url, token, kind).await.map(|()| true),
            None => metadata.known_without("a revocation endpoint").map(|()| false),
        }
    }

    async fn check_access_token(&self, access_token: &str) -> Result<Option<u16>, ProviderError> {
        let metadata = self.metadata().await?;
        let Some(url) = metadata.userinfo.clone() else {
            return metadata.known_without("a userinfo endpoint").map(|()| None);
        };
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.chain().to_string()))?;
        Ok(Some(response.status().as_u16()))
    }

    async fn checks_access_tokens(&self) -> Result<bool, ProviderError> {
        let metadata = self.metadata().await?;
        match metadata.userinfo {
            Some(_) => Ok(true),
            None => metadata.known_without("a userinfo endpoint").map(|()| false),
        }
    }
}

/// Maps OpenID claims to a [`UserInfo`].
fn profile_into_user_info(subject: String, profile: &Value) -> UserInfo {
    let text = |field: &str| profile.get(field).and_then(Value::as_str).map(str::to_owned);
    let email = text("email").and_then(|e| Email::parse(&e).ok());
    let email_verified = email.is_some()
        && match profile.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
    let name = text("name").or_else(|| {
        let parts: Vec<String> = [text("given_name"), text("family_name")].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    UserInfo {
        account_id: subject,
        login: text("preferred_username").or_else(|| text("nickname")),
        email,
        email_verified,
        name: DisplayName::parse_optional(name.as_deref()).ok().flatten().map(|n| n.as_str().to_owned()),
        avatar_url: text("picture"),
        authenticated_at: None,
        email_unread: false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_map_to_a_provider_agnostic_profile() {
        let info = profile_into_user_info(
            "42".into(),
            &json!({"email": "Ada@Example.com", "email_verified": "true", "given_name": "Ada",
                    "family_name": "Lovelace", "nickname": "ada", "picture": "https://x/a.png"}),
        );
        assert_eq!(info.account_id, "42");
        assert_eq!(info.email.unwrap().as_str(), "Ada@example.com");
        assert!(info.email_verified);
        assert_eq!(info.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(info.login.as_deref(), Some("ada"));
        let unverified = profile_into_user_info("1".into(), &json!({"email": "a@b.example"}));
        assert!(!unverified.email_verified);
        let bad_email = profile_into_user_info("1".into(), &json!({"email": "nope", "email_verified": true}));
        assert!(bad_email.email.is_none() && !bad_email.email_verified);
    }

    /// Endpoints made of the configuration alone, discovery not read yet, do not say the
    /// provider has no revocation or userinfo endpoint: a revocation is then unavailable (and
    /// logged as failed), not skipped as if the provider offered none.
    #[test]
    fn a_missing_endpoint_is_known_only_once_discovery_was_read() {
        let url = Url::parse("https://sso.example.com/authorize").unwrap();
        let mut metadata = Metadata {
            authorization: url.clone(),
            token: url,
            userinfo: None,
            revocation: None,
            iss_parameter_supported: false,
            partial: true,
        };
        let unknown = metadata.known_without("a revocation endpoint").unwrap_err();
        assert!(matches!(&unknown, ProviderError::Unavailable(why) if why.contains("revocation")), "{unknown:?}");
        metadata.partial = false;
        assert!(metadata.known_without("a revocation endpoint").is_ok());
    }
}
