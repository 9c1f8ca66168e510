//! Users and their external identities: `/v1/me` and the admin user routes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{TeamMembershipResponse, TeamSummaryResponse};
use crate::domain::{Identity, Team, User, UserId, UserProfile};
use crate::service::users::Page;

/// A user: the body of `PATCH /admin/users/{user_id}`, and the top of a [`UserProfileResponse`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserResponse {
    /// The user's stable id, the only id other services should keep.
    pub id: Uuid,
    /// The email address last known for the user, if an upstream provider told one.
    pub email: Option<String>,
    /// Whether an upstream provider vouched for the email.
    pub email_verified: bool,
    /// The display name, if known.
    pub name: Option<String>,
    /// Whether the user is disabled (refused everywhere).
    pub disabled: bool,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(user: User) -> Self {
        Self {
            id: user.id.as_uuid(),
            email: user.email,
            email_verified: user.email_verified,
            name: user.name,
            disabled: user.disabled,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// A page of users: the body of `GET /admin/users`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserListResponse {
    /// The users, oldest first.
    pub users: Vec<UserResponse>,
    /// The `cursor` of the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<Page<User>> for UserListResponse {
    fn from(page: Page<User>) -> Self {
        Self { users: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }
    }
}

/// An external identity (an issuer and subject pair) linked to a user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IdentityResponse {
    /// The id of the link.
    pub id: Uuid,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// The normalised issuer URL.
    pub issuer: String,
    /// The subject (`sub`) at the issuer.
    pub subject: String,
    /// The provider (or issuer configuration) name it came through.
    pub provider: String,
    /// The email seen when the link was made.
    pub email: Option<String>,
    /// Whether that email was verified upstream when the link was made.
    pub email_verified: bool,
    /// When the link was made.
    pub created_at: DateTime<Utc>,
    /// When the identity was last used to sign in or bootstrap.
    pub last_seen_at: DateTime<Utc>,
}

impl From<Identity> for IdentityResponse {
    fn from(identity: Identity) -> Self {
        Self {
            id: identity.id.as_uuid(),
            user_id: identity.user_id.as_uuid(),
            issuer: identity.issuer.as_str().to_owned(),
            subject: identity.subject.as_str().to_owned(),
            provider: identity.provider,
            email: identity.email,
            email_verified: identity.email_verified,
            created_at: identity.created_at,
            last_seen_at: identity.last_seen_at,
        }
    }
}

/// A user with their identities and teams: the body of `GET /v1/me`,
/// `POST /v1/me/identities/{identity_id}/primary` and `GET /admin/users/{user_id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserProfileResponse {
    /// The user's fields.
    #[serde(flatten)]
    pub user: UserResponse,
    /// Their external identities, oldest first.
    pub identities: Vec<IdentityResponse>,
    /// The identity the user chose as primary, else their oldest one; null without identities.
    pub primary_identity_id: Option<Uuid>,
    /// Their teams, default team first.
    pub teams: Vec<TeamMembershipResponse>,
}

impl From<UserProfile> for UserProfileResponse {
    fn from(profile: UserProfile) -> Self {
        Self {
            user: profile.user.into(),
            identities: profile.identities.into_iter().map(Into::into).collect(),
            primary_identity_id: profile.primary_identity_id.map(|id| id.as_uuid()),
            teams: profile.teams.into_iter().map(Into::into).collect(),
        }
    }
}

/// The body of `POST /admin/users/bootstrap` and `POST /admin/users/{user_id}/bootstrap`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BootstrapResponse {
    /// The user's id.
    pub user_id: Uuid,
    /// Whether this call created the user (bootstrap) or their default team (legacy bootstrap).
    pub created: bool,
    /// The user's default team.
    pub team: TeamSummaryResponse,
}

impl BootstrapResponse {
    /// The answer for `user`, whose default team is `team`.
    pub fn new(user: UserId, created: bool, team: Team) -> Self {
        Self { user_id: user.as_uuid(), created, team: team.into() }
    }
}
