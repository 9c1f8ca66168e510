//! Token validation for other backends: an upstream JWT in, the internal user out.
//!
//! A verified token's `(issuer, subject)` is resolved to a [`Principal`] — the user and their
//! teams — from the in-memory cache, else the read replica, else the primary (so that a token
//! validated right after a bootstrap never fails because the replica lags). A first-time subject
//! is provisioned through the same transaction as the admin bootstrap when its issuer has `jit`
//! on; otherwise it is refused. The internal id is never the upstream `sub`, and there is no
//! fallback when the store is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;

use super::cache::TtlCache;
use super::provisioning::{IdentityClaim, ProvisionError, Provisioner};
use super::tokens::{TokenCache, TokenError, TokenVerifier, VerifiedToken};
use crate::domain::{Issuer, Principal, Subject, TeamRef, UserId, UserProfile};
use crate::error::ErrorCode;
use crate::store::{ReadFrom, Store, StoreError};

/// How often at most an identity's `last_seen_at` is written from the validation path.
const TOUCH_INTERVAL: TimeDelta = TimeDelta::seconds(60);

/// The positive cache of resolved identities. It never holds "not found" nor a disabled user,
/// and it is purged of a user when they are disabled, or change teams or identities; an
/// unlinked identity's verified tokens are purged from the token cache too.
#[derive(Debug)]
pub struct PrincipalCache {
    entries: TtlCache<(Issuer, Subject), Arc<Principal>>,
    ttl: Duration,
    tokens: Arc<TokenCache>,
}

impl PrincipalCache {
    /// A cache keeping entries for `ttl` (zero disables it), purging `tokens` with identities.
    pub fn new(ttl: Duration, max_entries: usize, tokens: Arc<TokenCache>) -> Self {
        Self { entries: TtlCache::new(if ttl.is_zero() { 0 } else { max_entries }), ttl, tokens }
    }

    /// A principal cache and an empty token cache, both sized from configuration.
    pub fn with_token_cache(config: &crate::config::CacheConfig) -> (Arc<Self>, Arc<TokenCache>) {
        let token_entries = if config.token_ttl.is_zero() { 0 } else { config.max_entries };
        let tokens = Arc::new(TokenCache::new(token_entries));
        (Arc::new(Self::new(config.principal_ttl, config.max_entries, tokens.clone())), tokens)
    }

    /// Forgets an identity: its resolved principal and its verified tokens.
    pub fn invalidate_identity(&self, issuer: &Issuer, subject: &Subject) {
        let key = (issuer.clone(), subject.clone());
        self.entries.remove_key(&key);
        self.tokens.remove_where(|token| &token.issuer == issuer && &token.subject == subject);
    }

    fn get(&self, issuer: &Issuer, subject: &Subject) -> Option<Arc<Principal>> {
        // The key is cloned for the lookup; issuers and subjects are short.
        self.entries.get(&(issuer.clone(), subject.clone()), Instant::now())
    }

    fn insert(&self, issuer: &Issuer, subject: &Subject, principal: Arc<Principal>) {
        let now = Instant::now();
        self.entries.insert((issuer.clone(), subject.clone()), principal, now + self.ttl, now);
    }

    /// Forgets everything cached about `user`.
    pub fn invalidate_user(&self, user: UserId) {
        self.entries.remove_where(|principal| principal.user.id == user);
    }
}

/// Why validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Unknown identity at an issuer without just-in-time provisioning.
    #[error("the identity is not provisioned")]
    NotProvisioned,
    /// The user is disabled.
    #[error("the user is disabled")]
    UserDisabled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ValidateError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ValidateError::Token(e) => e.code(),
            ValidateError::NotProvisioned => ErrorCode::IdentityNotProvisioned,
            ValidateError::UserDisabled => ErrorCode::UserDisabled,
            ValidateError::Store(StoreError::Unavailable(_)) => ErrorCode::StoreUnavailable,
            ValidateError::Store(_) => ErrorCode::InternalError,
        }
    }
}

impl From<ProvisionError> for ValidateError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::UserDisabled => ValidateError::UserDisabled,
            ProvisionError::Store(e) => ValidateError::Store(e),
            // The validation path provisions without the allow-list check (the token's issuer is
            // configured) and never by user id.
            ProvisionError::IssuerNotAllowed => ValidateError::Token(TokenError::IssuerNotAllowed),
            ProvisionError::UserNotFound => ValidateError::NotProvisioned,
        }
    }
}

/// A validated token and who it belongs to.
#[derive(Debug, Clone)]
pub struct Validated {
    /// What the token says.
    pub token: Arc<VerifiedToken>,
    /// The user and their teams.
    pub principal: Arc<Principal>,
    /// Whether this validation created the user.
    pub created: bool,
}

/// The validation service.
#[derive(Debug)]
pub struct Validator {
    verifier: TokenVerifier,
    provisioner: Provisioner,
    store: Arc<dyn Store>,
    principals: Arc<PrincipalCache>,
}

impl Validator {
    /// Creates the service.
    pub fn new(
        verifier: TokenVerifier,
        provisioner: Provisioner,
        store: Arc<dyn Store>,
        principals: Arc<PrincipalCache>,
    ) -> Self {
        Self { verifier, provisioner, store, principals }
    }

    /// Verifies `token` and resolves (or provisions) its user.
    pub async fn validate(&self, token: &str) -> Result<Validated, ValidateError> {
        let token = self.verifier.verify(token).await?;
        if let Some(principal) = self.principals.get(&token.issuer, &token.subject) {
            return Ok(Validated { token, principal, created: false });
        }
        let (principal, created) = self.resolve(&token).await?;
        if principal.user.disabled {
            return Err(ValidateError::UserDisabled);
        }
        self.principals.insert(&token.issuer, &token.subject, principal.clone());
        Ok(Validated { token, principal, created })
    }

    /// Whether the token's user is a member of `team`.
    pub async fn is_member(&self, token: &str, team: &TeamRef) -> Result<bool, ValidateError> {
        let validated = self.validate(token).await?;
        Ok(validated.principal.teams.iter().any(|member| match team {
            TeamRef::Id(id) => member.id == *id,
            TeamRef::Slug(slug) => member.slug == *slug,
        }))
    }

    /// The token's user with identities and teams.
    pub async fn me(&self, token: &str) -> Result<UserProfile, ValidateError> {
        let user = self.validate(token).await?.principal.user.id;
        self.profile(user).await
    }

    /// A user's profile, read from the replica and from the primary when the replica lags.
    pub async fn profile(&self, user: UserId) -> Result<UserProfile, ValidateError> {
        if let Some(profile) = self.store.user_profile(user, ReadFrom::Replica).await? {
            return Ok(profile);
        }
        self.store.user_profile(user, ReadFrom::Primary).await?.ok_or(ValidateError::NotProvisioned)
    }

    async fn resolve(&self, token: &VerifiedToken) -> Result<(Arc<Principal>, bool), ValidateError> {
        let (issuer, subject) = (&token.issuer, &token.subject);
        let mut found = self.store.principal(issuer, subject, ReadFrom::Replica).await?;
        if found.is_none() {
            found = self.store.principal(issuer, subject, ReadFrom::Primary).await?;
        }
        if let Some(principal) = found {
            let now = super::now();
            if now - principal.last_seen_at >= TOUCH_INTERVAL {
                self.store.touch_identity(principal.identity_id, now).await?;
            }
            return Ok((Arc::new(principal), false));
        }
        if !token.jit {
            return Err(ValidateError::NotProvisioned);
        }
        let claim = IdentityClaim {
            issuer: issuer.clone(),
            subject: subject.clone(),
            email: token.email.clone(),
            email_verified: token.email_verified,
            name: token.name.clone(),
            provider: token.provider.clone(),
        };
        let provisioned = self.provisioner.provision(&claim).await?;
        let principal = self
            .store
            .principal(issuer, subject, ReadFrom::Primary)
            .await?
            .ok_or(StoreError::Conflict { what: "identity vanished after provisioning" })?;
        Ok((Arc::new(principal), provisioned.created))
    }
}
