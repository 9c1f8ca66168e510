//! Outbox events: their topics and payloads. Each is written in the same transaction as the
//! change it reports (so an event exists exactly when its change committed), and delivered to
//! webhook endpoints from there. README.md documents every payload; the `data` member of a
//! webhook body is the payload built here.

use serde_json::{Value, json};

use super::{Identity, Role, Team, TeamId, User, UserId};

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

/// Every topic Tessera writes, for the event-type filter of webhook endpoints.
pub const ALL_TOPICS: &[&str] = &[
    USER_CREATED,
    USER_DISABLED,
    USER_ENABLED,
    USER_DELETED,
    IDENTITY_LINKED,
    IDENTITY_UNLINKED,
    TEAM_MEMBER_ADDED,
    TEAM_MEMBER_ROLE_CHANGED,
    TEAM_MEMBER_REMOVED,
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
