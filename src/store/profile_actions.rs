//! Auth-profile actions beyond create/connect/refresh: updates (compare-and-swap on `version`),
//! the team's default profile per connector (`connector_defaults`, one row per team and
//! connector, switched by one upsert), resolution by connector, and the marks a credential test
//! leaves. [`SqlStore`](super::SqlStore) delegates these [`Store`](super::Store) methods here.

use chrono::{DateTime, Utc};

use super::ProfileSecrets;
use super::StoreError;
use super::db::{Db, Tx, query};
use super::rows::{self, RowExt, profile_columns};
use super::sql::{insert_profile_event, profile_status_in, role_allowed_in};
use crate::domain::events::{self, ReauthReason};
use crate::domain::{AuthProfile, ProfileId, ProfileKind, ProfileRight, Slug, TeamId, UserId};

/// What [`Store::update_profile`](super::Store::update_profile) writes: the new display name, slug
/// and requested scopes, each only when set — a field left `None` keeps what the row holds when
/// the update runs, so that two updates of different fields both stay applied.
#[derive(Debug, Clone)]
pub struct ProfileChange<'a> {
    /// Display name.
    pub display_name: Option<&'a str>,
    /// Slug (unique among the team's live profiles).
    pub slug: Option<&'a Slug>,
    /// Requested scopes.
    pub scopes: Option<&'a [String]>,
    /// Who changes it: a member who must still have [`ProfileRight::Connect`] on it when the
    /// write runs ([`ProfileUpdate::Refused`] otherwise).
    pub by: UserId,
    /// Whether the scopes widen what was granted: an active profile becomes `needs_reauth`, and
    /// `version` is bumped so that connect flows started before (asking for the old scopes) cannot
    /// complete.
    pub widened: bool,
    /// Time of the change.
    pub now: DateTime<Utc>,
}

/// What [`Store::update_profile`](super::Store::update_profile) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileUpdate {
    /// The profile was changed.
    Updated,
    /// The profile's version is no longer the expected one (a connection completed, or another
    /// update won), or it was revoked; nothing was written.
    Changed,
    /// Another live profile of the team has the slug; nothing was written.
    SlugTaken,
    /// The member changing it is no longer allowed to (removed from the team, or demoted);
    /// nothing was written.
    Refused,
}

/// What [`Store::revoke_profile`](super::Store::revoke_profile) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The profile is revoked; the credentials it held, for revocation at the provider.
    Revoked(ProfileSecrets),
    /// No live profile has this id (already revoked, or never was).
    NotFound,
    /// The member revoking it is no longer allowed to; nothing was written.
    Refused,
}

/// What [`Store::set_default_profile`](super::Store::set_default_profile) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultOutcome {
    /// The profile is now its connector's default in its team (replacing any other).
    Set,
    /// No live profile of the team has this id.
    NotFound,
    /// The profile is a member's personal account, which cannot be the team's default.
    Personal,
    /// The connector's default is another member's profile, which only an owner or admin
    /// replaces.
    OthersDefault,
    /// The member is no longer allowed to change the profile's default; nothing was written.
    Refused,
}

/// Whether profile `id` of `team` is live (not revoked, not deleted), read in `tx`.
async fn live_in(tx: &mut Tx, id: ProfileId, team: TeamId) -> Result<bool, StoreError> {
    let live = query("SELECT 1 AS one FROM auth_profiles WHERE id = $1 AND team_id = $2 AND status <> 'revoked'")
        .bind(id.as_uuid())
        .bind(team.as_uuid())
        .fetch_optional(tx)
        .await?;
    Ok(live.is_some())
}

pub(super) async fn update_profile(
    db: &Db,
    id: ProfileId,
    expected_version: i64,
    change: &ProfileChange<'_>,
) -> Result<ProfileUpdate, StoreError> {
    let mut tx = db.begin().await?;
    let allowed = role_allowed_in(&mut tx, id, change.by, ProfileRight::Connect).await?.is_some();
    let before = profile_status_in(&mut tx, id).await?;
    let Some(before) = before.filter(|status| status != "revoked") else {
        // Revoked or deleted meanwhile: for the caller to read again (and find it gone), not a
        // right lost.
        tx.rollback().await?;
        return Ok(ProfileUpdate::Changed);
    };
    if !allowed {
        tx.rollback().await?;
        return Ok(ProfileUpdate::Refused);
    }
    let updated = query(
        "UPDATE auth_profiles SET display_name = COALESCE($3, display_name), slug = COALESCE($4, slug),
                scopes = COALESCE($5, scopes),
                status = CASE WHEN $6 AND status = 'active' THEN 'needs_reauth' ELSE status END,
                version = version + $7, updated_at = $8
         WHERE id = $1 AND version = $2 AND status <> 'revoked'",
    )
    .bind(id.as_uuid())
    .bind(expected_version)
    .bind(change.display_name)
    .bind(change.slug.map(Slug::as_str))
    .bind(change.scopes.map(|scopes| scopes.join(" ")))
    .bind(change.widened)
    .bind(i64::from(change.widened))
    .bind(change.now)
    .execute(&mut tx)
    .await;
    match updated {
        Ok(1) => {
            if change.widened && before == "active" {
                let extra = [("reason", ReauthReason::ScopesWidened.as_str().into())];
                insert_profile_event(&mut tx, id, events::AUTH_PROFILE_NEEDS_REAUTH, &extra, change.now).await?;
            }
            tx.commit().await?;
            Ok(ProfileUpdate::Updated)
        }
        Ok(_) => Ok(ProfileUpdate::Changed),
        // Only the live-slug index can refuse this row (told by the error's kind: SQLite names no
        // constraint).
        Err(StoreError::Database(sqlx::Error::Database(error))) if error.is_unique_violation() => {
            Ok(ProfileUpdate::SlugTaken)
        }
        Err(error) => Err(error),
    }
}

pub(super) async fn set_default_profile(
    db: &Db,
    team: TeamId,
    id: ProfileId,
    by: UserId,
    now: DateTime<Utc>,
) -> Result<DefaultOutcome, StoreError> {
    let mut tx = db.begin().await?;
    let Some(role) = role_allowed_in(&mut tx, id, by, ProfileRight::Manage).await? else {
        let live = live_in(&mut tx, id, team).await?;
        tx.rollback().await?;
        return Ok(if live { DefaultOutcome::Refused } else { DefaultOutcome::NotFound });
    };
    let member = (!role.manages_team()).then_some(by);
    // The lock serialises this with a revocation of the profile: either the revocation sees the
    // default row (and its trigger deletes it), or this sees the profile revoked.
    let row = query(
        "SELECT profile_kind, connector_key FROM auth_profiles
         WHERE id = $1 AND team_id = $2 AND status <> 'revoked' FOR UPDATE",
    )
    .bind(id.as_uuid())
    .bind(team.as_uuid())
    .fetch_optional(&mut tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(DefaultOutcome::NotFound);
    };
    if row.text("profile_kind")? == ProfileKind::OauthAccount.as_str() {
        tx.rollback().await?;
        return Ok(DefaultOutcome::Personal);
    }
    // A member's call replaces only a default of their own (`$5`; NULL: anyone's).
    let set = query(
        "INSERT INTO connector_defaults (team_id, connector_key, profile_id, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (team_id, connector_key)
         DO UPDATE SET profile_id = excluded.profile_id, updated_at = excluded.updated_at
         WHERE $5 IS NULL OR connector_defaults.profile_id IN (SELECT id FROM auth_profiles WHERE created_by = $5)",
    )
    .bind(team.as_uuid())
    .bind(row.text("connector_key")?)
    .bind(id.as_uuid())
    .bind(now)
    .bind(member.map(|user| user.as_uuid()))
    .execute(&mut tx)
    .await?;
    if set == 0 {
        tx.rollback().await?;
        return Ok(DefaultOutcome::OthersDefault);
    }
    tx.commit().await?;
    Ok(DefaultOutcome::Set)
}

pub(super) async fn clear_default_profile(
    db: &Db,
    team: TeamId,
    id: ProfileId,
    by: UserId,
) -> Result<Option<bool>, StoreError> {
    let mut tx = db.begin().await?;
    if role_allowed_in(&mut tx, id, by, ProfileRight::Manage).await?.is_none() {
        // Revoked or deleted meanwhile: no default to clear, not a right lost.
        let live = live_in(&mut tx, id, team).await?;
        tx.rollback().await?;
        return Ok((!live).then_some(false));
    }
    let deleted = query("DELETE FROM connector_defaults WHERE team_id = $1 AND profile_id = $2")
        .bind(team.as_uuid())
        .bind(id.as_uuid())
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    Ok(Some(deleted == 1))
}

pub(super) async fn default_profile(
    db: &Db,
    team: TeamId,
    connector_key: &str,
) -> Result<Option<AuthProfile>, StoreError> {
    let row = query(concat!(
        "SELECT ",
        profile_columns!(),
        " FROM connector_defaults cd JOIN auth_profiles p ON p.id = cd.profile_id
          WHERE cd.team_id = $1 AND cd.connector_key = $2 AND p.status <> 'revoked'"
    ))
    .bind(team.as_uuid())
    .bind(connector_key)
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(rows::profile).transpose()
}

pub(super) async fn active_personal_profile(
    db: &Db,
    team: TeamId,
    user: UserId,
    connector_key: &str,
) -> Result<Option<AuthProfile>, StoreError> {
    let row = query(concat!(
        "SELECT ",
        profile_columns!(),
        " FROM auth_profiles p
          WHERE p.team_id = $1 AND p.connector_key = $2 AND p.created_by = $3
            AND p.profile_kind = 'oauth_account' AND p.status = 'active'
          ORDER BY p.created_at, p.id LIMIT 1"
    ))
    .bind(team.as_uuid())
    .bind(connector_key)
    .bind(user.as_uuid())
    .fetch_optional(db.reader())
    .await?;
    row.as_ref().map(rows::profile).transpose()
}

pub(super) async fn set_access_token_expiry(
    db: &Db,
    id: ProfileId,
    token_version: i64,
    expires_at: Option<DateTime<Utc>>,
) -> Result<bool, StoreError> {
    let updated = query(
        "UPDATE auth_profiles SET access_token_expires_at = $3
         WHERE id = $1 AND token_version = $2 AND status = 'active'",
    )
    .bind(id.as_uuid())
    .bind(token_version)
    .bind(expires_at)
    .execute(db.writer())
    .await?;
    Ok(updated == 1)
}

pub(super) async fn mark_needs_reauth(
    db: &Db,
    id: ProfileId,
    token_version: i64,
    reason: ReauthReason,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    // Not while a refresh is under way (a lease does not move the version): the token it brings
    // is the answer, and a refused refresh marks the profile itself.
    let updated = query(
        "UPDATE auth_profiles SET status = 'needs_reauth', token_version = token_version + 1, updated_at = $3
         WHERE id = $1 AND token_version = $2 AND status = 'active'
           AND (refresh_lease_until IS NULL OR refresh_lease_until < $3)",
    )
    .bind(id.as_uuid())
    .bind(token_version)
    .bind(now)
    .execute(&mut tx)
    .await?;
    if updated != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    let extra = [("reason", reason.as_str().into())];
    insert_profile_event(&mut tx, id, events::AUTH_PROFILE_NEEDS_REAUTH, &extra, now).await?;
    tx.commit().await?;
    Ok(true)
}
