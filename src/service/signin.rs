//! Browser sign-in through upstream providers, and linking further identities to a user.
//!
//! `begin` stores the sign-in on the server — the SHA-256 of a 256-bit state value, the provider,
//! the PKCE verifier, the nonce, `return_to` and a 10-minute expiry — and returns the provider's
//! authorization URL plus the state value, which the HTTP layer also puts in a cookie so that the
//! callback can prove it comes back to the same browser. `complete` consumes that row atomically
//! (exactly once), takes the provider from it (never from the callback), checks the RFC 9207
//! `iss`, exchanges the code, reads the profile, then signs the user in (provisioning them through
//! the same transaction as the admin bootstrap) or links the identity to the signed-in user.
//!
//! A first sign-in with an email that an account already has creates no link: the user is told
//! to sign in as before and link the provider, unless the provider is trusted for email
//! verification, has automatic linking on, says the email is verified, and the one existing user
//! with that email has it verified too.

use std::sync::Arc;

use chrono::TimeDelta;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::providers::{AuthorizationRequest, Provider, ProviderError, ProviderRegistry, TokenSet, UserInfo};
use super::provisioning::{IdentityClaim, ProvisionError, Provisioner};
use super::sessions::{Sessions, random_secret};
use super::validation::PrincipalCache;
use crate::config::AuthConfig;
use crate::crypto::keyring::KeyRing;
use crate::crypto::{constant_time_eq, sha256};
use crate::domain::{DisplayName, IdentityId, Issuer, ReturnTo, Subject, User, UserId};
use crate::error::ErrorCode;
use crate::store::{EncryptedTokens, LinkOutcome, LoginState, NewLink, SecretKind, Store, StoreError, StoredSecret};

/// How long a sign-in may take, from `begin` to the callback.
pub const LOGIN_STATE_TTL: TimeDelta = TimeDelta::minutes(10);

/// Why a sign-in or link failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// No provider has that name.
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    /// `return_to` is not acceptable.
    #[error("return_to is neither a local path nor on an allowed origin")]
    InvalidReturnTo,
    /// The state is missing, unknown, expired, used, or not this browser's.
    #[error("{0}")]
    InvalidState(&'static str),
    /// The callback path names another provider than the sign-in started with.
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
    /// A provider call failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The identity belongs to another user.
    #[error("this identity is linked to another user")]
    IdentityAlreadyLinked,
    /// An account has this email; the identity must be linked from it.
    #[error("an account with this email exists: sign in the way you did before, then link {provider}")]
    LinkRequired {
        /// The provider to link.
        provider: String,
    },
    /// The user is disabled.
    #[error("the user is disabled")]
    UserDisabled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SignInError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SignInError::UnknownProvider(_) => ErrorCode::UnknownProvider,
            SignInError::InvalidReturnTo => ErrorCode::InvalidReturnTo,
            SignInError::InvalidState(_) => ErrorCode::InvalidState,
            SignInError::ProviderMismatch => ErrorCode::ProviderMismatch,
            SignInError::IssuerMismatch => ErrorCode::IssuerMismatch,
            SignInError::MissingCode => ErrorCode::InvalidCode,
            SignInError::Denied(_) => ErrorCode::ProviderDenied,
            SignInError::Provider(e) => e.code(),
            SignInError::IdentityAlreadyLinked => ErrorCode::IdentityAlreadyLinked,
            SignInError::LinkRequired { .. } => ErrorCode::LinkRequired,
            SignInError::UserDisabled => ErrorCode::UserDisabled,
            SignInError::Store(StoreError::Unavailable(_)) => ErrorCode::StoreUnavailable,
            SignInError::Store(_) => ErrorCode::InternalError,
        }
    }
}

impl From<ProvisionError> for SignInError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::UserDisabled => SignInError::UserDisabled,
            ProvisionError::Store(e) => SignInError::Store(e),
            // Sign-in provisions by identity, with the provider's own issuer: neither happens.
            ProvisionError::IssuerNotAllowed | ProvisionError::UserNotFound => {
                SignInError::Store(StoreError::Conflict { what: "unexpected provisioning outcome" })
            }
        }
    }
}

/// A started sign-in: where to send the browser, and the state value to bind to it.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub location: Url,
    /// The state value (for the browser-binding cookie).
    pub state: SecretString,
}

/// The query of a callback.
#[derive(Debug, Clone, Default)]
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

/// A completed sign-in or link.
#[derive(Debug)]
pub struct Completed {
    /// The user.
    pub user: UserId,
    /// A new session's cookie value (sign-in), or `None` (link: the session goes on).
    pub session: Option<SecretString>,
    /// Where to send the browser.
    pub return_to: String,
}

/// The sign-in service.
#[derive(Debug, Clone)]
pub struct SignIn {
    providers: Arc<ProviderRegistry>,
    store: Arc<dyn Store>,
    provisioner: Provisioner,
    sessions: Sessions,
    principals: Arc<PrincipalCache>,
    keyring: Option<Arc<KeyRing>>,
    public_url: Option<Url>,
    return_to_origins: Vec<String>,
}

impl SignIn {
    /// Creates the service.
    pub fn new(
        providers: Arc<ProviderRegistry>,
        store: Arc<dyn Store>,
        provisioner: Provisioner,
        sessions: Sessions,
        principals: Arc<PrincipalCache>,
        keyring: Option<Arc<KeyRing>>,
        auth: &AuthConfig,
    ) -> Self {
        Self {
            providers,
            store,
            provisioner,
            sessions,
            principals,
            keyring,
            public_url: auth.public_url.clone(),
            return_to_origins: auth.return_to_origins.clone(),
        }
    }

    /// The configured providers.
    pub fn providers(&self) -> &ProviderRegistry {
        &self.providers
    }

    /// Starts a sign-in (`link_user` `None`) or the linking of another identity to `link_user`.
    pub async fn begin(
        &self,
        provider: Option<&str>,
        return_to: Option<&str>,
        link_user: Option<UserId>,
    ) -> Result<Started, SignInError> {
        let provider = self
            .providers
            .get(provider)
            .ok_or_else(|| SignInError::UnknownProvider(provider.unwrap_or("(default)").to_owned()))?;
        let return_to = match return_to {
            Some(value) => ReturnTo::parse(value, &self.return_to_origins).map_err(|_| SignInError::InvalidReturnTo)?,
            None => ReturnTo::root(),
        };
        let state = random_secret();
        let pkce_verifier = random_secret();
        let nonce = random_secret();
        let redirect_uri = self.callback_url(provider.name());
        let location = provider
            .authorization_url(&AuthorizationRequest {
                redirect_uri: &redirect_uri,
                state: state.expose_secret(),
                pkce_verifier: pkce_verifier.expose_secret(),
                nonce: nonce.expose_secret(),
            })
            .await?;
        let now = super::now();
        self.store
            .insert_login_state(&LoginState {
                state_hash: sha256(state.expose_secret().as_bytes()),
                provider: provider.name().to_owned(),
                pkce_verifier: pkce_verifier.expose_secret().to_owned(),
                nonce: nonce.expose_secret().to_owned(),
                return_to: return_to.as_str().to_owned(),
                link_user,
                created_at: now,
                expires_at: now + LOGIN_STATE_TTL,
            })
            .await?;
        Ok(Started { location, state })
    }

    /// Completes a sign-in or link from the provider's callback. `browser_state` is the state the
    /// browser holds in its cookie; `current_user` the user of the browser's session, if any.
    pub async fn complete(
        &self,
        path_provider: &str,
        callback: Callback,
        browser_state: Option<&str>,
        current_user: Option<UserId>,
    ) -> Result<Completed, SignInError> {
        let state = callback
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(SignInError::InvalidState("the callback carries no state"))?;
        if !browser_state.is_some_and(|cookie| constant_time_eq(cookie.as_bytes(), state.as_bytes())) {
            return Err(SignInError::InvalidState("this sign-in was not started in this browser"));
        }
        let login = self
            .store
            .take_login_state(&sha256(state.as_bytes()), super::now())
            .await?
            .ok_or(SignInError::InvalidState("the sign-in is unknown, expired or already completed"))?;
        if login.provider != path_provider {
            return Err(SignInError::ProviderMismatch);
        }
        let provider = self
            .providers
            .get(Some(&login.provider))
            .ok_or_else(|| SignInError::UnknownProvider(login.provider.clone()))?;
        if let Some(error) = callback.error {
            // Only the provider's error code is kept: it is chosen from a small registered set.
            let code: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            return Err(SignInError::Denied(code));
        }
        let expected = provider.response_issuer().await?;
        match callback.iss.as_deref() {
            Some(iss) if Issuer::parse(iss).ok().as_ref() != Some(&expected.issuer) => {
                return Err(SignInError::IssuerMismatch);
            }
            None if expected.required => return Err(SignInError::IssuerMismatch),
            _ => {}
        }
        let code = callback.code.as_deref().filter(|c| !c.is_empty()).ok_or(SignInError::MissingCode)?;
        let tokens = provider.exchange_code(code, &login.pkce_verifier, &self.callback_url(provider.name())).await?;
        let info = provider.user_info(&tokens, &login.nonce).await?;
        let subject = Subject::parse(&info.account_id)
            .map_err(|_| ProviderError::InvalidResponse("the account id is not acceptable".into()))?;
        match login.link_user {
            Some(user) => {
                if current_user != Some(user) {
                    return Err(SignInError::InvalidState("sign in again to link an identity"));
                }
                let identity = self.link(provider.as_ref(), user, subject, &info).await?;
                self.keep_tokens(provider.as_ref(), identity, &tokens).await?;
                Ok(Completed { user, session: None, return_to: login.return_to })
            }
            None => {
                let (user, identity) = self.sign_in_user(provider.as_ref(), subject, &info).await?;
                self.keep_tokens(provider.as_ref(), identity, &tokens).await?;
                let session = self.sessions.create(user.id, Some(identity)).await?;
                tracing::info!(user_id = %user.id, provider = provider.name(), "signed in");
                Ok(Completed { user: user.id, session: Some(session), return_to: login.return_to })
            }
        }
    }

    /// The callback URL of a provider.
    fn callback_url(&self, provider: &str) -> Url {
        let base = self.public_url.as_ref().map_or("http://127.0.0.1", |u| u.as_str()).trim_end_matches('/');
        Url::parse(&format!("{base}/auth/callback/{provider}")).expect("a provider name is URL-safe")
    }

    async fn sign_in_user(
        &self,
        provider: &dyn Provider,
        subject: Subject,
        info: &UserInfo,
    ) -> Result<(User, IdentityId), SignInError> {
        let issuer = provider.identity_issuer().clone();
        if let Some(found) = self.store.find_identity(&issuer, &subject).await? {
            if found.user.disabled {
                return Err(SignInError::UserDisabled);
            }
            return Ok((found.user, found.identity_id));
        }
        if let Some(email) = &info.email {
            let owners = self.store.users_with_email(email).await?;
            if let [owner] = owners.as_slice()
                && provider.config().auto_link_by_email
                && provider.config().trusted_email_verification
                && info.email_verified
                && owner.email_verified
                && !owner.disabled
            {
                let identity = self.link(provider, owner.id, subject, info).await?;
                tracing::info!(user_id = %owner.id, provider = provider.name(), "linked by verified email");
                return Ok((owner.clone(), identity));
            }
            if !owners.is_empty() {
                return Err(SignInError::LinkRequired { provider: provider.name().to_owned() });
            }
        }
        let provisioned = self
            .provisioner
            .provision(&IdentityClaim {
                issuer,
                subject,
                email: info.email.clone(),
                email_verified: info.email_verified,
                name: DisplayName::parse_optional(info.name.as_deref()).ok().flatten(),
                provider: provider.name().to_owned(),
            })
            .await?;
        Ok((provisioned.user, provisioned.identity_id))
    }

    async fn link(
        &self,
        provider: &dyn Provider,
        user: UserId,
        subject: Subject,
        info: &UserInfo,
    ) -> Result<IdentityId, SignInError> {
        let outcome = self
            .store
            .link_identity(
                user,
                &NewLink {
                    identity_id: IdentityId::generate(),
                    issuer: provider.identity_issuer().clone(),
                    subject,
                    provider: provider.name().to_owned(),
                    email: info.email.clone(),
                    email_verified: info.email_verified,
                    now: super::now(),
                },
            )
            .await?;
        self.principals.invalidate_user(user);
        match outcome {
            LinkOutcome::Linked(identity) | LinkOutcome::AlreadyLinked(identity) => Ok(identity.id),
            LinkOutcome::LinkedToAnotherUser => Err(SignInError::IdentityAlreadyLinked),
        }
    }

    /// Keeps the upstream tokens, encrypted, when the provider is configured to.
    async fn keep_tokens(
        &self,
        provider: &dyn Provider,
        identity: IdentityId,
        tokens: &TokenSet,
    ) -> Result<(), SignInError> {
        let (true, Some(keyring)) = (provider.config().store_tokens, &self.keyring) else {
            return Ok(());
        };
        let kind = SecretKind::IdentityTokens;
        let row = identity.as_uuid();
        let access = tokens.access_token.expose_secret().as_bytes();
        let encrypted = EncryptedTokens {
            access_token: keyring.encrypt(access, &StoredSecret::aad(kind, row, "access_token")),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| keyring.encrypt(t.expose_secret().as_bytes(), &StoredSecret::aad(kind, row, "refresh_token"))),
            expires_at: tokens.expires_at,
            scopes: tokens.scopes.join(" "),
            updated_at: super::now(),
        };
        self.store.put_identity_tokens(identity, &encrypted).await?;
        Ok(())
    }
}
