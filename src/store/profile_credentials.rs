//! The credentials of `env` and `browser_session` profiles, in `profile_credentials`: one key-ring
//! ciphertext of the JSON payload per profile, and what may be shown about it as JSON.
//!
//! A write replaces the credential and activates the profile in one transaction; a write from a
//! connect form consumes its link in the same transaction (`DELETE … RETURNING`), so that of
//! concurrent posts of one form exactly one writes, and a failed write leaves the link usable. The
//! writer's right is read again under the team's lock, as for activating an OAuth profile.

use chrono::{DateTime, Utc};

use super::StoreError;
use super::db::{Tx, query};
use super::rows::{self, RowExt, profile_columns};
use super::sql::{SqlStore, insert_profile_event, may_connect_in, profile_status_in};
use crate::domain::events;
use crate::domain::{AuthProfile, CredentialMeta, ProfileId, ProfileStatus, UserId};

/// A credential to store.
#[derive(Debug, Clone)]
pub struct CredentialWrite<'a> {
    /// The profile.
    pub profile: ProfileId,
    /// The member who writes it: still a member of the profile's team when it is written, and
    /// its creator or a team owner or admin (a removal or demotion meanwhile refuses it).
    pub by: UserId,
    /// The key-ring ciphertext of the JSON payload, bound to `profile_credentials`, the profile's
    /// id and the column `credential`.
    pub ciphertext: &'a [u8],
    /// What may be shown about it.
    pub meta: &'a CredentialMeta,
    /// SHA-256 of the connect link to consume with the write, for a write from a connect form.
    pub connect_token: Option<&'a [u8; 32]>,
    /// Now.
    pub now: DateTime<Utc>,
    /// The id of the request that writes it, for the audit row.
    pub request_id: Option<&'a str>,
}

/// What [`Store::put_profile_credential`](super::Store::put_profile_credential) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialOutcome {
    /// Stored: the profile as it is now (`active`, its version bumped).
    Stored(Box<AuthProfile>),
    /// The profile is revoked or gone; nothing was written.
    ProfileGone,
    /// The connect link is used, expired, or not this profile's; nothing was written.
    LinkUsed,
    /// `by` is no longer a member of the profile's team, or no longer one who may set it;
    /// nothing was written.
    NotAllowed,
}

/// A profile's status and stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// The profile's status.
    pub status: ProfileStatus,
    /// The ciphertext and what may be shown about it, once a credential is set.
    pub credential: Option<(Vec<u8>, CredentialMeta)>,
}

/// Decodes the JSON of a `meta` column.
pub(super) fn decode_meta(text: &str) -> Result<CredentialMeta, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("profile_credentials.meta".into()))
}

/// Stores a profile's credential in `tx` and activates the profile (from `before`, its status):
/// the profile as it is then, with its `auth_profile.connected` event and audit row (by `by`)
/// written; `None` (nothing written) when it is revoked.
#[allow(clippy::too_many_arguments)]
pub(super) async fn activate_with(
    tx: &mut Tx,
    profile: ProfileId,
    by: UserId,
    ciphertext: &[u8],
    meta: &CredentialMeta,
    before: &str,
    now: DateTime<Utc>,
    request_id: Option<&str>,
) -> Result<Option<AuthProfile>, StoreError> {
    let meta = serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let activated = query(
        "UPDATE auth_profiles SET status = 'active', pending_expires_at = NULL, version = version + 1,
                updated_at = $2
         WHERE id = $1 AND status <> 'revoked'",
    )
    .bind(profile.as_uuid())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if activated != 1 {
        return Ok(None);
    }
    query(
        "INSERT INTO profile_credentials (profile_id, credential, meta, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (profile_id) DO UPDATE
         SET credential = excluded.credential, meta = excluded.meta, updated_at = excluded.updated_at",
    )
    .bind(profile.as_uuid())
    .bind(ciphertext)
    .bind(meta)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let row = query(concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE p.id = $1"))
        .bind(profile.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
    let stored = rows::profile(&row)?;
    let extra = [("previous_status", serde_json::Value::from(before))];
    insert_profile_event(tx, profile, events::AUTH_PROFILE_CONNECTED, &extra, now).await?;
    let connected = super::audit::AUTH_PROFILE_CONNECTED;
    super::sql::record_profile_change(tx, connected, by, profile, Some(before), request_id).await?;
    Ok(Some(stored))
}

impl SqlStore {
    pub(super) async fn put_profile_credential_sql(
        &self,
        write: &CredentialWrite<'_>,
    ) -> Result<CredentialOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // The team's row (shared) first, as activating an OAuth profile takes it; then the
        // profile's row lock, then the link: the order in which minting a link and revoking a
        // profile take them, so that none of these can deadlock another.
        let allowed = may_connect_in(&mut tx, write.profile, write.by).await?;
        let before = profile_status_in(&mut tx, write.profile).await?;
        if let Some(hash) = write.connect_token {
            let taken = query(
                "DELETE FROM connect_tokens WHERE token_hash = $1 AND profile_id = $2 AND expires_at > $3
                 RETURNING profile_id",
            )
            .bind(&hash[..])
            .bind(write.profile.as_uuid())
            .bind(write.now)
            .fetch_optional(&mut tx)
            .await?;
            if taken.is_none() {
                tx.rollback().await?;
                return Ok(CredentialOutcome::LinkUsed);
            }
        }
        let Some(before) = before else {
            tx.rollback().await?;
            return Ok(CredentialOutcome::ProfileGone);
        };
        if !allowed {
            tx.rollback().await?;
            return Ok(CredentialOutcome::NotAllowed);
        }
        let Some(profile) = activate_with(
            &mut tx,
            write.profile,
            write.by,
            write.ciphertext,
            write.meta,
            &before,
            write.now,
            write.request_id,
        )
        .await?
        else {
            tx.rollback().await?;
            return Ok(CredentialOutcome::ProfileGone);
        };
        tx.commit().await?;
        Ok(CredentialOutcome::Stored(Box::new(profile)))
    }

    pub(super) async fn profile_credential_sql(&self, id: ProfileId) -> Result<Option<StoredCredential>, StoreError> {
        let row = query(
            "SELECT p.status AS status, c.credential AS credential, c.meta AS meta
             FROM auth_profiles p LEFT JOIN profile_credentials c ON c.profile_id = p.id
             WHERE p.id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(self.db.reader())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status = row.text("status")?;
        let status =
            ProfileStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
        let credential = match (row.opt_bytes("credential")?, row.opt_text("meta")?) {
            (Some(ciphertext), Some(meta)) => Some((ciphertext, decode_meta(&meta)?)),
            _ => None,
        };
        Ok(Some(StoredCredential { status, credential }))
    }
}
