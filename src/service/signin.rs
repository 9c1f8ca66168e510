//! Browser sign-in through upstream providers, and linking further identities to a user, on top
//! of the shared authorization-code flow ([`crate::upstream::oauth_flow`]).
//!
//! After the flow, a sign-in finds or provisions the user (through the same transaction as the
//! admin bootstrap) and starts a session; a link attaches the identity to the signed-in user,
//! never re-pointing one that belongs to someone else.
//!
//! A first sign-in with an email that an account already has creates no link: the user is told
//! to sign in as before and link the provider, unless the provider is trusted for email
//! verification, has automatic linking on, says the email is verified, and the one existing user
//! with that email has it verified too.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::principals::{PrincipalCache, change_to_end};
use super::provisioning::{IdentityClaim, ProvisionError, Provisioner};
use super::sessions::Sessions;
use crate::config::AuthConfig;
use crate::crypto::keyring::KeyRing;
use crate::domain::{DisplayName, Email, IdentityId, ReturnTo, Subject, User, UserId};
use crate::error::{ErrorCode, PublicError};
use crate::store::{
    ActorKind, EncryptedTokens, IdentityMatch, LinkOutcome, NewAuditEvent, NewLink, ReadFrom, SecretKind, Store,
    StoreError, StoredSecret,
};
use crate::upstream::oauth_flow::{Finished, FlowError, OAuthFlows, Purpose, Started};
use crate::upstream::providers::{Provider, ProviderError, TokenSet, UserInfo};

/// Why a sign-in or link failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The flow failed (state, provider, code).
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// `return_to` is not acceptable.
    #[error("return_to is neither a local path nor on an allowed origin")]
    InvalidReturnTo,
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
    /// A link came back to a browser no longer signed in (its session ended meanwhile: idle,
    /// signed out in another tab, everywhere else): nothing was linked.
    #[error("you are no longer signed in, so nothing was linked: sign in, then link the sign-in method again")]
    NotSignedIn,
    /// The identity or its user was removed while the flow completed (an unlink racing the
    /// sign-in with that very identity, an account deleted meanwhile).
    #[error("the account or the sign-in method was removed while signing in; sign in again")]
    Removed,
    /// What this sign-in decided on changed meanwhile: another first sign-in with the email made
    /// an account (see [`ProvisionError::EmailHoldersChanged`]), or the identity it was linking
    /// was made for another user. Decided again, and said only when that keeps happening.
    #[error("accounts with this email or this sign-in method changed while signing in; sign in again")]
    ChangedMeanwhile,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for SignInError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Gone { .. } => SignInError::Removed,
            other => SignInError::Store(other),
        }
    }
}

impl PublicError for SignInError {
    fn code(&self) -> ErrorCode {
        match self {
            SignInError::Flow(e) => e.code(),
            SignInError::InvalidReturnTo => ErrorCode::InvalidReturnTo,
            SignInError::IdentityAlreadyLinked => ErrorCode::IdentityAlreadyLinked,
            SignInError::LinkRequired { .. } => ErrorCode::LinkRequired,
            SignInError::UserDisabled => ErrorCode::UserDisabled,
            SignInError::NotSignedIn => ErrorCode::MissingCredentials,
            SignInError::Removed => ErrorCode::IdentityNotFound,
            SignInError::ChangedMeanwhile => ErrorCode::InternalError,
            SignInError::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            SignInError::LinkRequired { provider } => {
                vec![("link_url", format!("/auth/link?provider={provider}").into())]
            }
            _ => Vec::new(),
        }
    }
}

impl From<ProviderError> for SignInError {
    fn from(error: ProviderError) -> Self {
        SignInError::Flow(FlowError::Provider(error))
    }
}

impl From<ProvisionError> for SignInError {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::UserDisabled => SignInError::UserDisabled,
            ProvisionError::EmailHoldersChanged => SignInError::ChangedMeanwhile,
            ProvisionError::Store(e) => e.into(),
            // A user deleted while the sign-in made their default team.
            ProvisionError::UserNotFound => SignInError::Removed,
            // Sign-in provisions by identity, with the provider's own issuer, and changes no
            // user's fields: these do not happen.
            ProvisionError::IssuerNotAllowed | ProvisionError::NoEmailToVerify => {
                SignInError::Store(StoreError::Conflict { what: "unexpected provisioning outcome" })
            }
        }
    }
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
    /// The identity signed in with or linked.
    pub identity: IdentityId,
    /// Whether this flow linked the identity to the user, and by which rule (`None`: it was
    /// theirs already, or it was provisioned with a new user).
    pub linked: Option<LinkRule>,
}

/// What a callback's browser brings besides the flow itself.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    /// The user of the browser's session, if any: a link needs the same user still signed in.
    pub current_user: Option<UserId>,
    /// The browser's session cookie, if any: a sign-in ends that session, whoever it was for.
    pub session: Option<SecretString>,
    /// A short label of the device, for the new session (see [`Sessions::create`]).
    pub device: Option<String>,
    /// The request id, for the audit rows.
    pub request_id: Option<String>,
}

/// The rule that linked an identity to an existing user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRule {
    /// The signed-in user linked it themselves (`/auth/link`).
    SignedInUser,
    /// A first sign-in whose verified email is the one existing user's verified email, with a
    /// provider trusted for email verification and automatic linking on.
    VerifiedEmail,
}

impl LinkRule {
    /// The rule's name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRule::SignedInUser => "signed_in_user",
            LinkRule::VerifiedEmail => "verified_email",
        }
    }
}

/// The sign-in service.
#[derive(Debug, Clone)]
pub struct SignIn {
    flows: OAuthFlows,
    store: Arc<dyn Store>,
    provisioner: Provisioner,
    sessions: Sessions,
    principals: Arc<PrincipalCache>,
    keyring: Option<Arc<KeyRing>>,
    return_to_origins: Vec<String>,
}

impl SignIn {
    /// Creates the service.
    pub fn new(
        flows: OAuthFlows,
        store: Arc<dyn Store>,
        provisioner: Provisioner,
        sessions: Sessions,
        principals: Arc<PrincipalCache>,
        keyring: Option<Arc<KeyRing>>,
        auth: &AuthConfig,
    ) -> Self {
        Self {
            flows,
            store,
            provisioner,
            sessions,
            principals,
            keyring,
            return_to_origins: auth.return_to_origins.clone(),
        }
    }

    /// Checks a `return_to` on the sign-in's rules (a local path, or an allowed origin).
    pub fn check_return_to(&self, value: &str) -> Result<ReturnTo, SignInError> {
        ReturnTo::parse(value, &self.return_to_origins).map_err(|_| SignInError::InvalidReturnTo)
    }

    /// A `return_to` as a request carries it: none when absent or empty (an app's template left
    /// it unfilled), else checked as [`Self::check_return_to`] does.
    pub fn given_return_to(&self, value: Option<&str>) -> Result<Option<ReturnTo>, SignInError> {
        value.filter(|value| !value.is_empty()).map(|value| self.check_return_to(value)).transpose()
    }

    /// Starts a sign-in (`link_user` `None`) or the linking of another identity to `link_user`;
    /// with `fresh_login`, one that must come back with a new authentication at the provider
    /// (see [`crate::upstream::oauth_flow::OAuthFlows::begin`]).
    pub async fn begin(
        &self,
        provider: Option<&str>,
        return_to: Option<&str>,
        link_user: Option<UserId>,
        fresh_login: bool,
    ) -> Result<Started, SignInError> {
        let provider = self.flows.sign_in_provider(provider)?;
        let return_to = self.given_return_to(return_to)?.unwrap_or_else(ReturnTo::root);
        let purpose = match link_user {
            Some(user) => Purpose::Link { user },
            None => Purpose::SignIn,
        };
        Ok(self.flows.begin(provider, &return_to, purpose, None, fresh_login).await?)
    }

    /// Completes a finished sign-in or link flow from `browser`, with its audit rows: a link
    /// writes its `identity.linked` row in its transaction; a sign-in writes the session, its
    /// `sign_in.succeeded` row and the end of the browser's earlier session in one.
    pub async fn complete(&self, finished: Finished, browser: Browser) -> Result<Completed, SignInError> {
        let Finished { purpose, provider, tokens, info, subject, return_to, authenticated_at } = finished;
        let Browser { current_user, session, device, request_id } = browser;
        match purpose {
            Purpose::Link { user } => {
                match current_user {
                    Some(current) if current == user => {}
                    // The session ended while the browser was at the provider.
                    None => return Err(SignInError::NotSignedIn),
                    // Signed in as someone else since: not theirs to link.
                    Some(_) => return Err(FlowError::InvalidState("sign in again to link an identity").into()),
                }
                let rule = (LinkRule::SignedInUser, request_id);
                let (identity, new) = self.link(provider.as_ref(), user, subject, &info, rule).await?;
                self.keep_tokens(provider.as_ref(), identity, &tokens).await?;
                let linked = new.then_some(LinkRule::SignedInUser);
                Ok(Completed { user, session: None, return_to, identity, linked })
            }
            Purpose::SignIn => {
                // A returning user, with no earlier session to end and no tokens to keep, is found
                // by the statement that starts the session; anyone else takes the long way below
                // (a first sign-in, a disabled user, a browser signed in already).
                if session.is_none() && !self.keeps_tokens(provider.as_ref()) {
                    // Its actor and target are the user the statement finds.
                    let audit = NewAuditEvent::new(ActorKind::User, "sign_in.succeeded")
                        .request(request_id.clone())
                        .details(serde_json::json!({ "provider": provider.name() }));
                    let issuer = provider.identity_issuer();
                    if let Some((started, session)) = self
                        .sessions
                        .create_for_identity(issuer, &subject, device.clone(), authenticated_at, &audit)
                        .await?
                    {
                        let (user, identity) = (started.user, started.identity);
                        // The session stands (it is written): a team that cannot be made now is
                        // made at the next sign-in or bootstrap, not a failed sign-in that leaves
                        // a session nobody holds.
                        if !started.has_default_team
                            && let Err(error) = self.provisioner.ensure_default_team(user).await
                        {
                            tracing::warn!(user_id = %user, error = %error, "could not make a default team again");
                        }
                        tracing::info!(user_id = %user, provider = provider.name(), "signed in");
                        self.sessions.identity_seen(identity, super::now());
                        return Ok(Completed { user, session: Some(session), return_to, identity, linked: None });
                    }
                }
                let (user, identity, linked) =
                    self.sign_in_user(provider.as_ref(), subject, &info, request_id.clone()).await?;
                self.keep_tokens(provider.as_ref(), identity, &tokens).await?;
                let audit = [NewAuditEvent::new(ActorKind::User, "sign_in.succeeded")
                    .actor(Some(user.id.to_string()), None)
                    .target("user", user.id.to_string())
                    .request(request_id)
                    .details(serde_json::json!({ "provider": provider.name(), "identity_id": identity.to_string() }))];
                let Some(session) = self
                    .sessions
                    .create(user.id, Some(identity), device, authenticated_at, session.as_ref(), &audit)
                    .await?
                else {
                    // Disabled (or deleted) since it was found: no session, no row of a sign-in.
                    return Err(match self.store.get_user(user.id).await? {
                        Some(_) => SignInError::UserDisabled,
                        None => SignInError::Removed,
                    });
                };
                tracing::info!(user_id = %user.id, provider = provider.name(), "signed in");
                self.sessions.identity_seen(identity, super::now());
                Ok(Completed { user: user.id, session: Some(session), return_to, identity, linked })
            }
            Purpose::Connect { .. } => Err(FlowError::InvalidState("this flow connects an account").into()),
        }
    }

    async fn sign_in_user(
        &self,
        provider: &dyn Provider,
        subject: Subject,
        info: &UserInfo,
        request_id: Option<String>,
    ) -> Result<(User, IdentityId, Option<LinkRule>), SignInError> {
        // Decided again when another first sign-in with the same email (another provider's
        // identity of the same person, at the same moment) made an account meanwhile, or the
        // identity itself was made meanwhile: once is enough, as the next decision sees that
        // account or identity; the bound guards against a stream of them.
        for _ in 0..3 {
            match self.sign_in_user_once(provider, &subject, info, request_id.clone()).await {
                Err(SignInError::ChangedMeanwhile) => continue,
                done => return done,
            }
        }
        Err(SignInError::ChangedMeanwhile)
    }

    async fn sign_in_user_once(
        &self,
        provider: &dyn Provider,
        subject: &Subject,
        info: &UserInfo,
        request_id: Option<String>,
    ) -> Result<(User, IdentityId, Option<LinkRule>), SignInError> {
        let issuer = provider.identity_issuer().clone();
        if let Some(found) = self.store.find_identity(&issuer, subject).await? {
            return self.returning(found).await;
        }
        // The email that decides whom a first sign-in is (a link asked for, an account joined)
        // may be one the provider's userinfo would give: not taken for none, which would make
        // the person a second account.
        if info.email_unread {
            tracing::warn!(
                provider = provider.name(),
                "a first sign-in waits for the provider's discovery document, for its userinfo endpoint (or set userinfo_endpoint)"
            );
            let why = "the provider's userinfo endpoint is not known until its discovery document is read";
            return Err(ProviderError::Unavailable(why.into()).into());
        }
        // The accounts with the address when this decision was taken (claims included): the
        // account is made only if they are still the same then.
        let mut holders = None;
        if let Some(email) = &info.email {
            let verified = info.email_verified && provider.config().trusted_email_verification;
            let mut owners = self.store.users_with_email(email).await?;
            holders = Some(owners.iter().map(|owner| owner.id).collect::<Vec<_>>());
            if verified {
                // An address nobody vouched for is a claim, not ownership: an account that only
                // claims it — its email unverified, every identity of it signed in through a
                // provider not trusted to verify emails, or through a trusted one that did not
                // verify its email — neither blocks the address's proven
                // owner nor is joined to them; else anyone could lock a person out by signing up
                // first in their name. Accounts an operator made (import, bootstrap, a
                // just-in-time issuer) still ask for a link.
                let mut kept = Vec::with_capacity(owners.len());
                for owner in owners {
                    if owner.email_verified || !self.only_claims(owner.id, email).await? {
                        kept.push(owner);
                    }
                }
                owners = kept;
            }
            // The one account that would be linked, were it not disabled.
            let linkable = match owners.as_slice() {
                [owner] if provider.config().auto_link_by_email && verified && owner.email_verified => Some(owner),
                _ => None,
            };
            if let Some(owner) = linkable
                && !owner.disabled
            {
                let rule = (LinkRule::VerifiedEmail, request_id);
                let (identity, new) = match self.link(provider, owner.id, subject.clone(), info, rule).await {
                    Ok(linked) => linked,
                    // The identity was made meanwhile for another user (a token of the same
                    // issuer provisioned just in time, a bootstrap): decided again (see
                    // `sign_in_user`), which finds it and signs in as that user, as a first
                    // sign-in that loses to another answers with the winner's user.
                    Err(SignInError::IdentityAlreadyLinked) => return Err(SignInError::ChangedMeanwhile),
                    Err(error) => return Err(error),
                };
                // As for a returning user: one who left their default team gets one again.
                self.provisioner.ensure_default_team(owner.id).await?;
                tracing::info!(user_id = %owner.id, provider = provider.name(), "linked by verified email");
                return Ok((owner.clone(), identity, new.then_some(LinkRule::VerifiedEmail)));
            }
            if !owners.is_empty() {
                // A first sign-in of this same identity, beside this one, may have made the
                // account that now holds the address: its answer is this one's too.
                if let Some(found) = self.store.find_identity(&issuer, subject).await? {
                    return self.returning(found).await;
                }
                // Not "sign in the way you did before, then link": that way is refused too.
                if linkable.is_some() {
                    return Err(SignInError::UserDisabled);
                }
                return Err(SignInError::LinkRequired { provider: provider.name().to_owned() });
            }
        }
        let claim = IdentityClaim {
            issuer,
            subject: subject.clone(),
            email: info.email.clone(),
            // An email is recorded as verified only on the word of a provider trusted for it:
            // automatic linking relies on the account's flag, and an untrusted provider's
            // "verified" would let anyone who signs up there in someone's name have that
            // person's later first sign-in (through a trusted provider) joined to their account.
            email_verified: info.email_verified && provider.config().trusted_email_verification,
            name: DisplayName::parse_optional(info.name.as_deref()).ok().flatten(),
            provider: provider.name().to_owned(),
        };
        let provisioned = self.provisioner.provision_first_sign_in(&claim, holders).await?;
        Ok((provisioned.user, provisioned.identity_id, None))
    }

    /// The user of an identity found signing in, unless disabled; with a default team made
    /// again when they left theirs, as provisioning does for every other way in.
    async fn returning(&self, found: IdentityMatch) -> Result<(User, IdentityId, Option<LinkRule>), SignInError> {
        if found.user.disabled {
            return Err(SignInError::UserDisabled);
        }
        if found.default_team.is_none() {
            self.provisioner.ensure_default_team(found.user.id).await?;
        }
        Ok((found.user, found.identity_id, None))
    }

    /// Whether `user` was made, and is held, only through sign-ins that vouched for no email at
    /// `email`: at providers not trusted to verify emails, or at trusted ones that said the email
    /// was not verified, or verified another address: an account whose hold on `email` is
    /// someone's say-so. (A user gone meanwhile counts as such: it blocks nobody.)
    async fn only_claims(&self, user: UserId, email: &Email) -> Result<bool, SignInError> {
        let Some(profile) = self.store.user_profile(user, ReadFrom::Primary).await? else {
            return Ok(true);
        };
        let providers = self.flows.providers();
        Ok(profile.identities.iter().all(|identity| {
            // An identity an operator made (the admin bootstrap, an import, a just-in-time token
            // of an `[[issuers]]` issuer) has the email flag the operator gave: its account is no
            // mere claim, whatever the flag. One signed in through a browser provider is judged
            // by that provider's word, even when its issuer is also on the allow-list.
            let made_by_an_operator = self.provisioner.made_by_an_operator(identity);
            // A trusted identity vouches for the address it verified, not for another the
            // account claims: one linked with its own verified address proves nothing of this one.
            let vouches = identity.email_verified
                && identity.email.as_deref().and_then(|e| Email::parse(e).ok()).is_some_and(|e| e.key() == email.key());
            providers
                .get(Some(&identity.provider))
                .is_some_and(|p| !p.config().trusted_email_verification || (!vouches && !made_by_an_operator))
        }))
    }

    /// Links the identity to `user` by `rule`, with its `identity.linked` audit row in the same
    /// transaction; whether the link is new.
    async fn link(
        &self,
        provider: &dyn Provider,
        user: UserId,
        subject: Subject,
        info: &UserInfo,
        (rule, request_id): (LinkRule, Option<String>),
    ) -> Result<(IdentityId, bool), SignInError> {
        let identity_id = IdentityId::generate();
        let link = NewLink {
            identity_id,
            issuer: provider.identity_issuer().clone(),
            subject,
            provider: provider.name().to_owned(),
            email: info.email.clone(),
            // As for a new user (see `sign_in_user`): verified only on a trusted provider's word.
            email_verified: info.email_verified && provider.config().trusted_email_verification,
            now: super::now(),
            audit: Some(
                NewAuditEvent::new(ActorKind::User, "identity.linked")
                    .actor(Some(user.to_string()), None)
                    .target("identity", identity_id.to_string())
                    .request(request_id)
                    .details(serde_json::json!({ "provider": provider.name(), "rule": rule.as_str() })),
            ),
            by_email: match rule {
                LinkRule::VerifiedEmail => info.email.clone(),
                LinkRule::SignedInUser => None,
            },
        };
        let store = self.store.clone();
        let outcome = change_to_end(
            &self.principals,
            async move { store.link_identity(user, &link).await },
            move |principals, done| {
                if matches!(done, Ok(LinkOutcome::Linked(_)) | Err(_)) {
                    principals.invalidate_user(user);
                }
            },
        );
        match outcome.await? {
            LinkOutcome::Linked(identity) => Ok((identity.id, true)),
            LinkOutcome::AlreadyLinked(identity) => Ok((identity.id, false)),
            LinkOutcome::LinkedToAnotherUser => Err(SignInError::IdentityAlreadyLinked),
            // Decided on an address the user no longer holds: decided again.
            LinkOutcome::HolderChanged => Err(SignInError::ChangedMeanwhile),
        }
    }

    /// Whether a sign-in through `provider` keeps its upstream tokens.
    fn keeps_tokens(&self, provider: &dyn Provider) -> bool {
        provider.config().store_tokens && self.keyring.is_some()
    }

    /// Keeps the upstream tokens, encrypted, when the provider is configured to.
    async fn keep_tokens(
        &self,
        provider: &dyn Provider,
        identity: IdentityId,
        tokens: &TokenSet,
    ) -> Result<(), SignInError> {
        let Some(keyring) = self.keyring.as_ref().filter(|_| self.keeps_tokens(provider)) else {
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
