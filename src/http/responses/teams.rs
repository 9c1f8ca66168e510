//! Teams, their members and their email domains.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{DomainClaim, Role, Team, TeamMembership, TeamRole, UserId};
use crate::service::users::Page;
use crate::store::TeamMember;

/// A role in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Full control, including membership.
    Owner,
    /// Manages the team's resources.
    Admin,
    /// Uses the team's resources.
    Member,
}

impl From<Role> for MemberRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => MemberRole::Owner,
            Role::Admin => MemberRole::Admin,
            Role::Member => MemberRole::Member,
        }
    }
}

/// A team: the body of `GET /admin/teams/{team}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamResponse {
    /// The team's id.
    pub id: Uuid,
    /// Its unique, URL-safe handle.
    pub slug: String,
    /// Its display name.
    pub name: String,
    /// When the team was created.
    pub created_at: DateTime<Utc>,
}

impl From<Team> for TeamResponse {
    fn from(team: Team) -> Self {
        Self {
            id: team.id.as_uuid(),
            slug: team.slug.as_str().to_owned(),
            name: team.name,
            created_at: team.created_at,
        }
    }
}

/// A page of teams: the body of `GET /admin/teams`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamListResponse {
    /// The teams, oldest first.
    pub teams: Vec<TeamResponse>,
    /// The `cursor` of the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<Team>> for TeamListResponse {
    fn from(page: Page<Team>) -> Self {
        Self { teams: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }
    }
}

/// A member of a team, as operators see them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamMemberResponse {
    /// The member's user id.
    pub user_id: Uuid,
    /// Their role.
    pub role: MemberRole,
    /// Their email, if known.
    pub email: Option<String>,
    /// Their display name, if known.
    pub name: Option<String>,
    /// When they joined the team.
    pub joined_at: DateTime<Utc>,
}

impl From<TeamMember> for TeamMemberResponse {
    fn from(member: TeamMember) -> Self {
        Self {
            user_id: member.user_id.as_uuid(),
            role: member.role.into(),
            email: member.email,
            name: member.name,
            joined_at: member.joined_at,
        }
    }
}

/// A page of a team's members: the body of `GET /admin/teams/{team}/members`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamMemberListResponse {
    /// The members, by user id.
    pub members: Vec<TeamMemberResponse>,
    /// The `cursor` of the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<TeamMember>> for TeamMemberListResponse {
    fn from(page: Page<TeamMember>) -> Self {
        Self { members: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }
    }
}

/// A team as seen by one of its members: the team's fields, the member's role and whether it is
/// their default team.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamMembershipResponse {
    /// The team.
    #[serde(flatten)]
    pub team: TeamResponse,
    /// The member's role.
    pub role: MemberRole,
    /// Whether this is the member's default team.
    pub is_default: bool,
}

impl From<TeamMembership> for TeamMembershipResponse {
    fn from(membership: TeamMembership) -> Self {
        Self { team: membership.team.into(), role: membership.role.into(), is_default: membership.is_default }
    }
}

/// A team in a bootstrap response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamSummaryResponse {
    /// The team's id.
    pub id: Uuid,
    /// Its unique, URL-safe handle.
    pub slug: String,
    /// Its display name.
    pub name: String,
}

impl From<Team> for TeamSummaryResponse {
    fn from(team: Team) -> Self {
        Self { id: team.id.as_uuid(), slug: team.slug.as_str().to_owned(), name: team.name }
    }
}

/// A team the user of a validated token belongs to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TeamRoleResponse {
    /// The team's id.
    pub id: Uuid,
    /// The team's slug.
    pub slug: String,
    /// The user's role in it.
    pub role: MemberRole,
}

impl From<TeamRole> for TeamRoleResponse {
    fn from(team: TeamRole) -> Self {
        Self { id: team.id.as_uuid(), slug: team.slug.as_str().to_owned(), role: team.role.into() }
    }
}

/// A team member and their role: the body of `POST /v1/teams/{team}/members` and
/// `POST /admin/teams/{team}/members`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberResponse {
    /// The member's user id.
    pub user_id: Uuid,
    /// Their role in the team.
    pub role: MemberRole,
}

impl MemberResponse {
    /// `user` with `role`.
    pub fn new(user: UserId, role: Role) -> Self {
        Self { user_id: user.as_uuid(), role: role.into() }
    }
}

/// A team's claim on an email domain: the body of `POST /admin/teams/{team}/domains`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DomainClaimResponse {
    /// The lower-cased domain.
    pub domain: String,
    /// The team that claims it.
    pub team_id: Uuid,
    /// The issuer that users of the domain sign in with.
    pub issuer: String,
    /// Whether the claim is verified (only verified claims route sign-ins).
    pub verified: bool,
    /// When the claim was made.
    pub created_at: DateTime<Utc>,
    /// When the claim last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<DomainClaim> for DomainClaimResponse {
    fn from(claim: DomainClaim) -> Self {
        Self {
            domain: claim.domain.as_str().to_owned(),
            team_id: claim.team_id.as_uuid(),
            issuer: claim.issuer.as_str().to_owned(),
            verified: claim.verified,
            created_at: claim.created_at,
            updated_at: claim.updated_at,
        }
    }
}

/// The body of `GET /admin/teams/{team}/domains`: a JSON array of the team's domain claims.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct DomainClaimListResponse(
    /// The claims.
    pub Vec<DomainClaimResponse>,
);

impl From<Vec<DomainClaim>> for DomainClaimListResponse {
    fn from(claims: Vec<DomainClaim>) -> Self {
        Self(claims.into_iter().map(Into::into).collect())
    }
}
