//! Just-in-time provisioning: one external identity becomes exactly one internal user, with a
//! default team, in one transaction, however many callers race for it.
//!
//! `provision` reads first (the common case: the identity exists). For a first-time identity it
//! runs the store's provisioning transaction, which creates user, identity, default team, owner
//! membership and a `user.created` outbox event together, or nothing at all when another caller
//! linked the identity first; the loser then reads the winner's user. Every caller gets the same
//! user and team.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::principals::{PrincipalCache, change_to_end};
use crate::crypto;
use crate::domain::{
    DisplayName, Email, Identity, IdentityId, Issuer, Slug, Subject, Team, TeamId, User, UserId, UserProfile,
};
use crate::error::{ErrorCode, PublicError};
use crate::store::{
    ActorKind, CreateOutcome, DefaultTeam, NewAccount, NewAuditEvent, NewTeam, ReadFrom, Store, StoreError,
    UnlinkOutcome, UserChange, UserUpdate, UserUpdateOutcome,
};
use crate::upstream::issuers::IssuerRegistry;
use crate::worker::last_seen::TOUCH_INTERVAL;

/// An external identity as asserted by a trusted caller (the admin API, a verified token, a
/// completed sign-in).
#[derive(Debug, Clone)]
pub struct IdentityClaim {
    /// Normalised issuer.
    pub issuer: Issuer,
    /// Subject at the issuer.
    pub subject: Subject,
    /// The email the issuer reports, if any.
    pub email: Option<Email>,
    /// Whether the issuer says the email is verified.
    pub email_verified: bool,
    /// Display name, if known.
    pub name: Option<DisplayName>,
    /// The provider or issuer configuration the identity came through.
    pub provider: String,
}

/// The outcome of provisioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The user the identity belongs to.
    pub user: User,
    /// The identity link.
    pub identity_id: IdentityId,
    /// Their default team.
    pub team: Team,
    /// Whether this call created the user.
    pub created: bool,
}

/// Why provisioning was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The issuer is not on the allow-list.
    #[error("the issuer is not on this server's allow-list")]
    IssuerNotAllowed,
    /// The identity belongs to a disabled user.
    #[error("the user is disabled")]
    UserDisabled,
    /// No user has that id.
    #[error("no user has this id")]
    UserNotFound,
    /// A first sign-in's email is held by other accounts than those its decision saw: another
    /// first sign-in with the address made one meanwhile (see [`Provisioner::provision_first_sign_in`]).
    #[error("the accounts with this email changed while signing in")]
    EmailHoldersChanged,
    /// `email_verified: true` for a user who has no email, and is given none.
    #[error("the user has no email to verify: send `email` with it")]
    NoEmailToVerify,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for ProvisionError {
    fn code(&self) -> ErrorCode {
        match self {
            ProvisionError::IssuerNotAllowed => ErrorCode::IssuerNotAllowed,
            ProvisionError::UserDisabled => ErrorCode::UserDisabled,
            ProvisionError::UserNotFound => ErrorCode::UserNotFound,
            ProvisionError::EmailHoldersChanged => ErrorCode::InternalError,
            ProvisionError::NoEmailToVerify => ErrorCode::InvalidRequest,
            ProvisionError::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            ProvisionError::NoEmailToVerify => vec![("field", "email_verified".into())],
            _ => Vec::new(),
        }
    }
}

/// Why an identity could not be unlinked or made primary.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The user has no such identity.
    #[error("the user has no such identity")]
    NotFound,
    /// It is the user's last identity.
    #[error("the last identity of a user cannot be unlinked")]
    LastIdentity,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for IdentityError {
    fn code(&self) -> ErrorCode {
        match self {
            IdentityError::NotFound => ErrorCode::IdentityNotFound,
            IdentityError::LastIdentity => ErrorCode::LastIdentity,
            IdentityError::Store(e) => e.code(),
        }
    }
}

/// The provisioning service: creates users and manages their lifecycle.
#[derive(Debug, Clone)]
pub struct Provisioner {
    store: Arc<dyn Store>,
    issuers: Arc<IssuerRegistry>,
    principals: Arc<PrincipalCache>,
}

impl Provisioner {
    /// Creates the service; `principals` is purged whenever a user changes.
    pub fn new(store: Arc<dyn Store>, issuers: Arc<IssuerRegistry>, principals: Arc<PrincipalCache>) -> Self {
        Self { store, issuers, principals }
    }

    /// Disables or re-enables a user. A disabled user is refused by bootstrap and validation
    /// alike; this instance forgets anything it cached about them at once (other instances
    /// within `cache.sync_interval_ms`, from the cache-invalidation log). Whether anything
    /// changed: a user already so, with no session left to end, is not.
    pub async fn set_disabled(&self, user: UserId, disabled: bool) -> Result<UserUpdate, ProvisionError> {
        self.update_user(user, &UserChange { disabled: Some(disabled), ..UserChange::default() }).await
    }

    /// Changes a user's name, email, `email_verified` or `disabled` (`PATCH /admin/users/{id}`),
    /// in one transaction with its events; whether anything changed.
    pub async fn update_user(&self, user: UserId, change: &UserChange) -> Result<UserUpdate, ProvisionError> {
        let (store, change) = (self.store.clone(), change.clone());
        // Forgotten whatever the answer, even when nothing changed here: another instance may
        // have changed it first.
        let done = change_to_end(
            &self.principals,
            async move { store.update_user(user, &change, super::now()).await },
            move |principals, _| principals.invalidate_user(user),
        );
        let update = match done.await? {
            UserUpdateOutcome::Updated(update) => update,
            UserUpdateOutcome::NotFound => return Err(ProvisionError::UserNotFound),
            // Decided under the row's lock: an address set or removed by a change committed a
            // moment before counts.
            UserUpdateOutcome::NoEmailToVerify => return Err(ProvisionError::NoEmailToVerify),
        };
        if update.changed {
            tracing::info!(user_id = %update.user.id, "changed a user");
        }
        Ok(update)
    }

    /// The admin bootstrap: provisions `claim` if its issuer is on the allow-list. Nothing is
    /// written for an issuer that is not.
    pub async fn bootstrap(&self, mut claim: IdentityClaim) -> Result<Provisioned, ProvisionError> {
        let entry = self.issuers.get(&claim.issuer).ok_or(ProvisionError::IssuerNotAllowed)?;
        if claim.provider.is_empty() {
            claim.provider = entry.config.name.clone();
        }
        self.provision(&claim).await
    }

    /// Whether the admin bootstrap accepts identities of `issuer` (it is on the allow-list).
    pub fn allows(&self, issuer: &Issuer) -> bool {
        self.issuers.get(issuer).is_some()
    }

    /// Whether `identity` came from an operator's path — the admin bootstrap, an import, a
    /// just-in-time token — as far as it tells: those name its issuer's `[[issuers]]` entry as
    /// the provider (unless a bootstrap named another), a browser sign-in names its provider.
    /// An identity of an allow-listed issuer signed in through a browser provider is not one.
    /// (An entry and a browser provider of one issuer with the same name cannot be told apart:
    /// counted as the operator's.)
    pub fn made_by_an_operator(&self, identity: &Identity) -> bool {
        self.issuers.get(&identity.issuer).is_some_and(|entry| entry.config.name == identity.provider)
    }

    /// Finds the user `claim` belongs to, creating user, identity and default team on first
    /// sight. Callers have already established that the claim is trustworthy.
    pub async fn provision(&self, claim: &IdentityClaim) -> Result<Provisioned, ProvisionError> {
        self.provision_first_sign_in(claim, None).await
    }

    /// [`Provisioner::provision`] for a first sign-in that decided to make an account on
    /// `holders`, the accounts that held its email when it looked (none, or none it may join;
    /// `None` for a claim without an email): refused with
    /// [`ProvisionError::EmailHoldersChanged`], writing nothing, when another first sign-in with
    /// the address made an account meanwhile — the decision is to be taken again.
    pub async fn provision_first_sign_in(
        &self,
        claim: &IdentityClaim,
        holders: Option<Vec<UserId>>,
    ) -> Result<Provisioned, ProvisionError> {
        // One retry is enough: `IdentityTaken` means the identity now exists, and a user deleted
        // between the read and its default team's creation is provisioned anew. The bound only
        // guards against an identity vanishing again and again.
        for _ in 0..3 {
            if let Some(found) = self.store.find_identity(&claim.issuer, &claim.subject).await? {
                if found.user.disabled {
                    return Err(ProvisionError::UserDisabled);
                }
                let team = match found.default_team {
                    Some(team) => team,
                    None => match self.ensure_team_of(&found.user).await {
                        Ok((team, _)) => team,
                        // Deleted since the read (with the identity): the next round creates it.
                        Err(ProvisionError::UserNotFound) => continue,
                        Err(error) => return Err(error),
                    },
                };
                let now = super::now();
                if now - found.last_seen_at >= TOUCH_INTERVAL {
                    self.store.touch_identity(found.identity_id, now).await?;
                }
                crate::observability::record_provisioning(&claim.issuer, "existing");
                return Ok(Provisioned { user: found.user, identity_id: found.identity_id, team, created: false });
            }
            let account = NewAccount { email_holders: holders.clone(), ..new_account(claim, super::now()) };
            match self.store.create_account(&account).await? {
                CreateOutcome::Created { user, team } => {
                    tracing::info!(user_id = %user.id, provider = ?claim.provider, "provisioned a new user");
                    crate::observability::record_provisioning(&claim.issuer, "created");
                    return Ok(Provisioned { user, identity_id: account.identity_id, team, created: true });
                }
                // A concurrent request created it first: the next round finds it.
                CreateOutcome::IdentityTaken => crate::observability::record_provisioning(&claim.issuer, "race_lost"),
                CreateOutcome::EmailHoldersChanged => return Err(ProvisionError::EmailHoldersChanged),
            }
        }
        // Deleted each time as soon as it was made: a change made meanwhile (409), not a 500.
        Err(ProvisionError::Store(StoreError::Gone { what: "the identity, deleted while it was provisioned" }))
    }

    /// The legacy bootstrap of an existing user: makes sure they have a default team. Returns the
    /// user, the team and whether the team was created.
    pub async fn ensure_default_team(&self, user: UserId) -> Result<(User, Team, bool), ProvisionError> {
        let user = self.store.get_user(user).await?.ok_or(ProvisionError::UserNotFound)?;
        if user.disabled {
            return Err(ProvisionError::UserDisabled);
        }
        let (team, created) = self.ensure_team_of(&user).await?;
        Ok((user, team, created))
    }

    /// Unlinks one of a user's identities (never the last one, nor the last one of the `sign_in`
    /// issuers, see [`Store::unlink_identity`]); the user's cached identities are forgotten at
    /// once.
    pub async fn unlink_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        sign_in: &[Issuer],
        request_id: Option<String>,
    ) -> Result<Identity, IdentityError> {
        let (store, sign_in) = (self.store.clone(), sign_in.to_vec());
        let audit = NewAuditEvent::new(ActorKind::User, "identity.unlinked")
            .actor(Some(user.to_string()), None)
            .target("identity", identity.to_string())
            .request(request_id)
            .details(serde_json::json!({ "rule": "owner_request" }));
        let outcome = change_to_end(
            &self.principals,
            async move { store.unlink_identity(user, identity, &sign_in, super::now(), Some(&audit)).await },
            move |principals, done| match done {
                Ok(UnlinkOutcome::Unlinked(identity)) => {
                    principals.invalidate_user(user);
                    principals.invalidate_identity(&identity.issuer, &identity.subject);
                }
                // Which identity went, if one did, is unknown: the user's principals go, and
                // the identity's verified tokens then resolve to nobody.
                Err(_) => principals.invalidate_user(user),
                Ok(_) => {}
            },
        );
        match outcome.await? {
            UnlinkOutcome::Unlinked(identity) => {
                tracing::info!(user_id = %user, identity_id = %identity.id, provider = ?identity.provider, "unlinked an identity");
                Ok(identity)
            }
            UnlinkOutcome::NotFound => Err(IdentityError::NotFound),
            UnlinkOutcome::LastIdentity => Err(IdentityError::LastIdentity),
        }
    }

    /// Makes one of a user's identities their primary one (the one chosen already: nothing
    /// changes, nothing is purged).
    pub async fn set_primary_identity(&self, user: UserId, identity: IdentityId) -> Result<(), IdentityError> {
        let store = self.store.clone();
        let changed = change_to_end(
            &self.principals,
            async move { store.set_primary_identity(user, identity, super::now()).await },
            move |principals, done| {
                if matches!(done, Ok(Some(true)) | Err(_)) {
                    principals.invalidate_user(user);
                }
            },
        );
        match changed.await? {
            Some(_) => Ok(()),
            None => Err(IdentityError::NotFound),
        }
    }

    /// A user with identities and teams.
    pub async fn user_profile(&self, user: UserId) -> Result<UserProfile, ProvisionError> {
        self.store.user_profile(user, ReadFrom::Primary).await?.ok_or(ProvisionError::UserNotFound)
    }

    /// The user's default team, created when they have none (then forgotten by the principal
    /// cache, which may hold them without a team, whatever the store answered; other instances
    /// learn from the log).
    async fn ensure_team_of(&self, user: &User) -> Result<(Team, bool), ProvisionError> {
        let name = user.name.as_deref().and_then(|n| DisplayName::parse_optional(Some(n)).ok().flatten());
        let plan = team_plan(name.as_ref());
        let (store, id) = (self.store.clone(), user.id);
        // A commit whose reply was lost may have made the team: forgotten then too.
        let made = change_to_end(
            &self.principals,
            async move { store.ensure_default_team(id, &plan, super::now()).await },
            move |principals, done| {
                if matches!(done, Ok(DefaultTeam::Created(_)) | Err(_)) {
                    principals.invalidate_user(id);
                }
            },
        )
        .await?;
        let (team, created) = match made {
            DefaultTeam::Found(team) => (team, false),
            DefaultTeam::Created(team) => (team, true),
            DefaultTeam::NoUser => return Err(ProvisionError::UserNotFound),
            DefaultTeam::UserDisabled => return Err(ProvisionError::UserDisabled),
        };
        Ok((team, created))
    }
}

/// The default team for a person: "<first name>'s Team" when a name is known, else "Default
/// Team". Its slug is derived from the name; when taken, a random suffix is tried, then the team
/// id itself, so that a slug collision never fails a bootstrap.
pub fn team_plan(name: Option<&DisplayName>) -> NewTeam {
    let id = TeamId::generate();
    let team_name = match name {
        Some(name) => format!("{}'s Team", name.first_name()),
        None => "Default Team".to_owned(),
    };
    let base = Slug::derive(&team_name, "team");
    let slug_candidates = vec![
        base.clone(),
        base.with_suffix(&crypto::random_base36(6)),
        base.with_suffix(&id.as_uuid().simple().to_string()),
    ];
    NewTeam { id, name: team_name, slug_candidates }
}

fn new_account(claim: &IdentityClaim, now: DateTime<Utc>) -> NewAccount {
    let user_id = UserId::generate();
    let team = team_plan(claim.name.as_ref());
    NewAccount {
        user_id,
        identity_id: IdentityId::generate(),
        issuer: claim.issuer.clone(),
        subject: claim.subject.clone(),
        provider: claim.provider.clone(),
        email: claim.email.clone(),
        // A user without an address is never verified (as `update_user` keeps it).
        email_verified: claim.email_verified && claim.email.is_some(),
        name: claim.name.as_ref().map(|n| n.as_str().to_owned()),
        team,
        now,
        email_holders: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names_follow_the_first_name() {
        let ada = DisplayName::parse_optional(Some("Ada Lovelace")).unwrap();
        let plan = team_plan(ada.as_ref());
        assert_eq!(plan.name, "Ada's Team");
        assert_eq!(plan.slug_candidates[0].as_str(), "adas-team");
        assert!(plan.slug_candidates[1].as_str().starts_with("adas-team-"));
        assert!(plan.slug_candidates[2].as_str().ends_with(&plan.id.as_uuid().simple().to_string()));

        let anonymous = team_plan(None);
        assert_eq!(anonymous.name, "Default Team");
        assert_eq!(anonymous.slug_candidates[0].as_str(), "default-team");
    }
}
