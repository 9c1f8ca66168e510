//! The server-side authorization-code flow shared by sign-in, identity linking and connected
//! accounts.
//!
//! [`OAuthFlows::begin`] draws a 256-bit binding secret for the browser, whose SHA-256 is the
//! flow's `state`, and stores the flow — the SHA-256 of that state, the provider, a random salt,
//! `return_to` (sealed under a key derived from the binding secret and the salt), what the flow
//! is for, and a 10-minute expiry — and returns the provider's
//! authorization URL plus the binding secret, which the HTTP layer puts in a cookie so that the
//! callback can prove it comes back to the same browser. The PKCE verifier and the nonce are
//! derived from the binding secret and the salt, so neither the database nor the URLs the
//! browser visits (state and code) hold what it takes to complete the flow.
//! [`OAuthFlows::finish`] consumes that row atomically (exactly once), takes the provider from it
//! (never from the callback), checks the RFC 9207 `iss`, exchanges the code and reads the profile.
//! What happens next depends on the flow's [`Purpose`].

use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::providers::{AuthorizationRequest, Provider, ProviderError, ProviderRegistry, TokenSet, UserInfo};
use crate::crypto::keyring::KeyRing;
use crate::crypto::{
    constant_time_eq, derive_key, derive_secret, random_bytes, random_secret, sha256, sha256_base64url,
};
use crate::domain::{Issuer, ProfileId, ReturnTo, Subject, UserId};
use crate::error::{ErrorCode, PublicError};
use crate::store::{LoginState, Store, StoreError};

/// How long a flow may take, from `begin` to the callback.
pub const FLOW_TTL: TimeDelta = TimeDelta::minutes(10);

/// The `state` of the flow whose browser holds `binding`: its SHA-256, base64url.
fn state_of(binding: &str) -> String {
    sha256_base64url(binding.as_bytes())
}

/// A flow's PKCE verifier and OpenID nonce, from the browser's binding secret and the flow's salt.
fn derived_secrets(binding: &str, salt: &[u8; 32]) -> (SecretString, SecretString) {
    let key = binding.as_bytes();
    (
        derive_secret(key, "tessera login_state pkce_verifier", salt),
        derive_secret(key, "tessera login_state nonce", salt),
    )
}

/// The prefix of a stored `return_to` sealed under a key derived from the binding secret and the
/// salt (a path may hold a secret: a connect link's token, while its user signs in first).
/// Rows of an earlier release hold it in the clear; no `return_to` starts with this.
const SEALED: &str = "sealed:";

/// The key that seals a flow's `return_to`: only the browser's binding secret and the flow's
/// salt together give it.
fn return_to_key(binding: &str, salt: &[u8; 32]) -> KeyRing {
    KeyRing::of_key("flow", &derive_key(binding.as_bytes(), "tessera login_state return_to", salt))
}

/// `return_to` as stored: sealed, bound to the flow's state.
fn seal_return_to(binding: &str, salt: &[u8; 32], state_hash: &[u8; 32], return_to: &str) -> String {
    let sealed = return_to_key(binding, salt).encrypt(return_to.as_bytes(), state_hash);
    format!("{SEALED}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// The `return_to` of a stored flow: opened when sealed, else as an earlier release stored it.
fn open_return_to(binding: &str, flow: &LoginState) -> Result<String, FlowError> {
    let (Some(sealed), Some(salt)) = (flow.return_to.strip_prefix(SEALED), flow.salt.as_ref()) else {
        return Ok(flow.return_to.clone());
    };
    let unreadable = || FlowError::InvalidState("the sign-in's stored state cannot be read");
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sealed).map_err(|_| unreadable())?;
    let opened = return_to_key(binding, salt).decrypt(&sealed, &flow.state_hash).map_err(|_| unreadable())?;
    String::from_utf8(opened).map_err(|_| unreadable())
}

/// How far before the start of a flow that asked for a fresh login the provider's `auth_time`
/// may lie: the provider's clock may be a little behind ours.
const FRESH_LOGIN_LEEWAY: TimeDelta = TimeDelta::seconds(60);

/// What a flow is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Signing a browser in.
    SignIn,
    /// Linking another identity to a signed-in user.
    Link {
        /// The user.
        user: UserId,
    },
    /// Connecting a third-party account to an auth profile.
    Connect {
        /// The user the connect link was for.
        user: UserId,
        /// The profile.
        profile: ProfileId,
        /// The profile's version when the flow started.
        version: i64,
        /// Whether another upstream account may replace the connected one.
        allow_account_change: bool,
    },
}

/// A provider name a client sent, fit to be repeated in an error: one that could be a provider's
/// name; anything else (a pasted secret, kilobytes of text) is not repeated.
pub fn shown_provider(name: &str) -> String {
    if crate::config::is_provider_name(name) { name.to_owned() } else { "(not a provider name)".to_owned() }
}

/// Why a flow could not begin or finish.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// No provider has that name.
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    /// The state is missing, unknown, expired, used, or not this browser's.
    #[error("{0}")]
    InvalidState(&'static str),
    /// The callback path names another provider than the flow started with.
    #[error("the callback is for another provider than the sign-in started with")]
    ProviderMismatch,
    /// The authorization response's `iss` is wrong or missing.
    #[error("the authorization response's issuer is not the provider's")]
    IssuerMismatch,
    /// The callback has no code.
    #[error("the callback carries no authorization code")]
    MissingCode,
    /// The provider returned an error instead of a code.
    #[error("the provider refused the sign-in ({0})")]
    Denied(String),
    /// A fresh login was asked for, and the provider's id_token does not show one.
    #[error("the provider did not sign the user in again, as this sign-in asked")]
    NotFresh,
    /// A provider call failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for FlowError {
    fn code(&self) -> ErrorCode {
        match self {
            FlowError::UnknownProvider(_) => ErrorCode::UnknownProvider,
            FlowError::InvalidState(_) => ErrorCode::InvalidState,
            FlowError::ProviderMismatch => ErrorCode::ProviderMismatch,
            FlowError::IssuerMismatch => ErrorCode::IssuerMismatch,
            FlowError::MissingCode => ErrorCode::InvalidCode,
            FlowError::Denied(word) => match word.as_str() {
                "access_denied" => ErrorCode::ProviderDenied,
                // The provider's own outage (RFC 6749 4.1.2.1), for a retry to cure.
                "server_error" | "temporarily_unavailable" => ErrorCode::ProviderUnavailable,
                _ => ErrorCode::ProviderRefused,
            },
            FlowError::NotFresh => ErrorCode::LoginNotFresh,
            FlowError::Provider(e) => e.code(),
            FlowError::Store(e) => e.code(),
        }
    }
}

/// A started flow: where to send the browser, and the secret to bind it to the browser.
#[derive(Debug, Clone)]
pub struct Started {
    /// The provider's authorization URL.
    pub location: Url,
    /// The binding secret, for the browser's cookie only: the flow's `state` is its SHA-256.
    pub binding: SecretString,
}

/// A flow [`OAuthFlows::take`] took for its callback. Its `Debug` hides the binding secret.
pub struct Taken<'a> {
    /// The flow, as it was stored.
    pub flow: LoginState,
    /// The browser's binding secret that matched the callback's state (for its cookie to drop).
    pub binding: &'a str,
    /// Whether the callback came back on the path of the provider the flow was started with.
    /// Checked by [`finish`](OAuthFlows::finish), so that a refusal is recorded as the link or
    /// connection the flow was for.
    on_its_path: bool,
}

crate::debug_redacted!(Taken<'a> { shown: [flow], secret: [binding] });

/// The query of a callback. Its `Debug` hides the code and the state.
#[derive(Clone, Default)]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The state value.
    pub state: Option<String>,
    /// The RFC 9207 issuer.
    pub iss: Option<String>,
    /// An error instead of a code.
    pub error: Option<String>,
}

crate::debug_redacted!(Callback { shown: [iss, error], secret: [code, state] });

/// A finished flow: the provider's answer, and what the flow was for.
#[derive(Debug)]
pub struct Finished {
    /// What the flow is for.
    pub purpose: Purpose,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// The tokens from the code exchange.
    pub tokens: TokenSet,
    /// The profile.
    pub info: UserInfo,
    /// The account id as a subject.
    pub subject: Subject,
    /// Where to send the browser.
    pub return_to: String,
    /// When the user last authenticated at the provider, as far as the flow proves it: the
    /// provider's `auth_time` (no later than now, and for a flow that asked for a fresh login no
    /// earlier than the flow's start, which the check allowed for the provider's clock), else the
    /// start of a flow that asked a provider that cannot say; `None` when unknown.
    pub authenticated_at: Option<DateTime<Utc>>,
}

/// The flow machinery.
#[derive(Debug, Clone)]
pub struct OAuthFlows {
    providers: Arc<ProviderRegistry>,
    store: Arc<dyn Store>,
    public_url: Option<Url>,
}

impl OAuthFlows {
    /// Creates the machinery; callback URLs are `<public_url>/auth/callback/<provider>`.
    pub fn new(providers: Arc<ProviderRegistry>, store: Arc<dyn Store>, public_url: Option<Url>) -> Self {
        Self { providers, store, public_url }
    }

    /// The configured providers.
    pub fn providers(&self) -> &ProviderRegistry {
        &self.providers
    }

    /// The provider named `name` (the default one for `None`).
    pub fn provider(&self, name: Option<&str>) -> Result<&Arc<dyn Provider>, FlowError> {
        self.providers
            .get(name)
            .ok_or_else(|| FlowError::UnknownProvider(name.map_or_else(|| "(default)".to_owned(), shown_provider)))
    }

    /// A provider people sign in with (or link), by name (`None`: the default one): one for
    /// connected accounts only (its account is a workspace) signs no one in, and is not found.
    pub fn sign_in_provider(&self, name: Option<&str>) -> Result<&Arc<dyn Provider>, FlowError> {
        let provider = self.provider(name)?;
        if !provider.config().protocol.sign_in {
            return Err(FlowError::UnknownProvider(provider.name().to_owned()));
        }
        Ok(provider)
    }

    /// The callback URL of a provider.
    pub fn callback_url(&self, provider: &str) -> Url {
        let base = self.public_url.as_ref().map_or("http://127.0.0.1", |u| u.as_str()).trim_end_matches('/');
        Url::parse(&format!("{base}/auth/callback/{provider}")).expect("a provider name is URL-safe")
    }

    /// The origin of `auth.public_url` (`https://id.example.com`), when it is configured.
    pub fn public_origin(&self) -> Option<String> {
        self.public_url.as_ref().map(|url| url.origin().ascii_serialization())
    }

    /// The host browsers reach Tessera at: `auth.public_url`'s, else `127.0.0.1`.
    pub fn public_host(&self) -> &str {
        self.public_url.as_ref().and_then(|url| url.host_str()).unwrap_or("127.0.0.1")
    }

    /// The base URL browsers reach Tessera at.
    pub fn public_url(&self) -> String {
        self.public_url.as_ref().map_or("http://127.0.0.1", |u| u.as_str()).trim_end_matches('/').to_owned()
    }

    /// Starts a flow with `provider`, asking for `scopes` (or the provider's own); with
    /// `fresh_login`, asking for a new authentication and, at the callback, refusing an answer
    /// whose `auth_time` is older than the flow (where the provider states it).
    pub async fn begin(
        &self,
        provider: &Arc<dyn Provider>,
        return_to: &ReturnTo,
        purpose: Purpose,
        scopes: Option<&[String]>,
        fresh_login: bool,
    ) -> Result<Started, FlowError> {
        let binding = random_secret();
        let state = state_of(binding.expose_secret());
        let salt = random_bytes::<32>();
        let (pkce_verifier, nonce) = derived_secrets(binding.expose_secret(), &salt);
        let offline = matches!(purpose, Purpose::Connect { .. }) || provider.config().store_tokens;
        let location = provider
            .authorization_url(&AuthorizationRequest {
                redirect_uri: &self.callback_url(provider.name()),
                state: &state,
                pkce_verifier: pkce_verifier.expose_secret(),
                nonce: nonce.expose_secret(),
                scopes,
                fresh_login,
                offline,
            })
            .await?;
        let (link_user, profile, profile_version, allow_account_change) = match purpose {
            Purpose::SignIn => (None, None, None, false),
            Purpose::Link { user } => (Some(user), None, None, false),
            Purpose::Connect { user, profile, version, allow_account_change } => {
                (Some(user), Some(profile), Some(version), allow_account_change)
            }
        };
        let now = crate::domain::now();
        let state_hash = sha256(state.as_bytes());
        self.store
            .insert_login_state(&LoginState {
                state_hash,
                provider: provider.name().to_owned(),
                salt: Some(salt),
                return_to: seal_return_to(binding.expose_secret(), &salt, &state_hash, return_to.as_str()),
                link_user,
                profile,
                profile_version,
                allow_account_change,
                created_at: now,
                expires_at: now + FLOW_TTL,
                fresh_login,
            })
            .await?;
        Ok(Started { location, binding })
    }

    /// Takes the flow a callback names by its `state` (single-use: taken before anything else
    /// of the callback is checked), if it is the state of one of `bindings`, the binding secrets
    /// the browser holds in its cookie. That it was started for the provider of the callback's
    /// path is checked when it is [finished](Self::finish), once what it was for is known. A
    /// refusal comes with the binding the state was found to be of, if its flow is gone (taken,
    /// expired or completed), for the cookie to drop it; not when the store could not be asked.
    pub async fn take<'a>(
        &self,
        path_provider: &str,
        state: Option<&str>,
        bindings: &[&'a str],
    ) -> Result<Taken<'a>, (FlowError, Option<&'a str>)> {
        let state =
            state.filter(|s| !s.is_empty()).ok_or((FlowError::InvalidState("the callback carries no state"), None))?;
        let binding = bindings
            .iter()
            .copied()
            .find(|held| constant_time_eq(state_of(held).as_bytes(), state.as_bytes()))
            .ok_or((FlowError::InvalidState("this sign-in was not started in this browser"), None))?;
        let refused = |error: FlowError| (error, Some(binding));
        let mut flow = self
            .store
            .take_login_state(&sha256(state.as_bytes()), crate::domain::now())
            .await
            // The store did not answer: the flow may well be there still, for a reload.
            .map_err(|error| (error.into(), None))?
            .ok_or_else(|| refused(FlowError::InvalidState("the sign-in is unknown, expired or already completed")))?;
        // Provider names are lower case; the path is compared the same way.
        let on_its_path = flow.provider == path_provider.to_ascii_lowercase();
        flow.return_to = open_return_to(binding, &flow).map_err(refused)?;
        Ok(Taken { flow, binding, on_its_path })
    }

    /// Completes a flow [`take`](Self::take) returned with the provider's answer: its error, its
    /// issuer, the code exchanged with the PKCE verifier, the user's claims checked against the
    /// nonce.
    pub async fn finish(&self, taken: Taken<'_>, callback: Callback) -> Result<Finished, FlowError> {
        let Taken { flow, binding, on_its_path } = taken;
        if !on_its_path {
            return Err(FlowError::ProviderMismatch);
        }
        let provider = self.provider(Some(&flow.provider))?.clone();
        // RFC 9207 section 2.4: error responses too. An error sent in another issuer's name (a
        // mix-up) is not this provider's word, and is not reported as such.
        let expected = match provider.response_issuer().await {
            Ok(expected) => expected,
            // A denial that reached an instance which cannot read the provider's discovery now
            // (another one started the flow): whether the provider sends `iss` is not known, but
            // its error is still its answer, checked against its issuer when `iss` is sent.
            Err(_) if callback.error.is_some() => {
                super::providers::ResponseIssuer { issuer: provider.config().issuer.clone(), required: false }
            }
            Err(error) => return Err(error.into()),
        };
        match callback.iss.as_deref() {
            Some(iss) if Issuer::parse(iss).ok().as_ref() != Some(&expected.issuer) => {
                return Err(FlowError::IssuerMismatch);
            }
            None if expected.required => return Err(FlowError::IssuerMismatch),
            _ => {}
        }
        if let Some(error) = callback.error {
            // Only the provider's error code is kept: it is chosen from a small registered set.
            let word = super::error_word(&error);
            if word != "access_denied" {
                // Not the user cancelling: a setup to mend (`unauthorized_client`, `invalid_scope`)
                // or an outage, which the refusal's code alone would not tell the operator. At
                // info, as the callback's other refusals: anyone can send one back this way.
                tracing::info!(provider = provider.name(), error = %word, "the provider answered the sign-in with an error");
            }
            return Err(FlowError::Denied(word));
        }
        let code = callback.code.as_deref().filter(|c| !c.is_empty()).ok_or(FlowError::MissingCode)?;
        // A row an earlier release wrote has no salt; its browser's cookie holds no binding secret
        // either, so it is not taken that far.
        let salt = flow.salt.ok_or(FlowError::InvalidState("the sign-in was started by an earlier release"))?;
        let (pkce_verifier, nonce) = derived_secrets(binding, &salt);
        let tokens =
            provider.exchange_code(code, pkce_verifier.expose_secret(), &self.callback_url(provider.name())).await?;
        let info = provider.user_info(&tokens, nonce.expose_secret()).await?;
        // Asked for is not done: a provider that ignores `prompt=login`, or a browser that drops
        // it from the URL, would otherwise pass its old session off as a new sign-in. Checked
        // where the provider says when the user authenticated (OpenID Connect's `auth_time`).
        // A provider that only can be asked to choose the account again (Google) is held to an
        // `auth_time` it states all the same.
        if flow.fresh_login
            && match info.authenticated_at {
                Some(at) => at < flow.created_at - FRESH_LOGIN_LEEWAY,
                None => provider.attests_authentication_time(),
            }
        {
            return Err(FlowError::NotFresh);
        }
        let now = crate::domain::now();
        let authenticated_at = match (info.authenticated_at, flow.fresh_login) {
            (Some(at), true) => Some(at.clamp(flow.created_at, now.max(flow.created_at))),
            (Some(at), false) => Some(at.min(now)),
            (None, true) => Some(flow.created_at),
            (None, false) => None,
        };
        let subject = Subject::parse(&info.account_id)
            .map_err(|_| ProviderError::InvalidResponse("the account id is not acceptable".into()))?;
        let purpose = match (flow.link_user, flow.profile, flow.profile_version) {
            (Some(user), Some(profile), Some(version)) => {
                Purpose::Connect { user, profile, version, allow_account_change: flow.allow_account_change }
            }
            (Some(user), _, _) => Purpose::Link { user },
            (None, _, _) => Purpose::SignIn,
        };
        Ok(Finished { purpose, provider, tokens, info, subject, return_to: flow.return_to, authenticated_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(return_to: String, salt: Option<[u8; 32]>) -> LoginState {
        let now = crate::domain::now();
        LoginState {
            state_hash: [1; 32],
            provider: "local".into(),
            salt,
            return_to,
            link_user: None,
            profile: None,
            profile_version: None,
            allow_account_change: false,
            created_at: now,
            expires_at: now + FLOW_TTL,
            fresh_login: false,
        }
    }

    #[test]
    fn a_sealed_return_to_opens_only_with_its_binding_salt_and_state() {
        let (binding, salt) = ("a-binding-secret-of-the-browser", [7; 32]);
        let sealed = seal_return_to(binding, &salt, &[1; 32], "/connect/token/oauth/start");
        assert!(sealed.starts_with(SEALED) && !sealed.contains("token"), "{sealed}");
        assert_eq!(open_return_to(binding, &flow(sealed.clone(), Some(salt))).unwrap(), "/connect/token/oauth/start");
        let mut other_state = flow(sealed.clone(), Some(salt));
        other_state.state_hash = [2; 32];
        for wrong in [
            open_return_to("another-binding-secret", &flow(sealed.clone(), Some(salt))),
            open_return_to(binding, &flow(sealed.clone(), Some([8; 32]))),
            open_return_to(binding, &other_state),
            open_return_to(binding, &flow(format!("{SEALED}not base64!"), Some(salt))),
        ] {
            assert!(matches!(wrong, Err(FlowError::InvalidState(_))), "{wrong:?}");
        }
        // An earlier release's row, in the clear.
        assert_eq!(open_return_to(binding, &flow("/account".into(), Some(salt))).unwrap(), "/account");
    }

    #[test]
    fn the_derived_values_need_both_the_binding_and_the_salt() {
        let reveal = |(verifier, nonce): (SecretString, SecretString)| {
            (verifier.expose_secret().to_owned(), nonce.expose_secret().to_owned())
        };
        let (binding, salt) = ("a-binding-secret-of-the-browser", [7; 32]);
        let (verifier, nonce) = reveal(derived_secrets(binding, &salt));
        assert_ne!(verifier, nonce);
        assert_eq!(reveal(derived_secrets(binding, &salt)), (verifier.clone(), nonce.clone()));
        for other in [derived_secrets("another-binding-secret", &salt), derived_secrets(binding, &[8; 32])] {
            let (other_verifier, other_nonce) = reveal(other);
            assert!(other_verifier != verifier && other_nonce != nonce);
        }
        // The state is not the binding secret, nor does it give the values.
        let state = state_of(binding);
        assert_ne!(state, binding);
        assert_ne!(reveal(derived_secrets(&state, &salt)).0, verifier);
        // RFC 7636 4.1: 43 to 128 unreserved characters.
        assert_eq!(verifier.len(), 43);
        assert!(verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
