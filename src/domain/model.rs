//! The records Tessera keeps about people, their external identities and their teams.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{DomainName, IdentityId, Issuer, Slug, Subject, TeamId, UserId};

/// A person, known to every other service by [`UserId`] only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Stable internal id.
    pub id: UserId,
    /// The email address last known for the person, if any upstream provider told us one.
    pub email: Option<String>,
    /// Whether an upstream provider vouched for the email.
    pub email_verified: bool,
    /// Display name, if known.
    pub name: Option<String>,
    /// A disabled user is refused everywhere.
    pub disabled: bool,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user was last changed.
    pub updated_at: DateTime<Utc>,
}

/// Whether an identity of `issuer` may be unlinked when the user's other identities are of
/// `others`: not their last one, nor their last one of the `sign_in` issuers (those a configured
/// provider signs in with; the others, of a provider since removed, could not sign them in again).
pub fn may_unlink(issuer: &str, others: &[&str], sign_in: &[Issuer]) -> bool {
    let signs_in = |issuer: &str| sign_in.iter().any(|i| i.as_str() == issuer);
    !others.is_empty() && (!signs_in(issuer) || others.iter().any(|other| signs_in(other)))
}

/// One external identity, linked to exactly one user, for ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Id of the link.
    pub id: IdentityId,
    /// The user it belongs to.
    pub user_id: UserId,
    /// Normalised issuer.
    pub issuer: Issuer,
    /// Subject at the issuer.
    pub subject: Subject,
    /// The provider (or issuer configuration) name it came through.
    pub provider: String,
    /// The email seen when the link was made.
    pub email: Option<String>,
    /// Whether that email was verified upstream at link time.
    pub email_verified: bool,
    /// When the link was made.
    pub created_at: DateTime<Utc>,
    /// When the identity was last used to sign in or bootstrap.
    pub last_seen_at: DateTime<Utc>,
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Team {
    /// Team id.
    pub id: TeamId,
    /// Unique, URL-safe handle.
    pub slug: Slug,
    /// Display name.
    pub name: String,
    /// When the team was created.
    pub created_at: DateTime<Utc>,
}

/// A member's role in a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Full control, including membership.
    Owner,
    /// Manages the team's resources.
    Admin,
    /// Uses the team's resources.
    Member,
}

impl Role {
    /// The stored and serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Whether the role manages the team's shared things (its connected accounts, their
    /// defaults): an owner or an admin.
    pub fn manages_team(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A team as seen from one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamMembership {
    /// The team.
    #[serde(flatten)]
    pub team: Team,
    /// The member's role.
    pub role: Role,
    /// Whether this is the member's default team.
    pub is_default: bool,
}

/// A team as carried by a [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamRole {
    /// Team id.
    pub id: TeamId,
    /// Team slug.
    pub slug: Slug,
    /// The member's role.
    pub role: Role,
}

/// Who a verified external identity is: the identity link, its user and the user's teams
/// (default team first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity link.
    pub identity_id: IdentityId,
    /// When the identity was last seen.
    pub last_seen_at: DateTime<Utc>,
    /// The user.
    pub user: User,
    /// The user's teams.
    pub teams: Vec<TeamRole>,
}

/// A team's claim on an email domain, for home-realm discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainClaim {
    /// The lower-cased domain.
    pub domain: DomainName,
    /// The team that claims it.
    pub team_id: TeamId,
    /// The issuer users of the domain sign in with.
    pub issuer: Issuer,
    /// Whether the claim was verified (only verified claims route sign-ins).
    pub verified: bool,
    /// When the claim was made.
    pub created_at: DateTime<Utc>,
    /// When the claim last changed.
    pub updated_at: DateTime<Utc>,
}

/// A user with everything linked to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserProfile {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// Their external identities, oldest first.
    pub identities: Vec<Identity>,
    /// The identity the user chose as primary, else their oldest one.
    pub primary_identity_id: Option<IdentityId>,
    /// Their teams, default team first.
    pub teams: Vec<TeamMembership>,
}
