//! Token validation for other backends: an upstream JWT in, the internal user out.
//!
//! A verified token's `(issuer, subject)` is resolved to a [`Principal`] — the user and their
//! teams — from the in-memory cache, else the read replica (concurrent misses coalesced into
//! few reads, [`super::coalesce`]), else the primary (so that a token validated right after a
//! bootstrap never fails because the replica lags). A first-time subject
//! is provisioned through the same transaction as the admin bootstrap when its issuer has `jit`
//! on; otherwise it is refused. The internal id is never the upstream `sub`, and there is no
//! fallback when the store is down.

use std::sync::Arc;

use super::audit::Audit;
use super::coalesce::{Coalescer, Read};
use super::principals::PrincipalCache;
use super::provisioning::{IdentityClaim, ProvisionError, Provisioner};
use crate::domain::{DisplayName, Email, Issuer, Principal, Subject, TeamRef, TeamRole, UserId, UserProfile};
use crate::service::op::keys::VerifyError;
use crate::service::op::provider::OpenIdProvider;
use crate::upstream::tokens::{TokenError, TokenVerifier, VerifiedToken};
use axum::http::StatusCode;
use chrono::DateTime;

use crate::error::{ErrorCode, INVALID_TOKEN_CHALLENGE, PublicError};
use crate::store::{PRINCIPALS_PER_READ, ReadFrom, Store, StoreError};
use crate::worker::LastSeen;
use crate::worker::last_seen::TOUCH_INTERVAL;

/// How many coalesced principal reads run at once (each on one pool connection): two keep
/// both of a small machine's cores busy while the other requests queue for the next read.
const PRINCIPAL_READS_IN_FLIGHT: usize = 2;

/// Why validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Unknown identity at an issuer without just-in-time provisioning.
    #[error("this identity has no user and its issuer does not provision users on first sight")]
    NotProvisioned,
    /// The user is disabled.
    #[error("the user is disabled")]
    UserDisabled,
    /// One of Tessera's own access tokens was refused.
    #[error(transparent)]
    Own(#[from] VerifyError),
    /// One of Tessera's own access tokens whose grant has ended.
    #[error("the token's grant has ended (revoked, signed out, or the identity was unlinked)")]
    Revoked,
    /// An upstream token whose audience its issuer does not let act on Tessera's own API
    /// (`issuers[].api_audiences`).
    #[error("this token's audience may not act on Tessera's API: its issuer's api_audiences name others")]
    NotForApi,
    /// One of Tessera's own access tokens that acts for no user (`client_credentials`).
    #[error("this token acts for no user: it is a client's own (client_credentials)")]
    NoUser,
    /// Not one of Tessera's own access tokens, where only those are accepted.
    #[error("only access tokens issued by this Tessera are accepted here")]
    NotOwn,
    /// One of Tessera's own access tokens issued for another resource (RFC 8707).
    #[error("the token was issued for another resource; ask for one with resource={0}")]
    OtherResource(String),
    /// One of Tessera's own access tokens whose `aud` is not the audience the caller named.
    #[error("the token was not issued for the audience named in the request")]
    OtherAudience,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed in a read that this request shared with others (each is told).
    #[error(transparent)]
    SharedStore(Arc<StoreError>),
}

impl PublicError for ValidateError {
    fn code(&self) -> ErrorCode {
        match self {
            ValidateError::Token(e) => e.code(),
            ValidateError::NotProvisioned => ErrorCode::IdentityNotProvisioned,
            ValidateError::UserDisabled => ErrorCode::UserDisabled,
            ValidateError::Own(e) => e.code(),
            ValidateError::Revoked => ErrorCode::TokenRevoked,
            ValidateError::NoUser => ErrorCode::TokenWithoutUser,
            ValidateError::NotOwn => ErrorCode::TokenIssuerMismatch,
            ValidateError::OtherResource(_) | ValidateError::OtherAudience | ValidateError::NotForApi => {
                ErrorCode::AudienceMismatch
            }
            ValidateError::Store(e) => e.code(),
            ValidateError::SharedStore(e) => e.code(),
        }
    }

    /// Every refused bearer token is a 401 (RFC 6750 `invalid_token`), whichever code explains why.
    fn status(&self) -> StatusCode {
        match self {
            ValidateError::Token(e) if *e != TokenError::IssuerUnavailable => StatusCode::UNAUTHORIZED,
            ValidateError::Own(e) if e.is_invalid_token() => StatusCode::UNAUTHORIZED,
            other => other.code().status(),
        }
    }

    fn challenge(&self) -> Option<&'static str> {
        (self.status() == StatusCode::UNAUTHORIZED).then_some(INVALID_TOKEN_CHALLENGE)
    }
}

/// Whether `error` is the database failing for a moment (a read worth answering from a cached
/// copy instead).
fn is_transient(error: &ValidateError) -> bool {
    match error {
        ValidateError::Store(e) => e.is_transient(),
        ValidateError::SharedStore(e) => e.is_transient(),
        _ => false,
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
            // Only a first sign-in provisions with the email's accounts to check.
            ProvisionError::EmailHoldersChanged => {
                ValidateError::Store(StoreError::Conflict { what: "the accounts with this email changed" })
            }
            // Validation changes no user's fields.
            ProvisionError::NoEmailToVerify => {
                ValidateError::Store(StoreError::Conflict { what: "unexpected provisioning outcome" })
            }
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
    /// What one of Tessera's own access tokens was issued for; `None` for an upstream token,
    /// whose `aud` was checked against its issuer's configured audiences.
    pub issued_for: Option<IssuedFor>,
}

/// The audience, client and scopes of one of Tessera's own access tokens, for the backend that
/// received it to check that it was meant for it.
#[derive(Debug, Clone)]
pub struct IssuedFor {
    /// `aud`: the resource it was issued for (RFC 8707) or, without one, the client id.
    pub audience: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// When the user signed in to the session the grant was made from (`auth_time`, seconds).
    pub auth_time: Option<i64>,
    /// For a token got by token exchange, the clients that exchanged it, outermost first
    /// (`act`, RFC 8693 section 4.1): a call made on the user's behalf by another service.
    pub act: Option<super::op::tokens::Actor>,
}

impl IssuedFor {
    /// Whether the session the grant was made from signed in within
    /// [`RECENT_SIGN_IN`](super::sessions::RECENT_SIGN_IN) of `now` (never, without `auth_time`).
    pub fn signed_in_lately(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.auth_time
            .and_then(|at| chrono::DateTime::from_timestamp(at, 0))
            .is_some_and(|at| super::sessions::signed_in_lately(at, now))
    }
}

/// The validation service.
#[derive(Debug)]
pub struct Validator {
    verifier: TokenVerifier,
    provisioner: Provisioner,
    store: Arc<dyn Store>,
    principals: Arc<PrincipalCache>,
    last_seen: Arc<LastSeen>,
    /// Principal reads that miss the cache, coalesced into few round trips under load.
    reads: Arc<PrincipalReads>,
    /// Tessera's own OpenID Provider, whose access tokens are verified locally.
    own: Option<OpenIdProvider>,
    /// The audit log, where refusals are counted.
    audit: Option<Audit>,
}

impl Validator {
    /// Creates the service.
    pub fn new(
        verifier: TokenVerifier,
        provisioner: Provisioner,
        store: Arc<dyn Store>,
        principals: Arc<PrincipalCache>,
        last_seen: Arc<LastSeen>,
    ) -> Self {
        let reads = Arc::new(principal_reads(store.clone()));
        Self { verifier, provisioner, store, principals, last_seen, reads, own: None, audit: None }
    }

    /// Also accepts the access tokens of Tessera's own OpenID Provider, verified with its keys
    /// (never through a JWKS fetch to itself).
    pub fn with_own_tokens(mut self, op: Option<OpenIdProvider>) -> Self {
        self.own = op;
        self
    }

    /// Counts refused tokens in the audit log (per reason and issuer, see
    /// [`Audit::token_refused`]).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Counts a refusal of `token` (not a failure on Tessera's side) in the audit log.
    fn refused(&self, token: &str, error: ValidateError) -> ValidateError {
        let code = error.code();
        if let Some(audit) = &self.audit
            && !code.status().is_server_error()
        {
            let own = self.own.as_ref().filter(|op| op.issued(token));
            match own {
                Some(op) => audit.token_refused(code, Some(op.issuer())),
                None => audit.token_refused(code, self.verifier.known_issuer(token).as_ref().map(Issuer::as_str)),
            }
        }
        error
    }

    /// Verifies `token` and resolves (or provisions) its user. A refusal is counted in the audit
    /// log.
    pub async fn validate(&self, token: &str) -> Result<Validated, ValidateError> {
        self.validate_for(token, None).await
    }

    /// As [`Validator::validate`]; with an `audience`, the token must have been issued for it,
    /// else [`ValidateError::OtherAudience`]: one of Tessera's own access tokens by its `aud` (a
    /// resource URL or a client id), an upstream token by an `aud` that is one of its issuer's
    /// configured audiences (which are checked as always, with or without it).
    pub async fn validate_for(&self, token: &str, audience: Option<&str>) -> Result<Validated, ValidateError> {
        self.verify_and_resolve(token, audience, false).await.map_err(|error| self.refused(token, error))
    }

    /// With `acting`, an upstream token must be one its issuer lets act on Tessera's own API
    /// (checked before its user is resolved, or provisioned).
    async fn verify_and_resolve(
        &self,
        token: &str,
        audience: Option<&str>,
        acting: bool,
    ) -> Result<Validated, ValidateError> {
        if let Some(op) = &self.own
            && op.issued(token)
        {
            return self.validate_own(op, token, audience).await;
        }
        let token = self.verifier.verify(token).await?;
        if let Some(audience) = audience
            && !token.audiences.iter().any(|a| a == audience)
        {
            return Err(ValidateError::OtherAudience);
        }
        if acting && !token.acts_on_api {
            return Err(ValidateError::NotForApi);
        }
        // A hit whose last use is due to be noted is resolved again, as a miss (once a minute at
        // most), so that the stored time does not lag by the cache's lifetime; so is every hit
        // while the cache-invalidation log has not been read lately.
        // Freshness first: a read of the log that makes it fresh has applied its purges.
        let fresh = self.principals.answers();
        let cached = self.principals.get(&token.issuer, &token.subject);
        if let Some(principal) = &cached
            && super::now() - principal.last_seen_at < TOUCH_INTERVAL
            && fresh
        {
            return Ok(Validated { token, principal: principal.clone(), created: false, issued_for: None });
        }
        let epoch = self.principals.epoch();
        let (principal, created) = match self.resolve(&token).await {
            Ok(found) => found,
            // The database cannot be read: a cached copy answers, as it was when last read —
            // looked up again, since a change may have purged it while the read was tried.
            Err(error) if is_transient(&error) => match self.principals.get(&token.issuer, &token.subject) {
                Some(principal) => return Ok(Validated { token, principal, created: false, issued_for: None }),
                None => return Err(error),
            },
            // Found gone (or refused): a cached copy must not answer for it later.
            Err(error) => {
                if cached.is_some() {
                    self.principals.drop_principal(&token.issuer, &token.subject);
                }
                return Err(error);
            }
        };
        if principal.user.disabled {
            if cached.is_some() {
                self.principals.drop_principal(&token.issuer, &token.subject);
            }
            return Err(ValidateError::UserDisabled);
        }
        self.principals.insert(epoch, &token.issuer, &token.subject, principal.clone());
        Ok(Validated { token, principal, created, issued_for: None })
    }

    /// One of Tessera's own access tokens: its signature locally, then its grant (one read of
    /// the primary, so that a revocation shows at once), then its user.
    async fn validate_own(
        &self,
        op: &OpenIdProvider,
        token: &str,
        audience: Option<&str>,
    ) -> Result<Validated, ValidateError> {
        let claims = op.verify_access_token(token).await?;
        if audience.is_some_and(|audience| claims.aud != audience) {
            return Err(ValidateError::OtherAudience);
        }
        self.own_principal(op, claims).await
    }

    /// A token of someone who acts on Tessera's own API for themselves (their teams, connected
    /// accounts and identities). An upstream token is checked as by [`Validator::validate`]; one
    /// of Tessera's own access tokens must have been issued for that API — `aud`
    /// [`API_RESOURCE_PATH`] under the public URL (RFC 8707) —, not for another client's or
    /// resource's use: a client that holds a user's token for itself must not replay it here to
    /// read their connected accounts' credentials. A token for the MCP endpoint is for that
    /// endpoint alone, whose tools manage connected accounts (and list the teams): on the REST API it would also
    /// change the user's teams and identities.
    pub async fn validate_acting(&self, token: &str) -> Result<Validated, ValidateError> {
        self.acting(token).await.map_err(|error| self.refused(token, error))
    }

    async fn acting(&self, token: &str) -> Result<Validated, ValidateError> {
        let Some(op) = self.own.as_ref().filter(|op| op.issued(token)) else {
            return self.verify_and_resolve(token, None, true).await;
        };
        let claims = op.verify_access_token(token).await?;
        let api = op.endpoint(API_RESOURCE_PATH);
        if claims.aud != api {
            return Err(ValidateError::OtherResource(api));
        }
        self.own_principal(op, claims).await
    }

    /// One of Tessera's own access tokens issued for `resource` (its `aud`, RFC 8707), checked
    /// like [`Validator::validate`] checks them; upstream tokens are refused.
    pub async fn validate_own_for(&self, token: &str, resource: &str) -> Result<Validated, ValidateError> {
        self.own_for(token, resource).await.map_err(|error| self.refused(token, error))
    }

    async fn own_for(&self, token: &str, resource: &str) -> Result<Validated, ValidateError> {
        let op = self.own.as_ref().filter(|op| op.issued(token)).ok_or(ValidateError::NotOwn)?;
        let claims = op.verify_access_token(token).await?;
        if claims.aud != resource {
            return Err(ValidateError::OtherResource(resource.to_owned()));
        }
        self.own_principal(op, claims).await
    }

    /// The user of a verified access token of Tessera's: its grant (one read of the primary),
    /// then the user, who must not be disabled.
    async fn own_principal(
        &self,
        op: &OpenIdProvider,
        claims: crate::service::op::tokens::AccessClaims,
    ) -> Result<Validated, ValidateError> {
        // A client's own token (no grant, no user) may count, but says who no user is.
        if claims.gid.is_none() {
            return Err(ValidateError::NoUser);
        }
        let grant = op.access_grant(&claims).await?;
        let Some(grant) = grant.filter(|g| g.active) else {
            return Err(ValidateError::Revoked);
        };
        let profile = self.store.user_profile(grant.user_id, ReadFrom::Primary).await?;
        let Some(profile) = profile else { return Err(ValidateError::Revoked) };
        if profile.user.disabled {
            return Err(ValidateError::UserDisabled);
        }
        let identity_id = grant
            .identity_id
            .or(profile.primary_identity_id)
            .or_else(|| profile.identities.first().map(|i| i.id))
            .ok_or(ValidateError::NotProvisioned)?;
        let issuer =
            Issuer::parse(op.issuer()).map_err(|_| StoreError::Corrupt("the public URL is not an issuer".into()))?;
        // What the user consented to, as userinfo gives it (OpenID Connect Core 5.4): the email
        // with `email`, the name with `profile`, the teams with `teams`; the id always.
        let granted = crate::service::op::provider::split_scope(&claims.scope);
        let has = |scope: &str| granted.iter().any(|s| s == scope);
        let mut profile = profile;
        if !has("email") {
            (profile.user.email, profile.user.email_verified) = (None, false);
        }
        if !has("profile") {
            profile.user.name = None;
        }
        if !has("teams") {
            profile.teams.clear();
        }
        let verified = VerifiedToken {
            issuer,
            provider: "tessera".into(),
            jit: false,
            subject: Subject::parse(&claims.sub).map_err(|_| ValidateError::Revoked)?,
            email: profile.user.email.as_deref().and_then(|e| Email::parse(e).ok()),
            email_verified: profile.user.email_verified,
            name: DisplayName::parse_optional(profile.user.name.as_deref()).ok().flatten(),
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or_default(),
            // What its `aud` says is in `issued_for`; these two are an upstream token's.
            audiences: Vec::new(),
            acts_on_api: true,
        };
        let teams =
            profile.teams.iter().map(|m| TeamRole { id: m.team.id, slug: m.team.slug.clone(), role: m.role }).collect();
        let principal = Principal { identity_id, last_seen_at: super::now(), user: profile.user, teams };
        let issued_for = IssuedFor {
            audience: claims.aud,
            client_id: claims.client_id,
            scope: claims.scope,
            auth_time: claims.auth_time,
            act: claims.act,
        };
        Ok(Validated {
            token: Arc::new(verified),
            principal: Arc::new(principal),
            created: false,
            issued_for: Some(issued_for),
        })
    }

    /// Whether the token's user is a member of `team`; with an `audience`, as
    /// [`Validator::validate_for`] checks it.
    pub async fn is_member(&self, token: &str, team: &TeamRef, audience: Option<&str>) -> Result<bool, ValidateError> {
        let validated = self.validate_for(token, audience).await?;
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

    /// A user's profile, read from the replica and from the primary when the replica lags — or
    /// when the user changed within the last minute (a link, an unlink, a new primary identity,
    /// a team), so that a change reads back as made.
    pub async fn profile(&self, user: UserId) -> Result<UserProfile, ValidateError> {
        if !self.principals.changed_recently(user)
            && let Some(profile) = self.store.user_profile(user, ReadFrom::Replica).await?
        {
            return Ok(profile);
        }
        self.store.user_profile(user, ReadFrom::Primary).await?.ok_or(ValidateError::NotProvisioned)
    }

    async fn resolve(&self, token: &VerifiedToken) -> Result<(Arc<Principal>, bool), ValidateError> {
        let (issuer, subject) = (&token.issuer, &token.subject);
        let mut found = match self.reads.get((issuer.clone(), subject.clone())).await {
            Read::Found(found) => found,
            Read::Failed(error) => return Err(ValidateError::SharedStore(error)),
            Read::Alone => self.store.principal(issuer, subject, ReadFrom::Replica).await?.map(Arc::new),
        };
        if found.as_ref().is_none_or(|p| self.principals.changed_recently(p.user.id)) {
            found = self.store.principal(issuer, subject, ReadFrom::Primary).await?.map(Arc::new);
        }
        if let Some(mut principal) = found {
            let now = super::now();
            // A disabled user's token is refused (by the caller), which is no use of the identity.
            if !principal.user.disabled && now - principal.last_seen_at >= TOUCH_INTERVAL {
                // Bookkeeping, written by the last-use worker: never a write on this request. The
                // copy to be cached says so too, so that its hits do not note it again.
                self.last_seen.identity(principal.identity_id, now);
                principal = Arc::new(Principal { last_seen_at: now, ..Principal::clone(&principal) });
            }
            return Ok((principal, false));
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
            // Deleted between the two (an operator's clean-up, a consumer of `user.created`):
            // a change made meanwhile, 409, which a retry provisions again — not a 500.
            .ok_or(StoreError::Gone { what: "the identity, deleted just after it was provisioned" })?;
        Ok((Arc::new(principal), provisioned.created))
    }
}

pub use crate::service::op::provider::API_RESOURCE_PATH;

/// Principal reads from the replica, coalesced.
type PrincipalReads = Coalescer<(Issuer, Subject), Arc<Principal>, Arc<StoreError>>;

/// Reads of principals from the replica, [`PRINCIPAL_READS_IN_FLIGHT`] at a time, each of up to
/// [`PRINCIPALS_PER_READ`] identities, with as many requests queued as two such reads take.
fn principal_reads(store: Arc<dyn Store>) -> PrincipalReads {
    Coalescer::new(
        PRINCIPAL_READS_IN_FLIGHT,
        PRINCIPALS_PER_READ,
        PRINCIPAL_READS_IN_FLIGHT * PRINCIPALS_PER_READ,
        Box::new(move |keys| {
            let store = store.clone();
            Box::pin(async move {
                let found = store.principals(&keys, ReadFrom::Replica).await.map_err(Arc::new)?;
                Ok(found.into_iter().map(|read| read.map(|p| p.map(Arc::new)).map_err(Arc::new)).collect())
            })
        }),
    )
}
