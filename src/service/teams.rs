//! Teams as seen from outside: lookups by id or slug, email-domain claims, and home-realm
//! discovery (which sign-in method fits an email).
//!
//! Discovery never looks at users: the answer for a domain is the same whether or not the email
//! has an account. Only verified claims whose issuer is still allowed route to single sign-on.

use std::sync::Arc;

use super::principals::{PrincipalCache, change_to_end};
use super::users::{Page, PageRequest};
use crate::domain::{DomainClaim, DomainName, Email, Issuer, Role, Slug, Team, TeamId, TeamRef, UserId};
use crate::error::{ErrorCode, PublicError};
pub use crate::store::MemberWrite;
use crate::store::{
    ActingRefusal, ClaimOutcome, CreateTeamOutcome, DeleteTeamOutcome, MemberOutcome, ReadFrom, RemoveOutcome, Store,
    StoreError, TeamMember, TeamQuery,
};
use crate::upstream::issuers::IssuerRegistry;

/// Why a team operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TeamError {
    /// No team has that id or slug.
    #[error("no team has this id or slug")]
    TeamNotFound,
    /// The issuer is not on the allow-list.
    #[error("the issuer is not on this server's allow-list")]
    IssuerNotAllowed,
    /// Another team claims the domain.
    #[error("another team already claims this domain")]
    DomainClaimedByAnotherTeam,
    /// The team does not claim the domain.
    #[error("the team does not claim this domain")]
    DomainNotClaimed,
    /// No such user.
    #[error("user not found")]
    UserNotFound,
    /// The user is not a member.
    #[error("the user is not a member of this team")]
    MemberNotFound,
    /// The team's last owner cannot leave nor stop being an owner.
    #[error("the last owner of a team cannot leave it nor give up the owner role; make another member an owner first")]
    LastOwner,
    /// Only owners may manage members.
    #[error("only team owners may manage members")]
    NotOwner,
    /// The user acting was disabled meanwhile.
    #[error("this user is disabled")]
    UserDisabled,
    /// Another team has the slug.
    #[error("another team has this slug; choose another")]
    SlugTaken,
    /// The team is a member's default team.
    #[error("this team is a member's default team: it is deleted with that user when they are its only member")]
    DefaultTeam,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for TeamError {
    fn code(&self) -> ErrorCode {
        match self {
            TeamError::TeamNotFound => ErrorCode::TeamNotFound,
            TeamError::IssuerNotAllowed => ErrorCode::IssuerNotAllowed,
            TeamError::DomainClaimedByAnotherTeam => ErrorCode::DomainAlreadyClaimed,
            TeamError::DomainNotClaimed => ErrorCode::NotFound,
            TeamError::UserNotFound => ErrorCode::UserNotFound,
            TeamError::MemberNotFound => ErrorCode::MemberNotFound,
            TeamError::LastOwner => ErrorCode::LastOwner,
            TeamError::NotOwner => ErrorCode::NotTeamAdmin,
            TeamError::UserDisabled => ErrorCode::UserDisabled,
            TeamError::SlugTaken => ErrorCode::SlugTaken,
            TeamError::DefaultTeam => ErrorCode::DefaultTeam,
            TeamError::Store(e) => e.code(),
        }
    }
}

/// Which sign-in method fits an email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Sign in through the team's identity provider.
    Sso {
        /// The issuer to sign in with.
        issuer: Issuer,
        /// Its configured name.
        provider: String,
    },
    /// Use the default sign-in.
    Default,
}

/// What [`Teams::write_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// The user joined the team.
    Added,
    /// The user was a member; their role changed.
    RoleChanged,
    /// The user was a member with that role already; nothing changed.
    Unchanged,
}

/// What [`Teams::claim_domain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimChange {
    /// The domain is newly the team's.
    Created,
    /// The team's claim changed issuer or verification.
    Updated,
    /// The team claimed it already, with that issuer and verification.
    Unchanged,
}

/// The team service.
#[derive(Debug, Clone)]
pub struct Teams {
    store: Arc<dyn Store>,
    issuers: Arc<IssuerRegistry>,
    principals: Arc<PrincipalCache>,
}

impl Teams {
    /// Creates the service; `principals` is purged of members whose teams change.
    pub fn new(store: Arc<dyn Store>, issuers: Arc<IssuerRegistry>, principals: Arc<PrincipalCache>) -> Self {
        Self { store, issuers, principals }
    }

    /// A team and `user`'s role in it (`None`: not a member).
    pub async fn role_of(&self, team: &TeamRef, user: UserId) -> Result<(Team, Option<Role>), TeamError> {
        self.store.team_with_role(team, user).await?.ok_or(TeamError::TeamNotFound)
    }

    /// Adds `user` to a team with `role`, or changes their role, as `how` says (see
    /// [`MemberWrite`]; never demoting the last owner). With `acting` set, only an owner of the
    /// team may do it (the admin API and imports pass `None`).
    pub async fn write_member(
        &self,
        team: &TeamRef,
        acting: Option<UserId>,
        user: UserId,
        role: Role,
        how: MemberWrite,
    ) -> Result<MemberChange, TeamError> {
        let team = self.owner_gate(team, acting).await?;
        let store = self.store.clone();
        let changed = |outcome: &MemberOutcome| matches!(outcome, MemberOutcome::Added | MemberOutcome::Updated);
        let outcome =
            self.changing(user, changed, async move {
                store.write_member(team.id, acting, user, role, super::now(), how).await
            })
            .await?;
        member_change(outcome)
    }

    /// Runs a membership change of `user` to its end (see [`change_to_end`]), then forgets what
    /// this instance cached about the user when something `changed` — or may have: a change
    /// committed whose reply was lost (an error) is still a change.
    async fn changing<T: Send + 'static>(
        &self,
        user: UserId,
        changed: fn(&T) -> bool,
        change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        change_to_end(&self.principals, change, move |principals, done| {
            if done.map_or(true, changed) {
                principals.invalidate_user(user);
            }
        })
        .await
    }

    /// Removes `user` from a team (never its last owner). With `acting` set, only an owner may,
    /// or the user themselves: a member may always leave (unless disabled meanwhile), and so may
    /// a last owner who is the team's only member, unless it is their default team: the team is
    /// then deleted, and the answer is `true`.
    pub async fn remove_member(&self, team: &TeamRef, acting: Option<UserId>, user: UserId) -> Result<bool, TeamError> {
        let acting_was_user = acting == Some(user);
        let (team, acting) = if acting_was_user {
            // Leaving needs no right but membership, which the removal itself checks.
            match self.role_of(team, user).await? {
                (team, Some(_)) => (team, None),
                (_, None) => return Err(TeamError::TeamNotFound),
            }
        } else {
            (self.owner_gate(team, acting).await?, acting)
        };
        let store = self.store.clone();
        let outcome = self
            .changing(
                user,
                |outcome| matches!(outcome, RemoveOutcome::Removed | RemoveOutcome::RemovedWithTeam),
                async move {
                    if acting_was_user {
                        store.leave_team(team.id, user).await
                    } else {
                        store.remove_member(team.id, acting, user).await
                    }
                },
            )
            .await?;
        match outcome {
            RemoveOutcome::Removed => Ok(false),
            RemoveOutcome::RemovedWithTeam => Ok(true),
            // Removed meanwhile, one leaving is no longer a member: as the check before would
            // have said, the team does not exist for them.
            RemoveOutcome::NotMember if acting_was_user => Err(TeamError::TeamNotFound),
            RemoveOutcome::NotMember => Err(TeamError::MemberNotFound),
            RemoveOutcome::LastOwner => Err(TeamError::LastOwner),
            RemoveOutcome::NotAllowed(refusal) => Err(refused(refusal)),
            RemoveOutcome::TeamNotFound => Err(TeamError::TeamNotFound),
        }
    }

    /// The team, if `acting` is `None` (admin) or an owner of it. A non-member is told the team
    /// does not exist.
    async fn owner_gate(&self, team: &TeamRef, acting: Option<UserId>) -> Result<Team, TeamError> {
        let Some(acting) = acting else {
            return self.find(team).await;
        };
        match self.role_of(team, acting).await? {
            (team, Some(Role::Owner)) => Ok(team),
            (_, Some(_)) => Err(TeamError::NotOwner),
            (_, None) => Err(TeamError::TeamNotFound),
        }
    }

    /// A team by id or slug.
    pub async fn find(&self, team: &TeamRef) -> Result<Team, TeamError> {
        self.store.find_team(team).await?.ok_or(TeamError::TeamNotFound)
    }

    /// A page of teams, oldest first; with `slug_prefix`, those whose slug starts with it.
    pub async fn list(&self, slug_prefix: Option<&str>, page: PageRequest) -> Result<Page<Team>, TeamError> {
        let query = TeamQuery { slug_prefix: slug_prefix.map(str::to_owned), after: page.after, limit: page.probe() };
        let teams = self.store.list_teams(&query).await?;
        Ok(page.page(teams, |t| t.id.as_uuid()))
    }

    /// A page of a team's members, by user id.
    pub async fn members(&self, team: &TeamRef, page: PageRequest) -> Result<Page<TeamMember>, TeamError> {
        let team = self.find(team).await?;
        let members = self.store.team_members(team.id, page.after, page.probe()).await?;
        Ok(page.page(members, |m| m.user_id.as_uuid()))
    }

    /// Creates a team (an operator's: nobody's default team), with `owner` as its owner when
    /// given.
    pub async fn create(&self, slug: Slug, name: String, owner: Option<UserId>) -> Result<Team, TeamError> {
        let now = super::now();
        let team = Team { id: TeamId::generate(), slug, name, created_at: now };
        let store = self.store.clone();
        let created = change_to_end(
            &self.principals,
            async move { store.create_team(&team, owner, now).await },
            move |principals, done| {
                if let (Some(owner), Ok(CreateTeamOutcome::Created(_)) | Err(_)) = (owner, done) {
                    principals.invalidate_user(owner);
                }
            },
        );
        match created.await? {
            CreateTeamOutcome::Created(team) => {
                tracing::info!(team_id = %team.id, "created a team");
                Ok(team)
            }
            CreateTeamOutcome::SlugTaken => Err(TeamError::SlugTaken),
            CreateTeamOutcome::OwnerNotFound => Err(TeamError::UserNotFound),
        }
    }

    /// Deletes a team (see [`Store::delete_team`]), not a member's default team; this instance
    /// forgets its members at once, others within `cache.sync_interval_ms`. Returns its id and
    /// how many members it had.
    pub async fn delete(&self, team: &TeamRef) -> Result<(TeamId, usize), TeamError> {
        let team = self.find(team).await?;
        let (store, id) = (self.store.clone(), team.id);
        let deleted = change_to_end(
            &self.principals,
            async move { store.delete_team(id, super::now()).await },
            // After an error, whether it went is unknown: the cache-invalidation log tells every
            // instance, this one too, if it did.
            move |principals, done| {
                if let Ok(DeleteTeamOutcome::Deleted(members)) = done {
                    principals.invalidate_users(&members.iter().copied().collect());
                }
            },
        );
        match deleted.await? {
            DeleteTeamOutcome::Deleted(members) => {
                tracing::info!(team_id = %id, members = members.len(), "deleted a team");
                Ok((id, members.len()))
            }
            DeleteTeamOutcome::NotFound => Err(TeamError::TeamNotFound),
            DeleteTeamOutcome::DefaultTeam => Err(TeamError::DefaultTeam),
        }
    }

    /// Claims `domain` for `team`, routed to `issuer`, or updates the team's claim. Returns the
    /// claim as stored and what changed: a repeated claim changes nothing, not even `updated_at`.
    pub async fn claim_domain(
        &self,
        team: &TeamRef,
        domain: DomainName,
        issuer: Issuer,
        verified: Option<bool>,
    ) -> Result<(DomainClaim, ClaimChange), TeamError> {
        // The team first: a team that does not exist is that, whatever the issuer.
        let team = self.find(team).await?;
        if self.issuers.get(&issuer).is_none() {
            return Err(TeamError::IssuerNotAllowed);
        }
        // Left out, `verified` keeps what the team's claim had (a new claim is unverified): a
        // change of issuer must not quietly stop the domain's single sign-on. Kept by the store's
        // statement itself: a claim deleted meanwhile comes back unverified.
        let now = super::now();
        let claim = DomainClaim {
            domain,
            team_id: team.id,
            issuer,
            verified: verified.unwrap_or(false),
            created_at: now,
            updated_at: now,
        };
        match self.store.claim_domain(&claim, verified.is_none()).await? {
            ClaimOutcome::Created(claim) => Ok((claim, ClaimChange::Created)),
            ClaimOutcome::Updated(claim) => Ok((claim, ClaimChange::Updated)),
            ClaimOutcome::Unchanged(claim) => Ok((claim, ClaimChange::Unchanged)),
            ClaimOutcome::ClaimedByAnotherTeam => Err(TeamError::DomainClaimedByAnotherTeam),
            ClaimOutcome::TeamGone => Err(TeamError::TeamNotFound),
        }
    }

    /// The domains a team claims.
    pub async fn domains(&self, team: &TeamRef) -> Result<Vec<DomainClaim>, TeamError> {
        let team = self.find(team).await?;
        Ok(self.store.team_domains(team.id).await?)
    }

    /// Releases a team's claim on a domain.
    pub async fn release_domain(&self, team: &TeamRef, domain: &DomainName) -> Result<(), TeamError> {
        let team = self.find(team).await?;
        if self.store.release_domain(team.id, domain).await? { Ok(()) } else { Err(TeamError::DomainNotClaimed) }
    }

    /// Which sign-in method fits `email`.
    pub async fn discover(&self, email: &Email) -> Result<Discovery, StoreError> {
        let Some(claim) = self.store.domain_claim(&email.domain_name(), ReadFrom::Replica).await? else {
            return Ok(Discovery::Default);
        };
        match self.issuers.get(&claim.issuer) {
            Some(entry) if claim.verified => {
                Ok(Discovery::Sso { issuer: claim.issuer, provider: entry.config.name.clone() })
            }
            _ => Ok(Discovery::Default),
        }
    }
}

/// The acting user's loss of the right the request was let in with, as a change's transaction
/// found it: as the gate before would have answered (a team that is not theirs does not
/// exist for them; a disabled user acts in nothing).
fn refused(refusal: ActingRefusal) -> TeamError {
    match refusal {
        ActingRefusal::NotOwner => TeamError::NotOwner,
        ActingRefusal::NotMember => TeamError::TeamNotFound,
        ActingRefusal::Disabled => TeamError::UserDisabled,
    }
}

/// What a membership write did, or why it did nothing.
fn member_change(outcome: MemberOutcome) -> Result<MemberChange, TeamError> {
    match outcome {
        MemberOutcome::Added => Ok(MemberChange::Added),
        MemberOutcome::Updated => Ok(MemberChange::RoleChanged),
        MemberOutcome::Unchanged => Ok(MemberChange::Unchanged),
        MemberOutcome::UserNotFound => Err(TeamError::UserNotFound),
        MemberOutcome::LastOwner => Err(TeamError::LastOwner),
        MemberOutcome::NotAllowed(refusal) => Err(refused(refusal)),
        MemberOutcome::TeamNotFound => Err(TeamError::TeamNotFound),
        MemberOutcome::NotMember => Err(TeamError::MemberNotFound),
    }
}
