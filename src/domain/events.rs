//! Outbox events: their topics and payloads. Each is written in the same transaction as the
//! change it reports (so an event exists exactly when its change committed), and delivered to
//! webhook endpoints from there. README.md documents every payload; the `data` member of a
//! webhook body is the payload built here.

use serde_json::{Value, json};

use super::{AuthProfile, Identity, Role, Team, TeamId, User, UserId};

/// A user was created with their first identity and default team (the provisioning event).
pub const USER_CREATED: &str = "user.created";
/// A user was disabled.
pub const USER_DISABLED: &str = "user.disabled";
/// A disabled user was enabled again.
pub const USER_ENABLED: &str = "user.enabled";
/// A user was deleted with their identities, sessions, memberships and personal connected
/// accounts (`DELETE /admin/users/{id}`).
pub const USER_DELETED: &str = "user.deleted";
/// An identity was linked to an existing user.
pub const IDENTITY_LINKED: &str = "identity.linked";
/// An identity was unlinked from its user.
pub const IDENTITY_UNLINKED: &str = "identity.unlinked";
/// A user joined a team.
pub const TEAM_MEMBER_ADDED: &str = "team.member.added";
/// A member's role changed.
pub const TEAM_MEMBER_ROLE_CHANGED: &str = "team.member.role_changed";
/// A user left a team.
pub const TEAM_MEMBER_REMOVED: &str = "team.member.removed";

/// A user's name, email or `email_verified` changed (`PATCH /admin/users/{id}`).
pub const USER_UPDATED: &str = "user.updated";
/// A connected account was connected or reconnected (a connect flow completed, or an `env` or
/// `browser_session` credential was written), which makes it `active`.
pub const AUTH_PROFILE_CONNECTED: &str = "auth_profile.connected";
/// An active connected account became `needs_reauth`.
pub const AUTH_PROFILE_NEEDS_REAUTH: &str = "auth_profile.needs_reauth";
/// A connected account was revoked (disconnected).
pub const AUTH_PROFILE_REVOKED: &str = "auth_profile.revoked";
/// Browser sessions of a user ended before their time.
pub const SESSION_REVOKED: &str = "session.revoked";

/// Every topic Tessera writes, for the event-type filter of webhook endpoints.
pub const ALL_TOPICS: &[&str] = &[
    USER_CREATED,
    USER_UPDATED,
    USER_DISABLED,
    USER_ENABLED,
    USER_DELETED,
    IDENTITY_LINKED,
    IDENTITY_UNLINKED,
    TEAM_MEMBER_ADDED,
    TEAM_MEMBER_ROLE_CHANGED,
    TEAM_MEMBER_REMOVED,
    AUTH_PROFILE_CONNECTED,
    AUTH_PROFILE_NEEDS_REAUTH,
    AUTH_PROFILE_REVOKED,
    SESSION_REVOKED,
];

/// The topic named `name`, if Tessera writes it.
pub fn topic(name: &str) -> Option<&'static str> {
    ALL_TOPICS.iter().copied().find(|t| *t == name)
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "email": user.email,
        "email_verified": user.email_verified,
        "name": user.name,
        "disabled": user.disabled,
    })
}

fn identity_json(identity: &Identity) -> Value {
    json!({
        "id": identity.id,
        "issuer": identity.issuer,
        "subject": identity.subject,
        "provider": identity.provider,
    })
}

/// `user.created`: `{user, identity, team}`.
pub fn user_created(user: &User, identity: &Identity, team: &Team) -> Value {
    json!({
        "user": user_json(user),
        "identity": identity_json(identity),
        "team": {"id": team.id, "slug": team.slug, "name": team.name},
    })
}

/// `user.disabled` / `user.enabled`: `{user}` as it is after the change.
pub fn user_changed(user: &User) -> Value {
    json!({ "user": user_json(user) })
}

/// `user.deleted`: `{user, identities, left_teams, deleted_teams}`: the user as they were, the
/// identities that were unlinked with them, the ids of the teams they were removed from, and of
/// the teams deleted with them (those they were the only member of).
pub fn user_deleted(user: &User, identities: &[Identity], left_teams: &[TeamId], deleted_teams: &[TeamId]) -> Value {
    json!({
        "user": user_json(user),
        "identities": identities.iter().map(identity_json).collect::<Vec<_>>(),
        "left_teams": left_teams,
        "deleted_teams": deleted_teams,
    })
}

/// `identity.linked` / `identity.unlinked`: `{user_id, identity}`.
pub fn identity_changed(identity: &Identity) -> Value {
    json!({ "user_id": identity.user_id, "identity": identity_json(identity) })
}

/// `team.member.added` / `role_changed` / `removed`: `{team_id, user_id, role}` (`role` is the
/// new role; the former one for a removal), plus `previous_role` for a role change.
pub fn member_changed(team: TeamId, user: UserId, role: Role, previous_role: Option<Role>) -> Value {
    let mut payload = json!({ "team_id": team, "user_id": user, "role": role.as_str() });
    if let Some(previous) = previous_role {
        payload["previous_role"] = previous.as_str().into();
    }
    payload
}

/// `team.member.removed`: `{team_id, user_id, role, team_deleted}`, the former role, and whether
/// the team went too (with its only member, or deleted by an operator).
pub fn member_removed(team: TeamId, user: UserId, role: Role, team_deleted: bool) -> Value {
    json!({ "team_id": team, "user_id": user, "role": role.as_str(), "team_deleted": team_deleted })
}

/// `user.updated`: `{user, changed}`: the user as after the change and the names of the fields
/// that changed (`name`, `email`, `email_verified`).
pub fn user_updated(user: &User, changed: &[&str]) -> Value {
    json!({ "user": user_json(user), "changed": changed })
}

/// Why a connected account needs to be authorised again (`auth_profile.needs_reauth`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReauthReason {
    /// The provider refused to refresh its token.
    RefreshRefused,
    /// A credential test found the credential invalid.
    TestFailed,
    /// Its requested scopes were widened beyond what was granted.
    ScopesWidened,
    /// Its access token expired and it holds no refresh token.
    ExpiredWithoutRefresh,
}

impl ReauthReason {
    /// The serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReauthReason::RefreshRefused => "refresh_refused",
            ReauthReason::TestFailed => "test_failed",
            ReauthReason::ScopesWidened => "scopes_widened",
            ReauthReason::ExpiredWithoutRefresh => "expired_without_refresh",
        }
    }
}

/// `auth_profile.*`: `{profile}` as after the change: ids, team, connector, slug, kind, provider,
/// status and owner, never a token or credential value; `connected` adds `previous_status`,
/// `needs_reauth` adds `reason`.
pub fn auth_profile_changed(profile: &AuthProfile) -> Value {
    json!({
        "profile": {
            "id": profile.id,
            "team_id": profile.team_id,
            "slug": profile.slug.as_str(),
            "connector_key": profile.connector_key,
            "kind": profile.profile_kind.as_str(),
            "provider": profile.provider,
            "status": profile.status.as_str(),
            "created_by": profile.created_by,
            "display_name": profile.display_name,
        }
    })
}

/// Why sessions ended (`session.revoked`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The user signed out (`POST /auth/logout`, the OpenID Provider's logout).
    SignedOut,
    /// A new sign-in in the same browser replaced the session.
    Replaced,
    /// The user signed out everywhere else (the account page).
    SignedOutElsewhere,
    /// The user was disabled (or enabled again, ending sessions that a sign-in racing the
    /// disable left).
    UserDisabled,
    /// The identity the session signed in with was unlinked.
    IdentityUnlinked,
}

impl SessionEnd {
    /// The serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionEnd::SignedOut => "signed_out",
            SessionEnd::Replaced => "replaced",
            SessionEnd::SignedOutElsewhere => "signed_out_elsewhere",
            SessionEnd::UserDisabled => "user_disabled",
            SessionEnd::IdentityUnlinked => "identity_unlinked",
        }
    }
}

/// `session.revoked`: `{user_id, reason, sessions}` (how many ended; sessions have no public id).
pub fn session_revoked(user: UserId, reason: SessionEnd, sessions: u64) -> Value {
    json!({ "user_id": user, "reason": reason.as_str(), "sessions": sessions })
}
