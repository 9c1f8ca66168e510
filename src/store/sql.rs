//! [`SqlStore`]: the one implementation of [`Store`], written once for SQLite and PostgreSQL over
//! [`Db`](super::db::Db), which holds every difference between the two.
//!
//! Races are settled by the database: `ON CONFLICT DO NOTHING` on the identity key (a concurrent
//! insert waits for the first to commit, then sees the conflict), `DELETE … RETURNING` for
//! single-use values, compare-and-swap `UPDATE … WHERE version = $n`, and, where a per-user or
//! per-team check-then-write is needed, a row lock (`FOR UPDATE` on PostgreSQL; SQLite write
//! transactions are serialised whole).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Consent;
use super::cache_sync::{CacheChange, LogPage, log_changes};
use super::db::{Db, PoolRef, Query, Row, Tx, exclusive, json_set_sql, padded, query, try_exclusive, uuid_text_sql};
use super::grants::add_once;
use super::last_seen::{self, Touched};
use super::profile_actions::{self, DefaultOutcome, ProfileChange, ProfileUpdate};
use super::profile_credentials::activate_with;
use super::rows::{
    self, RowExt, client_columns, domain_columns, identity_columns, profile_columns, signing_key_columns, team_columns,
    user_columns,
};
use super::{
    ActingRefusal, Activated, Activation, Attempt, ClaimOutcome, ClientInsert, ClientUpdate, ConfigClientSync,
    ConnectToken, CreateOutcome, DataReport, DefaultTeam, EncryptedTokens, FanOut, IdentityMatch, IdentitySession,
    LinkOutcome, LoginState, MemberOutcome, MemberWrite, MigrationStatus, NewAccount, NewEvent, NewLink, NewSession,
    NewTeam, PendingKey, ProfileSecrets, ReadFrom, RefreshLease, Refreshed, RemoveOutcome, ReplicaLag, Retirement,
    Revocation, SecretKind, SessionOfIdentity, SessionRecord, SessionStart, SigningKeyRecord, Store, StoreError,
    StoredSecret, UnlinkOutcome, UserSession, Waiting, WebhookChange, WebhookKeys, decode_kind, decode_role,
};
use super::{
    CodeRecord, GrantAt, GrantRecord, HeldFor, HeldRequest, NewCode, NewGrant, RedeemOutcome, RotateOutcome, UserApp,
};
use super::{
    CreateTeamOutcome, DeleteTeamOutcome, DeleteUserOutcome, ExportedIdentity, TeamMember, TeamQuery, UserChange,
    UserQuery, UserUpdate, UserUpdateOutcome,
};
use super::{CredentialOutcome, CredentialWrite, FirstWrite, ProfileInsert, StoredCredential};
use super::{PRINCIPALS_PER_READ, PoolStats, PrincipalRead, ReplayCursor, ReplayPage, WebhookInsert, WebhookQueue};
use crate::config::{Backend, DatabaseConfig};
use crate::domain::events::{self, ReauthReason, SessionEnd};
use crate::domain::{
    AuthProfile, Client, ClientId, ClientKind, DeliveryJob, DeliveryState, DomainClaim, DomainName, Email, EventId,
    Identity, IdentityId, Issuer, Principal, ProfileId, ProfileKind, ProfileRef, ProfileRight, Role, Subject, Team,
    TeamId, TeamRef, User, UserId, UserProfile, WebhookDelivery, WebhookEndpoint, WebhookId,
};

/// Tessera's storage on SQLite or PostgreSQL (with an optional read replica).
#[derive(Debug)]
pub struct SqlStore {
    pub(super) db: Db,
    /// The bound of [`Store::ready`] (`database.ready_timeout_ms`).
    ready_timeout: std::time::Duration,
    /// [`Store::ready`]'s pings, held while a probe waits for one: probes that arrive together
    /// share one ping rather than queue one each on the background connection.
    ready_pings: tokio::sync::Mutex<ReadyPings>,
}

/// The pings of [`Store::ready`].
#[derive(Debug, Default)]
struct ReadyPings {
    /// When the last successful one ended.
    succeeded_at: Option<std::time::Instant>,
    /// The one under way, in a task of its own: a probe that stops waiting at its bound leaves
    /// it to finish (the next probe waits for it), where dropping the statement half-way would
    /// cost the background loops their connection (see `PgConn`). With when it ended: one that
    /// ended before a probe arrived does not answer it.
    running: Option<tokio::task::JoinHandle<(Result<(), StoreError>, std::time::Instant)>>,
}

impl SqlStore {
    /// Connects to the database the configuration names (an SQLite file is created if missing).
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::connect(config).await?,
            ready_timeout: config.ready_timeout,
            ready_pings: tokio::sync::Mutex::new(ReadyPings::default()),
        })
    }
}

impl SqlStore {
    /// [`Store::insert_profile`], once (a deadlock or serialization failure is the caller's to
    /// retry).
    async fn insert_profile_once(
        &self,
        profile: &AuthProfile,
        first: FirstWrite<'_>,
        max_live: u32,
    ) -> Result<ProfileInsert, StoreError> {
        let mut tx = self.db.begin().await?;
        // The creator's row first, then the team's, the order in which a user's deletion locks
        // them (see [`lock_user_key`]).
        if !lock_user_key(&mut tx, profile.created_by).await? {
            tx.rollback().await?;
            return Err(StoreError::Gone { what: "the user" });
        }
        // The team's row locked, as a removal takes it for update: the creator is a member until
        // this commits, or their removal (which hands over or revokes their profiles) came first.
        // Not shared: concurrent creations in the team count its profiles in turn.
        query("SELECT 1 FROM teams WHERE id = $1 FOR NO KEY UPDATE")
            .bind(profile.team_id.as_uuid())
            .execute(&mut tx)
            .await?;
        // An enabled member: one disabled a moment ago, whose session another instance has not
        // forgotten yet, creates nothing.
        if enabled_member_role(&mut tx, profile.team_id, profile.created_by).await?.is_none() {
            tx.rollback().await?;
            return Err(StoreError::Gone { what: "the membership" });
        }
        // Pending ones past their expiry first, as the sweep would: left in place, they would not
        // count, yet a new link or credential brings them back to life.
        query("DELETE FROM auth_profiles WHERE team_id = $1 AND status = 'pending_auth' AND pending_expires_at <= $2")
            .bind(profile.team_id.as_uuid())
            .bind(profile.created_at)
            .execute(&mut tx)
            .await?;
        // Then every live one (`auth_profiles_team_slug_key` holds them).
        let live = query("SELECT count(*) AS n FROM auth_profiles WHERE team_id = $1 AND status <> 'revoked'")
            .bind(profile.team_id.as_uuid())
            .fetch_one(&mut tx)
            .await?
            .int("n")?;
        if live >= i64::from(max_live) {
            tx.rollback().await?;
            return Ok(ProfileInsert::Full);
        }
        let inserted = query(
            "INSERT INTO auth_profiles
               (id, team_id, slug, connector_key, profile_kind, provider, status, created_by, display_name, scopes,
                pending_expires_at, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $12)
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(profile.id.as_uuid())
        .bind(profile.team_id.as_uuid())
        .bind(profile.slug.as_str())
        .bind(&profile.connector_key)
        .bind(profile.profile_kind.as_str())
        .bind(&profile.provider)
        .bind(profile.status.as_str())
        .bind(profile.created_by.as_uuid())
        .bind(&profile.display_name)
        .bind(profile.scopes.join(" "))
        .bind(profile.pending_expires_at)
        .bind(profile.created_at)
        .fetch_optional(&mut tx)
        .await
        .map_err(|e| e.or_gone("the team or the user"))?;
        if inserted.is_none() {
            tx.rollback().await?;
            return Ok(ProfileInsert::Taken);
        }
        let created = match first {
            FirstWrite::Nothing => profile.clone(),
            FirstWrite::Credential(ciphertext, meta, request_id) => {
                let (before, at) = (profile.status.as_str(), profile.created_at);
                // Inserted just above in this transaction: it cannot be revoked.
                activate_with(&mut tx, profile.id, profile.created_by, ciphertext, meta, before, at, request_id)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("a profile revoked as it was created".into()))?
            }
            FirstWrite::Link(token) => {
                keep_pending(&mut tx, profile.id, token.expires_at).await?;
                insert_connect_token(&mut tx, token).await?;
                profile.clone().outliving(token.expires_at)
            }
        };
        tx.commit().await?;
        Ok(ProfileInsert::Inserted(Box::new(created)))
    }

    /// Deletes the grants of `client`, with their codes and refresh tokens (one per rotation: a
    /// month of an agent's refreshes is thousands, and a popular app has a grant per user), a
    /// slice of grants at a time, each slice's delete cascading to its own codes and tokens and
    /// committing on its own, before the client itself is deleted or replaced: its deletion's
    /// cascade then finds only what was written meanwhile, rather than hold the writer (SQLite)
    /// or run past the statement timeout (PostgreSQL) over millions of rows. Instances clearing
    /// one client at once each take the grants no other holds (`SKIP LOCKED`), until none is
    /// left to take. The client's codes and refresh tokens stop working as the slices reach them.
    /// Its consents, held authorization requests and used assertions go likewise, in slices, after
    /// the grants.
    async fn clear_client_grants(&self, client: &str) -> Result<(), StoreError> {
        // Like the cascade it replaces, a slice locks grants, then their codes and tokens: the
        // other order from a code's redemption, which PostgreSQL may end as a deadlock.
        let delete = query(
            "DELETE FROM oauth_grants WHERE id IN
               (SELECT id FROM oauth_grants WHERE client_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(client)
        .bind(GRANTS_PER_DELETE);
        while retrying_conflicts(|| delete.execute(self.db.writer())).await? > 0 {}
        // Its consents likewise (one a user, for an app most users approved): a consent given
        // meanwhile, or one another instance's batch held, goes with the client's own deletion.
        let forget = query(
            "DELETE FROM oauth_consents WHERE client_id = $1 AND user_id IN
               (SELECT user_id FROM oauth_consents WHERE client_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        );
        self.db.delete_in_batches(forget.bind(client)).await?;
        // Its held authorization requests (anyone may hold one for a public client, up to its
        // expiry) and used assertions (one per token request of a `private_key_jwt` client)
        // likewise.
        let requests = query(
            "DELETE FROM oauth_requests WHERE id_hash IN
               (SELECT id_hash FROM oauth_requests WHERE client_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        );
        self.db.delete_in_batches(requests.bind(client)).await?;
        let assertions = query(
            "DELETE FROM client_assertions WHERE client_id = $1 AND jti IN
               (SELECT jti FROM client_assertions WHERE client_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        );
        self.db.delete_in_batches(assertions.bind(client)).await?;
        Ok(())
    }

    /// [`Store::sync_config_clients`], once.
    async fn sync_config_clients_once(&self, clients: &[Client]) -> Result<ConfigClientSync, StoreError> {
        // The grants of the configuration clients that go (dropped from the file, or made
        // another kind) go first, in slices (see `clear_client_grants`), read without a lock —
        // unless the file's ids clash with the admin API's clients, which stops the start below
        // with nothing changed.
        let stored = query("SELECT id, kind, from_config FROM clients")
            .fetch_all(self.db.writer())
            .await?
            .iter()
            .map(|row| Ok((row.text("id")?, row.text("kind")?, row.flag("from_config")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let clash =
            clients.iter().any(|c| stored.iter().any(|(id, _, from_config)| id == c.id.as_str() && !from_config));
        if !clash {
            let going = stored.iter().filter(|(id, kind, from_config)| {
                *from_config && !clients.iter().any(|c| c.id.as_str() == id && kind_text(c) == kind)
            });
            for (id, _, _) in going {
                self.clear_client_grants(id.as_str()).await?;
            }
        }
        let mut tx = self.db.begin().await?;
        // Locks the configuration clients, so that instances starting together take turns (not
        // against the key: a running instance's new grant for one of them does not wait).
        let stored =
            query(concat!("SELECT ", client_columns!(), " FROM clients c WHERE c.from_config FOR NO KEY UPDATE"))
                .fetch_all(&mut tx)
                .await?
                .iter()
                .map(rows::client)
                .collect::<Result<Vec<_>, _>>()?;
        let mut wanted: Vec<&Client> = clients.iter().collect();
        wanted.sort_by(|a, b| a.id.cmp(&b.id));
        let mut sync = ConfigClientSync::default();
        let mut forget = Vec::new();
        for client in wanted {
            match stored.iter().find(|s| s.id == client.id) {
                Some(old) if same_registration(old, client) => {}
                // A confidential client made public (or the reverse) is another client under the
                // same id, as the admin API has it: the grants, refresh tokens and consents given
                // to the old one end with it (cascades), or a refresh token of a confidential
                // client would now be redeemed without its secret.
                Some(old) if old.kind != client.kind => {
                    query("DELETE FROM clients WHERE id = $1").bind(client.id.as_str()).execute(&mut tx).await?;
                    insert_client_query(client).execute(&mut tx).await?;
                    sync.updated.push(client.id.clone());
                    forget.push(CacheChange::Client(client.id.clone()));
                }
                Some(_) => {
                    update_client_query(client, None).execute(&mut tx).await?;
                    sync.updated.push(client.id.clone());
                    forget.push(CacheChange::Client(client.id.clone()));
                }
                None => {
                    if insert_client_query(client).fetch_optional(&mut tx).await?.is_some() {
                        sync.inserted.push(client.id.clone());
                        continue;
                    }
                    // Taken: by an admin client, or by a configuration client another instance
                    // inserted meanwhile (then it is ours to replace, unless it is this file's
                    // already: that instance wrote, and records, the change).
                    let row = query(concat!("SELECT ", client_columns!(), " FROM clients c WHERE c.id = $1"))
                        .bind(client.id.as_str())
                        .fetch_optional(&mut tx)
                        .await?;
                    let theirs = row.as_ref().map(rows::client).transpose()?;
                    match theirs.map(|theirs| (theirs.from_config, same_registration(&theirs, client))) {
                        Some((true, true)) => {}
                        Some((true, false)) => {
                            update_client_query(client, None).execute(&mut tx).await?;
                            sync.updated.push(client.id.clone());
                            forget.push(CacheChange::Client(client.id.clone()));
                        }
                        _ => sync.conflicts.push(client.id.clone()),
                    }
                }
            }
        }
        for old in stored.iter().filter(|old| !clients.iter().any(|c| c.id == old.id)) {
            let deleted = query("DELETE FROM clients WHERE id = $1 AND from_config")
                .bind(old.id.as_str())
                .execute(&mut tx)
                .await?;
            if deleted > 0 {
                sync.deleted.push(old.id.clone());
            }
            forget.push(CacheChange::Client(old.id.clone()));
        }
        if sync.conflicts.is_empty() {
            log_changes(&mut tx, &forget, crate::domain::now()).await?;
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(sync)
    }

    /// [`Store::update_user`], once (see [`retrying_conflicts`]).
    async fn update_user_once(
        &self,
        user: UserId,
        change: &UserChange,
        now: DateTime<Utc>,
    ) -> Result<UserUpdateOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // The row lock makes "what was it before?" exact, so that one event reports each change.
        let Some(before) = query(concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = $1 FOR UPDATE"))
            .bind(user.as_uuid())
            .fetch_optional(&mut tx)
            .await?
        else {
            tx.rollback().await?;
            return Ok(UserUpdateOutcome::NotFound);
        };
        let before = rows::user(&before)?;
        // Verifying the address the user has: refused, not answered as done, when there is none
        // (it would stay unverified; beside another field, that one would be changed).
        if change.email.is_none() && change.email_verified == Some(true) && before.email.is_none() {
            tx.rollback().await?;
            return Ok(UserUpdateOutcome::NoEmailToVerify);
        }
        let mut changed: Vec<&'static str> = Vec::new();
        if let Some(name) = &change.name
            && before.name.as_deref() != name.as_deref()
        {
            changed.push("name");
        }
        let mut new_address = false;
        if let Some(email) = &change.email
            && before.email.as_deref() != email.as_ref().map(Email::as_str)
        {
            changed.push("email");
            // Another spelling of the same address (its letter case, as `Email::key` compares
            // addresses) is no new address: it stays verified.
            new_address = before.email.as_deref().map(str::to_ascii_lowercase) != email.as_ref().map(Email::key);
        }
        // A new address is unverified unless the change says otherwise; no address, nothing
        // verified.
        let has_email = change.email.as_ref().map_or(before.email.is_some(), Option::is_some);
        let verified = change.email_verified.or(new_address.then_some(false));
        let verified = if has_email { verified } else { Some(false) };
        if let Some(verified) = verified
            && before.email_verified != verified
        {
            changed.push("email_verified");
        }
        let toggled = change.disabled.is_some_and(|disabled| disabled != before.disabled);
        if changed.is_empty() && !toggled {
            // Nothing changes (disabling a disabled user still ends any session left).
            let mut ended = 0;
            if change.disabled == Some(true) {
                ended = end_access(&mut tx, user, now).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            return Ok(UserUpdateOutcome::Updated(UserUpdate { user: before, changed: ended > 0, fields: Vec::new() }));
        }
        query(
            "UPDATE users SET name = $2, email = $3, email_verified = $4, disabled = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(user.as_uuid())
        .bind(change.name.as_ref().map_or(before.name.as_deref(), Option::as_deref))
        .bind(change.email.as_ref().map_or(before.email.as_deref(), |e| e.as_ref().map(Email::as_str)))
        .bind(verified.unwrap_or(before.email_verified))
        .bind(change.disabled.unwrap_or(before.disabled))
        .bind(now)
        .execute(&mut tx)
        .await?;
        let found =
            user_in(&mut tx, user).await?.ok_or(StoreError::Conflict { what: "user vanished while updated" })?;
        if !changed.is_empty() {
            insert_event(&mut tx, &NewEvent::new(events::USER_UPDATED, events::user_updated(&found, &changed)), now)
                .await?;
        }
        if toggled {
            let topic = if found.disabled { events::USER_DISABLED } else { events::USER_ENABLED };
            insert_event(&mut tx, &NewEvent::new(topic, events::user_changed(&found)), now).await?;
        }
        // Disabling ends the user's sessions and grants; so does enabling them again: a sign-in
        // racing the disable waits for it and writes nothing (its session share-locks the user's
        // row and re-reads the flag), but one of an earlier release, during a rolling upgrade, may
        // have written a session after this delete, which must not come back to life with the user.
        if change.disabled == Some(true) || toggled {
            end_access(&mut tx, user, now).await?;
        }
        if !changed.is_empty() || toggled {
            log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        }
        tx.commit().await?;
        if toggled {
            changed.push("disabled");
        }
        Ok(UserUpdateOutcome::Updated(UserUpdate { user: found, changed: true, fields: changed }))
    }

    /// [`Store::unlink_identity`], once (see [`retrying_conflicts`]).
    async fn unlink_identity_once(
        &self,
        user: UserId,
        identity: IdentityId,
        sign_in: &[Issuer],
        now: DateTime<Utc>,
        audit: Option<&super::NewAuditEvent>,
    ) -> Result<UnlinkOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // Serialises unlinks of one user, so that two concurrent ones cannot remove the last two.
        query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE").bind(user.as_uuid()).execute(&mut tx).await?;
        let Some(found) = identity_of(&mut tx, identity, user).await? else {
            tx.rollback().await?;
            return Ok(UnlinkOutcome::NotFound);
        };
        let others = query("SELECT issuer FROM identities WHERE user_id = $1 AND id <> $2")
            .bind(user.as_uuid())
            .bind(identity.as_uuid())
            .fetch_all(&mut tx)
            .await?
            .iter()
            .map(|row| row.text("issuer"))
            .collect::<Result<Vec<_>, _>>()?;
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        if !crate::domain::may_unlink(found.issuer.as_str(), &others, sign_in) {
            tx.rollback().await?;
            return Ok(UnlinkOutcome::LastIdentity);
        }
        // Locked before its sessions go: a sign-in writing a session with it waits (its foreign
        // key check shares this row) and then fails, rather than slipping in between and being
        // left without its identity.
        query("SELECT 1 FROM identities WHERE id = $1 FOR UPDATE").bind(identity.as_uuid()).execute(&mut tx).await?;
        // The sessions signed in with it end with it (before the identity goes: the foreign key
        // would only clear their `identity_id`), so that neither they nor what they would
        // authorise outlive the sign-in method the user took away.
        let ended =
            query("DELETE FROM sessions WHERE identity_id = $1").bind(identity.as_uuid()).execute(&mut tx).await?;
        insert_session_event(&mut tx, user, SessionEnd::IdentityUnlinked, ended, now).await?;
        query("DELETE FROM identities WHERE id = $1").bind(identity.as_uuid()).execute(&mut tx).await?;
        insert_identity_event(
            &mut tx,
            IdentityEvent {
                user,
                identity,
                action: "unlink",
                provider: &found.provider,
                issuer: &found.issuer,
                subject: &found.subject,
                now,
            },
        )
        .await?;
        insert_event(&mut tx, &NewEvent::new(events::IDENTITY_UNLINKED, events::identity_changed(&found)), now).await?;
        if let Some(audit) = audit {
            let mut row = audit.clone();
            if let Some(serde_json::Value::Object(details)) = &mut row.details {
                details.insert("provider".into(), found.provider.clone().into());
            }
            super::audit::insert(&mut tx, std::slice::from_ref(&row)).await?;
        }
        let forget = [
            CacheChange::User(user),
            CacheChange::Identity { issuer: found.issuer.clone(), subject: found.subject.clone() },
        ];
        log_changes(&mut tx, &forget, now).await?;
        tx.commit().await?;
        Ok(UnlinkOutcome::Unlinked(found))
    }

    /// [`Store::delete_other_sessions`], once (see [`retrying_conflicts`]).
    async fn delete_other_sessions_once(&self, user: UserId, keep: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        let mut tx = self.db.begin().await?;
        // One user's "everywhere else" one at a time (the user's row; SQLite's write lock), each
        // only while the session it keeps still lives: two browsers clicking it at once would
        // otherwise each end the other's session, leaving none, where one of them was already
        // signed out when its click took effect.
        query("SELECT 1 AS one FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user.as_uuid())
            .execute(&mut tx)
            .await?;
        let kept = query("SELECT 1 AS one FROM sessions WHERE token_hash = $1 AND user_id = $2")
            .bind(&keep[..])
            .bind(user.as_uuid())
            .fetch_optional(&mut tx)
            .await?;
        if kept.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let ended = query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
            .bind(user.as_uuid())
            .bind(&keep[..])
            .execute(&mut tx)
            .await?;
        let now = crate::domain::now();
        insert_session_event(&mut tx, user, SessionEnd::SignedOutElsewhere, ended, now).await?;
        if ended > 0 {
            log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        }
        tx.commit().await?;
        Ok(Some(ended))
    }

    /// [`Store::remove_member`] (or, `leaving`, [`Store::leave_team`]), once.
    async fn remove_member_once(
        &self,
        team: TeamId,
        acting: Option<UserId>,
        user: UserId,
        leaving: bool,
    ) -> Result<RemoveOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // Serialises membership changes of one team (see write_member).
        if !lock_team(&mut tx, team).await? {
            tx.rollback().await?;
            return Ok(RemoveOutcome::TeamNotFound);
        }
        if !leaving && let Some(refusal) = acting_owner(&mut tx, team, acting).await? {
            tx.rollback().await?;
            return Ok(RemoveOutcome::NotAllowed(refusal));
        }
        let Some(Standing { role, disabled, sole_owner, alone }) = standing(&mut tx, team, user).await? else {
            tx.rollback().await?;
            return Ok(RemoveOutcome::NotMember);
        };
        // One leaving acts in the team as an owner removing another does: a user disabled a
        // moment ago (their credential still taken by another instance's cache) acts in
        // nothing, and leaving alone would delete the team.
        if leaving && disabled {
            tx.rollback().await?;
            return Ok(RemoveOutcome::NotAllowed(ActingRefusal::Disabled));
        }
        if sole_owner {
            if leaving && alone {
                // The team goes with its only member, with its domains, profiles, links and
                // flows (cascades), as when a user is deleted.
                let now = crate::domain::now();
                delete_team_in(&mut tx, team, now).await?;
                let payload = events::member_removed(team, user, Role::Owner, true);
                insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_REMOVED, payload), now).await?;
                log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
                tx.commit().await?;
                return Ok(RemoveOutcome::RemovedWithTeam);
            }
            tx.rollback().await?;
            return Ok(RemoveOutcome::LastOwner);
        }
        query("DELETE FROM memberships WHERE team_id = $1 AND user_id = $2")
            .bind(team.as_uuid())
            .bind(user.as_uuid())
            .execute(&mut tx)
            .await?;
        // A team-wide profile they made stays the team's, credited (as when a user is deleted) to
        // the team's longest-standing owner, else member: a creator may act on their profile
        // whatever their role, and that right must not outlive the membership (nor come back
        // with a later one).
        credit_team_wide_profiles(&mut tx, team, user).await?;
        // Their personal connected accounts in the team: nobody may use them any more (a personal
        // profile is its creator's alone, and its creator is no longer a member), so their tokens
        // are not kept. Nor their team-wide ones when they were its last member (a team an
        // operator made without an owner): there is nobody to credit them to, and the creator's
        // rights must not come back with a later membership.
        let now = crate::domain::now();
        let personal = query(
            "SELECT id FROM auth_profiles
             WHERE team_id = $1 AND created_by = $2 AND status <> 'revoked'
               AND (profile_kind = 'oauth_account' OR NOT EXISTS (SELECT 1 FROM memberships o WHERE o.team_id = $1))
             ORDER BY id FOR UPDATE",
        )
        .bind(team.as_uuid())
        .bind(user.as_uuid());
        revoke_found_profiles(&mut tx, personal, "member_removed", now).await?;
        // The former member's connect links and connect flows for the team — after the profiles
        // above are locked, in the order a link's mint and use take them (profile, then link):
        // the other order deadlocks with a link opened meanwhile.
        for sql in [
            "DELETE FROM connect_tokens
             WHERE user_id = $2 AND profile_id IN (SELECT id FROM auth_profiles WHERE team_id = $1)",
            "DELETE FROM login_states
             WHERE link_user_id = $2 AND profile_id IN (SELECT id FROM auth_profiles WHERE team_id = $1)",
        ] {
            query(sql).bind(team.as_uuid()).bind(user.as_uuid()).execute(&mut tx).await?;
        }
        let payload = events::member_removed(team, user, role, false);
        insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_REMOVED, payload), now).await?;
        log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        tx.commit().await?;
        Ok(RemoveOutcome::Removed)
    }
}

/// Runs `once` again, up to five times after a short, growing and jittered pause, while
/// PostgreSQL aborts it to let a concurrent transaction through (a deadlock, a serialization
/// failure).
pub(super) async fn retrying_conflicts<T, Fut>(mut once: impl FnMut() -> Fut) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempts: u64 = 0;
    loop {
        match once().await {
            Err(error) if error.is_conflict() && attempts < 5 => {
                attempts += 1;
                let jitter = u64::from(crate::crypto::random_bytes::<1>()[0]) / 8;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempts + jitter)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Where a member stands in a team, as far as leaving it goes.
struct Standing {
    /// Their role in the team.
    role: Role,
    /// Their user is disabled (a disable committed before is seen; see [`enabled_member_role`]).
    disabled: bool,
    /// They are an owner and no other owner can act (every other one is disabled, or there is
    /// none): removing or demoting them would leave the team to nobody.
    sole_owner: bool,
    /// They are its only member and it is not their default team (which its only member cannot
    /// leave: the team would go with them).
    alone: bool,
}

/// Where `user` stands in `team`, read in `tx`; `None` when they are not a member.
async fn standing(tx: &mut Tx, team: TeamId, user: UserId) -> Result<Option<Standing>, StoreError> {
    let row = query(
        "SELECT m.role, u.disabled, m.role = 'owner' AND NOT EXISTS (
                    SELECT 1 FROM memberships o JOIN users u ON u.id = o.user_id
                    WHERE o.team_id = m.team_id AND o.role = 'owner' AND o.user_id <> m.user_id
                      AND NOT u.disabled)
                AS sole_owner,
                NOT m.is_default AND NOT EXISTS (
                    SELECT 1 FROM memberships o WHERE o.team_id = m.team_id AND o.user_id <> m.user_id)
                AS alone
         FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 AND m.user_id = $2",
    )
    .bind(team.as_uuid())
    .bind(user.as_uuid())
    .fetch_optional(tx)
    .await?;
    row.map(|row| {
        Ok(Standing {
            role: decode_role(&row.text("role")?)?,
            disabled: row.flag("disabled")?,
            sole_owner: row.flag("sole_owner")?,
            alone: row.flag("alone")?,
        })
    })
    .transpose()
}

/// `user`'s role in `team` when their user is not disabled (`None` for a disabled one or a
/// non-member), for the checks of a right made inside a write: a user disabled a moment ago,
/// whose session another instance has not forgotten yet, acts in nothing. Read without a lock
/// of the user's row, which would take the user after the team, against the order of a user's
/// deletion: a disable committed before is seen.
async fn enabled_member_role(tx: &mut Tx, team: TeamId, user: UserId) -> Result<Option<Role>, StoreError> {
    Ok(member_standing(tx, team, user).await?.and_then(|(role, disabled)| (!disabled).then_some(role)))
}

/// `user`'s role in `team` and whether their user is disabled; `None` for a non-member. Read as
/// [`enabled_member_role`] reads it.
async fn member_standing(tx: &mut Tx, team: TeamId, user: UserId) -> Result<Option<(Role, bool)>, StoreError> {
    let row = query(
        "SELECT m.role, u.disabled FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE m.team_id = $1 AND m.user_id = $2",
    )
    .bind(team.as_uuid())
    .bind(user.as_uuid())
    .fetch_optional(tx)
    .await?;
    row.map(|row| Ok((decode_role(&row.text("role")?)?, row.flag("disabled")?))).transpose()
}

/// Inserts `team` under the first free slug and makes `user` its owner, as their default team.
async fn insert_default_team(
    tx: &mut Tx,
    user: UserId,
    team: &NewTeam,
    now: DateTime<Utc>,
) -> Result<Team, StoreError> {
    let mut slug = None;
    for candidate in &team.slug_candidates {
        let inserted = query(
            "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
        )
        .bind(team.id.as_uuid())
        .bind(candidate.as_str())
        .bind(&team.name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            slug = Some(candidate.clone());
            break;
        }
    }
    let slug = slug.ok_or(StoreError::Conflict { what: "team slug" })?;
    query("INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES ($1, $2, $3, TRUE, $4)")
        .bind(team.id.as_uuid())
        .bind(user.as_uuid())
        .bind(Role::Owner.as_str())
        .bind(now)
        .execute(tx)
        .await?;
    Ok(Team { id: team.id, slug, name: team.name.clone(), created_at: now })
}

/// An audit row for `identity_events`.
struct IdentityEvent<'a> {
    user: UserId,
    identity: IdentityId,
    action: &'static str,
    provider: &'a str,
    issuer: &'a Issuer,
    subject: &'a Subject,
    now: DateTime<Utc>,
}

async fn insert_identity_event(tx: &mut Tx, event: IdentityEvent<'_>) -> Result<(), StoreError> {
    query(
        "INSERT INTO identity_events (id, user_id, identity_id, action, provider, issuer, subject, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(event.user.as_uuid())
    .bind(event.identity.as_uuid())
    .bind(event.action)
    .bind(event.provider)
    .bind(event.issuer.as_str())
    .bind(event.subject.as_str())
    .bind(event.now)
    .execute(tx)
    .await?;
    Ok(())
}

/// One of `user`'s identities.
async fn identity_of(tx: &mut Tx, identity: IdentityId, user: UserId) -> Result<Option<Identity>, StoreError> {
    let row = query(concat!("SELECT ", identity_columns!(), " FROM identities i WHERE i.id = $1 AND i.user_id = $2"))
        .bind(identity.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(tx)
        .await?;
    row.as_ref().map(rows::identity).transpose()
}

/// Writes an outbox event in the transaction of the change it reports.
pub(super) async fn insert_event(tx: &mut Tx, event: &NewEvent, now: DateTime<Utc>) -> Result<(), StoreError> {
    insert_events(tx, std::slice::from_ref(event), now).await
}

/// Writes `events` into the outbox, [`EVENTS_PER_INSERT`] rows a statement: a change of many
/// (a team's deletion, an event for each member) holds its first sequence number, which the
/// fan-out waits behind, for a few statements rather than one per event.
pub(super) async fn insert_events(tx: &mut Tx, events: &[NewEvent], now: DateTime<Utc>) -> Result<(), StoreError> {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        super::db::multi_row_inserts("INSERT INTO outbox_events (id, topic, payload, created_at)", 4, EVENTS_PER_INSERT)
    });
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let mut insert = query(SQL[chunk.len() - 1].as_str());
        for event in chunk {
            insert = insert.bind(event.id.as_uuid()).bind(event.topic).bind(&event.payload).bind(now);
        }
        insert.execute(&mut *tx).await?;
    }
    Ok(())
}

/// The most outbox rows one statement of [`insert_events`] writes (400 parameters).
const EVENTS_PER_INSERT: usize = 100;

/// A user by id, read in `tx`.
pub(super) async fn user_in(tx: &mut Tx, user: UserId) -> Result<Option<User>, StoreError> {
    let row = query(concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = $1"))
        .bind(user.as_uuid())
        .fetch_optional(tx)
        .await?;
    row.as_ref().map(rows::user).transpose()
}

/// Whether `user` exists, its row then locked against deletion for the rest of `tx` (`FOR KEY
/// SHARE`, the lock a foreign key check takes): a write that references the user checks this
/// first, so that it either sees the user gone or keeps the user until it commits, where a plain
/// read would let a deletion commit in between and the write fail its foreign key. Deleting a
/// user locks the user before its teams; a write that locks both takes them in the same order.
pub(super) async fn lock_user_key(tx: &mut Tx, user: UserId) -> Result<bool, StoreError> {
    let row =
        query("SELECT 1 AS one FROM users WHERE id = $1 FOR KEY SHARE").bind(user.as_uuid()).fetch_optional(tx).await?;
    Ok(row.is_some())
}

/// Whether both `user` and `client` exist, their rows then locked against deletion for the rest
/// of `tx` (see [`lock_user_key`]): for a write that references both. Deletions lock the parent
/// before cascading to its rows, so a write that took such a row first could deadlock with them.
async fn lock_user_and_client(tx: &mut Tx, user: UserId, client: &str) -> Result<bool, StoreError> {
    let row = query("SELECT 1 AS one FROM users u, clients c WHERE u.id = $1 AND c.id = $2 FOR KEY SHARE")
        .bind(user.as_uuid())
        .bind(client)
        .fetch_optional(tx)
        .await?;
    Ok(row.is_some())
}

/// Locks a team's row for the rest of `tx` (membership changes of one team one after the other);
/// false when the team is gone.
pub(super) async fn lock_team(tx: &mut Tx, team: TeamId) -> Result<bool, StoreError> {
    let row =
        query("SELECT 1 AS one FROM teams WHERE id = $1 FOR UPDATE").bind(team.as_uuid()).fetch_optional(tx).await?;
    Ok(row.is_some())
}

/// Why `acting` (none: the admin API) may not change the team's members, `None` when it may:
/// an enabled owner of it (as [`enabled_member_role`] reads a disable), read in `tx` after the
/// team's row lock.
async fn acting_owner(tx: &mut Tx, team: TeamId, acting: Option<UserId>) -> Result<Option<ActingRefusal>, StoreError> {
    let Some(user) = acting else { return Ok(None) };
    Ok(match member_standing(tx, team, user).await? {
        None => Some(ActingRefusal::NotMember),
        Some((_, true)) => Some(ActingRefusal::Disabled),
        Some((role, false)) => (role != Role::Owner).then_some(ActingRefusal::NotOwner),
    })
}

/// The role of `by` in profile `id`'s team when `by` has `right` on it ([`ProfileKind::allows`]);
/// `None` when not (a disabled member has none), or when the profile is gone. Read in `tx` after a shared lock of the team's
/// row, taken before any lock of the profile: membership changes lock that row for update, so a
/// removal or demotion waits until `tx` ends, or came first.
pub(super) async fn role_allowed_in(
    tx: &mut Tx,
    id: ProfileId,
    by: UserId,
    right: ProfileRight,
) -> Result<Option<Role>, StoreError> {
    query("SELECT 1 FROM teams WHERE id = (SELECT team_id FROM auth_profiles WHERE id = $1) FOR SHARE")
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;
    let row = query(
        "SELECT m.role, p.created_by, p.profile_kind FROM auth_profiles p
         JOIN memberships m ON m.team_id = p.team_id AND m.user_id = $2
         JOIN users u ON u.id = m.user_id AND NOT u.disabled
         WHERE p.id = $1",
    )
    .bind(id.as_uuid())
    .bind(by.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let kind = decode_kind(&row.text("profile_kind")?)?;
    let role = decode_role(&row.text("role")?)?;
    Ok(kind.allows(right, row.uuid("created_by")? == by.as_uuid(), role).then_some(role))
}

/// Whether `by` may connect (or set the credential of) profile `id` ([`role_allowed_in`]).
pub(super) async fn may_connect_in(tx: &mut Tx, id: ProfileId, by: UserId) -> Result<bool, StoreError> {
    Ok(role_allowed_in(tx, id, by, ProfileRight::Connect).await?.is_some())
}

/// Stores a connect link in `tx`.
async fn insert_connect_token(tx: &mut Tx, token: &ConnectToken) -> Result<(), StoreError> {
    query(
        "INSERT INTO connect_tokens (token_hash, profile_id, user_id, allow_account_change, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token.token_hash[..])
    .bind(token.profile.as_uuid())
    .bind(token.user.as_uuid())
    .bind(token.allow_account_change)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(tx)
    .await
    .map_err(|e| e.or_gone("the user"))?;
    Ok(())
}

/// Keeps a pending profile until at least `until` (never shortens it; sets a missing expiry).
async fn keep_pending(tx: &mut Tx, profile: ProfileId, until: DateTime<Utc>) -> Result<(), StoreError> {
    query(
        "UPDATE auth_profiles
         SET pending_expires_at = CASE WHEN pending_expires_at IS NULL OR pending_expires_at < $2
                                       THEN $2 ELSE pending_expires_at END
         WHERE id = $1 AND status = 'pending_auth'",
    )
    .bind(profile.as_uuid())
    .bind(until)
    .execute(tx)
    .await?;
    Ok(())
}

/// The status of a profile, locked for the rest of `tx`; `None` when there is no such profile.
pub(super) async fn profile_status_in(tx: &mut Tx, id: ProfileId) -> Result<Option<String>, StoreError> {
    let row = query("SELECT status FROM auth_profiles WHERE id = $1 FOR UPDATE")
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
    row.map(|row| row.text("status")).transpose()
}

/// Writes an `auth_profile.*` event about a profile as it is now in `tx`, with `extra` members
/// added to the payload.
pub(super) async fn insert_profile_event(
    tx: &mut Tx,
    id: ProfileId,
    topic: &'static str,
    extra: &[(&str, serde_json::Value)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let row = query(concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE p.id = $1"))
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
    let mut payload = events::auth_profile_changed(&rows::profile(&row)?);
    for (key, value) in extra {
        payload[*key] = value.clone();
    }
    insert_event(tx, &NewEvent::new(topic, payload), now).await
}

/// The audit row of a member's change of a connected account, `action` (`auth_profile.connected`
/// or `auth_profile.revoked`) by `by`, written in the change's transaction: it is recorded
/// exactly when the change commits. `previous_status` (a connection's) says whether it was a
/// first connection (`pending_auth`) or a reconnection. `request_id` is the id of the request
/// that made the change.
pub(super) async fn record_profile_change(
    tx: &mut Tx,
    action: &'static str,
    by: UserId,
    profile: ProfileId,
    previous_status: Option<&str>,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    let mut event = super::NewAuditEvent::new(super::audit::ActorKind::User, action)
        .actor(Some(by.to_string()), None)
        .target("auth_profile", profile.to_string())
        .request(request_id.map(str::to_owned));
    if let Some(status) = previous_status {
        event = event.details(serde_json::json!({ "previous_status": status }));
    }
    super::audit::insert(tx, std::slice::from_ref(&event)).await
}

/// Revokes profile `id`, whose row `tx` holds locked: status `revoked`, its tokens wiped, version
/// bumped, its connect links and stored credentials deleted, an `auth_profile.revoked` event
/// (with `extra` in its payload).
async fn revoke_locked_profile(
    tx: &mut Tx,
    id: ProfileId,
    extra: &[(&str, serde_json::Value)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    query(
        "UPDATE auth_profiles SET status = 'revoked', access_token = NULL, refresh_token = NULL,
                access_token_expires_at = NULL, access_token_stored_at = NULL,
                refresh_lease_owner = NULL, refresh_lease_until = NULL,
                version = version + 1, token_version = token_version + 1, updated_at = $2
         WHERE id = $1",
    )
    .bind(id.as_uuid())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    query("DELETE FROM connect_tokens WHERE profile_id = $1").bind(id.as_uuid()).execute(&mut *tx).await?;
    query("DELETE FROM profile_credentials WHERE profile_id = $1").bind(id.as_uuid()).execute(&mut *tx).await?;
    insert_profile_event(tx, id, events::AUTH_PROFILE_REVOKED, extra, now).await
}

/// Deletes a team with its domains, profiles, links and flows (cascades); each of its live
/// profiles is revoked first, so that the connected accounts that end with it are each told
/// (`auth_profile.revoked`, `"reason": "team_deleted"`), as a revocation of one would be.
pub(super) async fn delete_team_in(tx: &mut Tx, team: TeamId, now: DateTime<Utc>) -> Result<(), StoreError> {
    let live = query("SELECT id FROM auth_profiles WHERE team_id = $1 AND status <> 'revoked' ORDER BY id FOR UPDATE")
        .bind(team.as_uuid());
    revoke_found_profiles(tx, live, "team_deleted", now).await?;
    query("DELETE FROM teams WHERE id = $1").bind(team.as_uuid()).execute(&mut *tx).await?;
    Ok(())
}

/// Revokes each profile `found` selects (its `id`, locked `FOR UPDATE` in id order), as
/// [`revoke_locked_profile`] does, the event's payload saying `reason`: profiles that end with
/// something else (a membership, a team, a user) rather than by themselves.
pub(super) async fn revoke_found_profiles(
    tx: &mut Tx,
    found: Query<'_>,
    reason: &'static str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows = found.fetch_all(&mut *tx).await?;
    let reason = [("reason", serde_json::Value::from(reason))];
    for row in &rows {
        revoke_locked_profile(tx, ProfileId::from_uuid(row.uuid("id")?), &reason, now).await?;
    }
    Ok(())
}

/// Writes a `session.revoked` event when sessions ended.
async fn insert_session_event(
    tx: &mut Tx,
    user: UserId,
    reason: SessionEnd,
    ended: u64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if ended == 0 {
        return Ok(());
    }
    insert_event(tx, &NewEvent::new(events::SESSION_REVOKED, events::session_revoked(user, reason, ended)), now).await
}

/// Deletes a session in `tx` with its `session.revoked` event (`reason`) and the
/// cache-invalidation row that tells other instances; false when there was none.
async fn end_session_in(
    tx: &mut Tx,
    token_hash: &[u8; 32],
    reason: SessionEnd,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let deleted = query("DELETE FROM sessions WHERE token_hash = $1 RETURNING user_id")
        .bind(&token_hash[..])
        .fetch_optional(&mut *tx)
        .await?;
    let Some(deleted) = deleted else {
        return Ok(false);
    };
    let user = UserId::from_uuid(deleted.uuid("user_id")?);
    insert_session_event(tx, user, reason, 1, now).await?;
    // Other instances may have the session cached.
    log_changes(tx, &[CacheChange::User(user)], now).await?;
    Ok(true)
}

/// Decodes one stored ciphertext column into a [`StoredSecret`], if set.
fn push_secret(
    secrets: &mut Vec<StoredSecret>,
    row: &impl RowExt,
    kind: SecretKind,
    row_id: uuid::Uuid,
    column: &'static str,
) -> Result<(), StoreError> {
    if let Some(ciphertext) = row.opt_bytes(column)? {
        secrets.push(StoredSecret { kind, row_id, column, ciphertext });
    }
    Ok(())
}

/// The columns of a user with each of their identities and teams (a row per identity, then a
/// row per membership: see [`PROFILE_JOINS`]), for [`fold_profile`]; the statement adds its
/// `FROM users u` and joins.
macro_rules! profile_columns_of_user {
    () => {
        concat!(
            user_columns!(),
            ", u.primary_identity_id AS primary_identity_id, ",
            identity_columns!(),
            ", ",
            team_columns!(),
            ", m.role AS role, m.is_default AS is_default, m.created_at AS membership_created_at"
        )
    };
}

/// The joins of [`profile_columns_of_user!`]: the user's identities and their memberships side
/// by side (`pj.part` 0, then 1), not crossed, so that a user of many teams and a few identities
/// reads identities + teams rows, not their product.
const PROFILE_JOINS: &str = "CROSS JOIN (SELECT 0 AS part UNION ALL SELECT 1 AS part) pj
     LEFT JOIN identities i ON pj.part = 0 AND i.user_id = u.id
     LEFT JOIN memberships m ON pj.part = 1 AND m.user_id = u.id
     LEFT JOIN teams t ON t.id = m.team_id";

/// A user with their identities and teams ([`read_user_profile`]).
pub(super) static USER_PROFILE: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
    Box::leak(
        format!("SELECT {} FROM users u {PROFILE_JOINS} WHERE u.id = $1", profile_columns_of_user!()).into_boxed_str(),
    )
});

/// Folds the rows of [`profile_columns_of_user!`] into a profile, ordered as the API promises
/// (identities oldest first; the default team first, then teams in the order joined). Each
/// identity and each membership is on a row of its own.
fn fold_profile(rows: &[super::db::Row]) -> Result<Option<UserProfile>, StoreError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let (found, chosen_primary) = (rows::user(first)?, first.opt_uuid("primary_identity_id")?);
    let mut identities = Vec::new();
    let mut teams = Vec::new();
    for row in rows {
        if row.opt_uuid("identity_id")?.is_some() {
            identities.push(rows::identity(row)?);
        }
        if row.opt_uuid("team_id")?.is_some() {
            teams.push((row.time("membership_created_at")?, rows::membership(row)?));
        }
    }
    identities.sort_by_key(|i| (i.created_at, i.id.as_uuid()));
    teams.sort_by_key(|(at, m)| (!m.is_default, *at, m.team.id.as_uuid()));
    let teams = teams.into_iter().map(|(_, membership)| membership).collect();
    Ok(Some(rows::user_profile(found, chosen_primary, identities, teams)))
}

/// A user with their identities and teams, in one statement.
async fn read_user_profile(pool: PoolRef<'_>, user: UserId) -> Result<Option<UserProfile>, StoreError> {
    fold_profile(&query(*USER_PROFILE).bind(user.as_uuid()).fetch_all(pool).await?)
}

/// The insert of an un-retired signing key; returns its kid, or no row when the algorithm has an
/// un-retired key already.
fn insert_signing_key(key: &SigningKeyRecord) -> super::db::Query<'_> {
    query(
        "INSERT INTO signing_keys (kid, alg, public_jwk, private_key, created_at, signs_from, retired_at, unpublish_at)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)
         ON CONFLICT DO NOTHING RETURNING kid",
    )
    .bind(key.kid.as_str())
    .bind(key.alg.as_str())
    .bind(key.public_jwk.as_str())
    .bind(key.private_key.as_slice())
    .bind(key.created_at)
    .bind(key.signs_from)
}

// ---- Webhooks -----------------------------------------------------------------------------------

/// The advisory-lock key of the fan-out of outbox events (one instance at a time).
const FAN_OUT_LOCK: i64 = 0x7465_7373_6f75_7401;

/// The sweep's delete of the grants whose code expired unused (with the code, by the cascade):
/// nothing was issued from them. Read through the partial index of unused codes, which are
/// locked first — the order a redemption takes (code, then the grant its refresh token names) —
/// and a code being redeemed at its last moment is skipped (PostgreSQL re-checks only the
/// grant's row, not the code's, after a wait).
pub(super) const UNUSED_CODES_GRANTS: &str = "DELETE FROM oauth_grants WHERE id IN
       (SELECT grant_id FROM oauth_codes WHERE expires_at <= $1 AND used_at IS NULL LIMIT $2 FOR UPDATE SKIP LOCKED)
     AND NOT EXISTS (SELECT 1 FROM oauth_codes c
                     WHERE c.grant_id = oauth_grants.id AND (c.used_at IS NOT NULL OR c.expires_at > $1))";

/// How many grants one statement of `clear_client_grants` deletes, each with its codes and
/// refresh tokens (an agent's grant may have thousands of these).
const GRANTS_PER_DELETE: i64 = 100;

/// The advisory-lock key of the first sign-ins with `email` (see [`Store::create_account`]).
fn email_lock(email: &Email) -> i64 {
    let hash = crate::crypto::sha256(format!("first sign-in:{}", email.key()).as_bytes());
    i64::from_be_bytes(hash[..8].try_into().unwrap_or_default())
}

/// How far ahead of a new webhook endpoint's own time the events fanned out already may move its
/// registration (their writers' clocks); beyond it, an event from a clock far ahead does not.
const WEBHOOK_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Columns of `webhook_endpoints`, for [`webhook_row`].
/// The `SET` of an endpoint's `enabled` from `$4` (`NULL` keeps it) with its `disabled_at`: the
/// time `$5` when it goes from enabled to disabled, kept while it stays disabled, cleared when it
/// is enabled (the fan-out gives a disabled endpoint the events written before that time).
const SET_ENABLED: &str = "enabled = COALESCE($4, enabled),
    disabled_at = CASE WHEN COALESCE($4, enabled) THEN NULL WHEN enabled THEN $5 ELSE disabled_at END";
const WEBHOOK_COLUMNS: &str = "id, url, event_types, enabled, secret, previous_secret, previous_secret_until, config_name, created_at, updated_at";

fn webhook_row(row: &impl RowExt) -> Result<WebhookEndpoint, StoreError> {
    Ok(WebhookEndpoint {
        id: WebhookId::from_uuid(row.uuid("id")?),
        url: row.text("url")?,
        event_types: row.text("event_types")?.split_whitespace().map(str::to_owned).collect(),
        enabled: row.flag("enabled")?,
        secret: row.bytes("secret")?,
        previous_secret: row.opt_bytes("previous_secret")?,
        previous_secret_until: row.opt_time("previous_secret_until")?,
        config_name: row.opt_text("config_name")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn delivery_row(row: &impl RowExt) -> Result<WebhookDelivery, StoreError> {
    let state = row.text("state")?;
    Ok(WebhookDelivery {
        id: row.uuid("id")?,
        endpoint_id: WebhookId::from_uuid(row.uuid("endpoint_id")?),
        event_id: EventId::from_uuid(row.uuid("event_id")?),
        event_seq: row.int("event_seq")?,
        topic: row.text("topic")?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state {state:?}")))?,
        attempts: row.int("attempts")?,
        scheduled_at: row.time("scheduled_at")?,
        next_attempt_at: row.time("next_attempt_at")?,
        last_attempt_at: row.opt_time("last_attempt_at")?,
        last_status: row.opt_int("last_status")?,
        last_error: row.opt_text("last_error")?,
        delivered_at: row.opt_time("delivered_at")?,
    })
}

/// Credits the team-wide profiles `from` made in `team` to whom inherits them as `from` leaves:
/// the team's longest-standing enabled owner, else its longest-standing other member. Chosen
/// once, through the owners' index (not the whole team ranked for each profile, which a team of
/// thousands made minutes of locks); nobody left, nothing is credited.
pub(super) async fn credit_team_wide_profiles(tx: &mut Tx, team: TeamId, from: UserId) -> Result<(), StoreError> {
    let heir = query(
        "SELECT COALESCE(
           (SELECT o.user_id FROM memberships o JOIN users u ON u.id = o.user_id
            WHERE o.team_id = $1 AND o.role = 'owner' AND NOT u.disabled AND o.user_id <> $2
            ORDER BY o.created_at, o.user_id LIMIT 1),
           (SELECT o.user_id FROM memberships o WHERE o.team_id = $1 AND o.user_id <> $2
            ORDER BY o.created_at, o.user_id LIMIT 1)) AS heir",
    )
    .bind(team.as_uuid())
    .bind(from.as_uuid())
    .fetch_one(&mut *tx)
    .await?
    .opt_uuid("heir")?;
    if let Some(heir) = heir {
        query(
            "UPDATE auth_profiles SET created_by = $3
             WHERE team_id = $1 AND created_by = $2 AND profile_kind <> 'oauth_account'",
        )
        .bind(team.as_uuid())
        .bind(from.as_uuid())
        .bind(heir)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The condition on the pending personal profile of a [`PendingKey`] (`$1` team, `$2`
/// connector, `$3` provider, `$4` its maker: [`bind_pending`]); the kind a literal, so that its
/// partial unique index serves the statement in a generic plan too.
macro_rules! pending_account {
    () => {
        "team_id = $1 AND connector_key = $2 AND provider = $3 AND created_by = $4
         AND status = 'pending_auth' AND profile_kind = 'oauth_account'"
    };
}

/// [`pending_account!`] for a team-wide profile (no `$4`).
macro_rules! pending_app {
    () => {
        "team_id = $1 AND connector_key = $2 AND provider = $3 AND status = 'pending_auth' AND profile_kind = 'oauth_app'"
    };
}

/// Binds `key` to a statement of [`pending_account!`] or [`pending_app!`]: its maker only for a
/// personal profile.
fn bind_pending<'q>(statement: Query<'q>, key: &PendingKey<'_>) -> Query<'q> {
    let statement = statement.bind(key.team.as_uuid()).bind(key.connector_key.to_owned()).bind(key.provider.to_owned());
    match key.kind {
        ProfileKind::OauthAccount => statement.bind(key.created_by.as_uuid()),
        _ => statement,
    }
}

/// Inserts a pending delivery of an event to an endpoint, unless there is one.
async fn insert_delivery(
    tx: &mut Tx,
    endpoint: WebhookId,
    event: uuid::Uuid,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    query(
        "INSERT INTO webhook_deliveries
           (id, endpoint_id, event_id, event_seq, state, attempts, scheduled_at, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(endpoint.as_uuid())
    .bind(event)
    .bind(seq)
    .bind(now)
    .execute(tx)
    .await
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.db.backend()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The reader: on SQLite the writer is one connection, busy with every write transaction.
        query("SELECT 1").execute(self.db.reader()).await?;
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // On the background connection, not the request pool: every request connection busy
        // (a burst of slow queries) is load, not an instance to take out of rotation, which
        // would only move the load onto the others until none is ready. Without the bound, a
        // database that is down costs the whole acquire timeout (with connection retries)
        // before the answer; the ping itself runs on (see `ReadyPings::running`).
        let arrived = std::time::Instant::now();
        let ping = async {
            // One ping at a time: a burst of probes (it needs no credential) would otherwise
            // queue on the background loops' one connection and hold up their own statements
            // (lease renewals, the cache-invalidation log). A ping that succeeded after this
            // probe arrived answers it; after a failure, the next in line asks again.
            let mut pings = self.ready_pings.lock().await;
            if pings.succeeded_at.is_some_and(|at| at >= arrived) {
                return Ok(());
            }
            loop {
                let running = pings.running.get_or_insert_with(|| self.db.ping_background());
                let ended = running.await;
                pings.running = None;
                let (outcome, ended_at) = ended.map_err(|_| StoreError::Unavailable(sqlx::Error::WorkerCrashed))?;
                // An earlier probe's ping, which ended before this one came: it says nothing of
                // the database now.
                if ended_at < arrived {
                    continue;
                }
                outcome?;
                pings.succeeded_at = Some(ended_at);
                return Ok(());
            }
        };
        tokio::time::timeout(self.ready_timeout, ping)
            .await
            .map_err(|_elapsed| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        self.db.migration_status().await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.db.migrate().await
    }

    async fn data_report(&self) -> Result<DataReport, StoreError> {
        let row = query(
            "SELECT
               (SELECT count(*) FROM (SELECT user_id FROM memberships WHERE is_default
                                      GROUP BY user_id HAVING count(*) > 1) s) AS several_default,
               (SELECT count(*) FROM users u WHERE NOT EXISTS
                    (SELECT 1 FROM identities i WHERE i.user_id = u.id)) AS without_identity,
               (SELECT count(*) FROM users u WHERE NOT EXISTS
                    (SELECT 1 FROM memberships m WHERE m.user_id = u.id AND m.is_default)) AS without_default,
               (SELECT count(*) FROM teams t WHERE NOT EXISTS
                    (SELECT 1 FROM memberships m WHERE m.team_id = t.id AND m.role = 'owner')) AS without_owner",
        )
        .fetch_one(self.db.reader())
        .await?;
        // Sorted here, by bytes: a database's collation may order text otherwise.
        let mut issuers = query("SELECT DISTINCT issuer FROM identities")
            .fetch_all(self.db.reader())
            .await?
            .iter()
            .map(|row| row.text("issuer"))
            .collect::<Result<Vec<_>, _>>()?;
        issuers.sort_unstable();
        Ok(DataReport {
            users_with_several_default_teams: row.int("several_default")?,
            users_without_identity: row.int("without_identity")?,
            users_without_default_team: row.int("without_default")?,
            teams_without_owner: row.int("without_owner")?,
            issuers,
        })
    }

    async fn find_identity(&self, issuer: &Issuer, subject: &Subject) -> Result<Option<IdentityMatch>, StoreError> {
        let row = query(concat!(
            "SELECT i.id AS identity_id, i.last_seen_at AS identity_last_seen_at, ",
            user_columns!(),
            ", ",
            team_columns!(),
            " FROM identities i
              JOIN users u ON u.id = i.user_id
              LEFT JOIN memberships m ON m.user_id = u.id AND m.is_default
              LEFT JOIN teams t ON t.id = m.team_id
              WHERE i.issuer = $1 AND i.subject = $2"
        ))
        .bind(issuer.as_str())
        .bind(subject.as_str())
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| {
            Ok(IdentityMatch {
                identity_id: IdentityId::from_uuid(row.uuid("identity_id")?),
                last_seen_at: row.time("identity_last_seen_at")?,
                user: rows::user(&row)?,
                default_team: rows::opt_team(&row)?,
            })
        })
        .transpose()
    }

    async fn create_account(&self, account: &NewAccount) -> Result<CreateOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // First sign-ins with one email, one at a time (a lock per address), each seeing the
        // accounts those before it made: two providers' first sign-ins of one person at once
        // would otherwise each make an account with the address.
        if let (Some(holders), Some(email)) = (&account.email_holders, &account.email) {
            exclusive(&mut tx, email_lock(email)).await?;
            let rows = query("SELECT id FROM users WHERE email_key = $1").bind(email.key()).fetch_all(&mut tx).await?;
            let held = rows.iter().map(|row| row.uuid("id")).collect::<Result<HashSet<_>, _>>()?;
            if held != holders.iter().map(|user| user.as_uuid()).collect() {
                tx.rollback().await?;
                return Ok(CreateOutcome::EmailHoldersChanged);
            }
        }
        query(
            "INSERT INTO users (id, email, email_verified, name, disabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, FALSE, $5, $5)",
        )
        .bind(account.user_id.as_uuid())
        .bind(account.email.as_ref().map(Email::as_str))
        .bind(account.email_verified)
        .bind(account.name.as_deref())
        .bind(account.now)
        .execute(&mut tx)
        .await?;
        // The race point: a concurrent insert of the same key waits here for the first
        // transaction to finish, then either sees the conflict (and returns no row) or proceeds.
        let linked = query(
            "INSERT INTO identities
               (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (issuer, subject) DO NOTHING RETURNING user_id",
        )
        .bind(account.identity_id.as_uuid())
        .bind(account.user_id.as_uuid())
        .bind(account.issuer.as_str())
        .bind(account.subject.as_str())
        .bind(&account.provider)
        .bind(account.email.as_ref().map(Email::as_str))
        .bind(account.email_verified)
        .bind(account.now)
        .fetch_optional(&mut tx)
        .await?;
        if linked.is_none() {
            tx.rollback().await?;
            return Ok(CreateOutcome::IdentityTaken);
        }
        let team = insert_default_team(&mut tx, account.user_id, &account.team, account.now).await?;
        let created = events::user_created(&account.user(), &account.identity(), &team);
        insert_event(&mut tx, &NewEvent::new(events::USER_CREATED, created), account.now).await?;
        insert_identity_event(
            &mut tx,
            IdentityEvent {
                user: account.user_id,
                identity: account.identity_id,
                action: "link",
                provider: &account.provider,
                issuer: &account.issuer,
                subject: &account.subject,
                now: account.now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(CreateOutcome::Created { user: account.user(), team })
    }

    async fn ensure_default_team(
        &self,
        user: UserId,
        team: &NewTeam,
        now: DateTime<Utc>,
    ) -> Result<DefaultTeam, StoreError> {
        let mut tx = self.db.begin().await?;
        // Serialises concurrent calls for one user; different users do not wait for each other.
        // `disabled` is read under the lock, so that a disable committed meanwhile is seen.
        let found = query("SELECT disabled FROM users WHERE id = $1 FOR UPDATE")
            .bind(user.as_uuid())
            .fetch_optional(&mut tx)
            .await?;
        let Some(found) = found else {
            tx.rollback().await?;
            return Ok(DefaultTeam::NoUser);
        };
        if found.flag("disabled")? {
            tx.rollback().await?;
            return Ok(DefaultTeam::UserDisabled);
        }
        let existing = query(concat!(
            "SELECT ",
            team_columns!(),
            " FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = $1 AND m.is_default"
        ))
        .bind(user.as_uuid())
        .fetch_optional(&mut tx)
        .await?;
        if let Some(row) = existing {
            tx.rollback().await?;
            return Ok(DefaultTeam::Found(rows::team(&row)?));
        }
        let created = insert_default_team(&mut tx, user, team, now).await?;
        // A default team made after the user's first (which `user.created` carries): announced
        // like any other membership, so that a consumer learns of the team.
        let payload = events::member_changed(created.id, user, Role::Owner, None);
        insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_ADDED, payload), now).await?;
        // Other instances may have the user cached without a team.
        log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        tx.commit().await?;
        Ok(DefaultTeam::Created(created))
    }

    async fn touch_identity(&self, identity: IdentityId, now: DateTime<Utc>) -> Result<(), StoreError> {
        query("UPDATE identities SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2")
            .bind(identity.as_uuid())
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    async fn touch_identities(&self, seen: &[(IdentityId, DateTime<Utc>)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        last_seen::touch(&self.db, Touched::Identities, seen, IdentityId::as_uuid).await
    }

    async fn get_user(&self, user: UserId) -> Result<Option<User>, StoreError> {
        let row = query(concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = $1"))
            .bind(user.as_uuid())
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn user_profile(&self, user: UserId, from: ReadFrom) -> Result<Option<UserProfile>, StoreError> {
        self.db.read_from(from, move |pool| Box::pin(read_user_profile(pool, user))).await
    }

    async fn principal(
        &self,
        issuer: &Issuer,
        subject: &Subject,
        from: ReadFrom,
    ) -> Result<Option<Principal>, StoreError> {
        self.principals(&[(issuer.clone(), subject.clone())], from).await?.pop().unwrap_or(Ok(None))
    }

    async fn principals(&self, keys: &[(Issuer, Subject)], from: ReadFrom) -> Result<Vec<PrincipalRead>, StoreError> {
        // Each key once: a key listed twice in one statement would join its rows twice.
        let mut seen = HashSet::new();
        let distinct: Vec<&(Issuer, Subject)> = keys.iter().filter(|key| seen.insert(*key)).collect();
        let mut found = HashMap::with_capacity(distinct.len());
        for chunk in distinct.chunks(PRINCIPALS_PER_READ) {
            let mut read = query(principals_sql(chunk.len()));
            for (issuer, subject) in chunk {
                read = read.bind(issuer.as_str()).bind(subject.as_str());
            }
            // The statement is padded to a power of two with pairs that match nothing.
            for _ in chunk.len()..chunk.len().next_power_of_two() {
                read = read.bind(None::<&str>).bind(None::<&str>);
            }
            let rows = self.db.fetch_all_from(from, &read).await?;
            found.extend(chunk.iter().copied().zip(principals_by_key(chunk, &rows)?));
        }
        Ok(keys
            .iter()
            .map(|key| match found.get(key) {
                Some(Ok(principal)) => Ok(principal.clone()),
                Some(Err(corrupt)) => Err(StoreError::Corrupt(corrupt.clone())),
                None => Ok(None),
            })
            .collect())
    }

    async fn update_user(
        &self,
        user: UserId,
        change: &UserChange,
        now: DateTime<Utc>,
    ) -> Result<UserUpdateOutcome, StoreError> {
        retrying_conflicts(|| self.update_user_once(user, change, now)).await
    }

    async fn find_team(&self, team: &TeamRef) -> Result<Option<Team>, StoreError> {
        let read = match team {
            TeamRef::Id(id) => {
                query(concat!("SELECT ", team_columns!(), " FROM teams t WHERE t.id = $1")).bind(id.as_uuid())
            }
            TeamRef::Slug(slug) => {
                query(concat!("SELECT ", team_columns!(), " FROM teams t WHERE t.slug = $1")).bind(slug.as_str())
            }
        };
        let row = read.fetch_optional(self.db.reader()).await?;
        row.as_ref().map(rows::team).transpose()
    }

    async fn claim_domain(&self, claim: &DomainClaim, keep_verified: bool) -> Result<ClaimOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // The team's row first, shared: a deletion of the team waits, or came first (then the
        // claim is refused as such, not by a foreign-key error).
        let team = query("SELECT 1 AS one FROM teams WHERE id = $1 FOR KEY SHARE")
            .bind(claim.team_id.as_uuid())
            .fetch_optional(&mut tx)
            .await?;
        if team.is_none() {
            tx.rollback().await?;
            return Ok(ClaimOutcome::TeamGone);
        }
        let row = query(
            "INSERT INTO team_domains (domain, team_id, issuer, verified, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (domain) DO UPDATE
               SET issuer = excluded.issuer,
                   verified = CASE WHEN $6 THEN team_domains.verified ELSE excluded.verified END,
                   updated_at = CASE
                       WHEN team_domains.issuer = excluded.issuer
                        AND ($6 OR team_domains.verified = excluded.verified)
                       THEN team_domains.updated_at ELSE excluded.updated_at END
               WHERE team_domains.team_id = excluded.team_id
             RETURNING created_at, updated_at, verified",
        )
        .bind(claim.domain.as_str())
        .bind(claim.team_id.as_uuid())
        .bind(claim.issuer.as_str())
        .bind(claim.verified)
        .bind(claim.updated_at)
        .bind(keep_verified)
        .fetch_optional(&mut tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Ok(ClaimOutcome::ClaimedByAnotherTeam);
        };
        let (created_at, updated_at) = (row.time("created_at")?, row.time("updated_at")?);
        let stored = DomainClaim { created_at, updated_at, verified: row.flag("verified")?, ..claim.clone() };
        Ok(if created_at == claim.updated_at {
            ClaimOutcome::Created(stored)
        } else if updated_at == claim.updated_at {
            ClaimOutcome::Updated(stored)
        } else {
            ClaimOutcome::Unchanged(stored)
        })
    }

    async fn team_domains(&self, team: TeamId) -> Result<Vec<DomainClaim>, StoreError> {
        let mut claims = query(concat!("SELECT ", domain_columns!(), " FROM team_domains d WHERE d.team_id = $1"))
            .bind(team.as_uuid())
            .fetch_all(self.db.reader())
            .await?
            .iter()
            .map(rows::domain_claim)
            .collect::<Result<Vec<_>, _>>()?;
        // Sorted here, by bytes: a database's collation may order text otherwise.
        claims.sort_unstable_by(|a, b| a.domain.as_str().cmp(b.domain.as_str()));
        Ok(claims)
    }

    async fn release_domain(&self, team: TeamId, domain: &DomainName) -> Result<bool, StoreError> {
        let deleted = query("DELETE FROM team_domains WHERE team_id = $1 AND domain = $2")
            .bind(team.as_uuid())
            .bind(domain.as_str())
            .execute(self.db.writer())
            .await?;
        Ok(deleted > 0)
    }

    async fn domain_claim(&self, domain: &DomainName, from: ReadFrom) -> Result<Option<DomainClaim>, StoreError> {
        let read = query(concat!("SELECT ", domain_columns!(), " FROM team_domains d WHERE d.domain = $1"))
            .bind(domain.as_str());
        let row = self.db.fetch_optional_from(from, &read).await?;
        row.as_ref().map(rows::domain_claim).transpose()
    }

    async fn insert_login_state(&self, state: &LoginState) -> Result<(), StoreError> {
        query(
            "INSERT INTO login_states
               (state_hash, provider, pkce_verifier, nonce, secret_salt, return_to, link_user_id, profile_id,
                profile_version, allow_account_change, created_at, expires_at, fresh_login)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&state.state_hash[..])
        .bind(&state.provider)
        // The columns of the values themselves, which an earlier release filled, are left empty
        // (they are NOT NULL).
        .bind("")
        .bind("")
        .bind(state.salt.as_ref().map(|salt| &salt[..]))
        .bind(&state.return_to)
        .bind(state.link_user.map(|u| u.as_uuid()))
        .bind(state.profile.map(|p| p.as_uuid()))
        .bind(state.profile_version)
        .bind(state.allow_account_change)
        .bind(state.created_at)
        .bind(state.expires_at)
        .bind(state.fresh_login)
        .execute(self.db.writer())
        .await
        .map_err(|e| e.or_gone("the user or profile the flow is for"))?;
        Ok(())
    }

    async fn take_login_state(
        &self,
        state_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<LoginState>, StoreError> {
        let row = query(
            "DELETE FROM login_states WHERE state_hash = $1
             RETURNING provider, secret_salt, return_to, link_user_id, profile_id,
                       profile_version, allow_account_change, created_at, expires_at, fresh_login",
        )
        .bind(&state_hash[..])
        .fetch_optional(self.db.writer())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state = LoginState {
            state_hash: *state_hash,
            provider: row.text("provider")?,
            salt: row.opt_bytes("secret_salt")?.as_deref().map(rows::hash32).transpose()?,
            return_to: row.text("return_to")?,
            link_user: row.opt_uuid("link_user_id")?.map(UserId::from_uuid),
            profile: row.opt_uuid("profile_id")?.map(ProfileId::from_uuid),
            profile_version: row.opt_int("profile_version")?,
            allow_account_change: row.flag("allow_account_change")?,
            created_at: row.time("created_at")?,
            expires_at: row.time("expires_at")?,
            fresh_login: row.flag("fresh_login")?,
        };
        Ok((state.expires_at > now).then_some(state))
    }

    async fn start_session(
        &self,
        session: &NewSession,
        replaces: Option<&[u8; 32]>,
        audit: &[super::NewAuditEvent],
    ) -> Result<SessionStart, StoreError> {
        // The user's row is share-locked, as by `start_session_of_identity`: a user being disabled
        // meanwhile is waited for and read again (disabled: nothing written). The foreign key
        // alone would not wait (the disabling takes no lock its check conflicts with).
        fn enabled(user: &str) -> String {
            format!("FROM users u WHERE u.id = {user} AND NOT u.disabled FOR SHARE OF u")
        }
        static SESSION: LazyLock<String> = LazyLock::new(|| {
            format!(
                "INSERT INTO sessions (token_hash, user_id, identity_id, created_at, last_seen_at, expires_at, device,
                                       authenticated_at)
                 SELECT $1, u.id, $3, $4, $4, $5, $6, $7 {} RETURNING user_id",
                enabled("$2")
            )
        });
        // One audit row written by the same rule, in the same statement (PostgreSQL) or
        // transaction (SQLite): both rows or neither.
        static AUDIT: LazyLock<String> = LazyLock::new(|| {
            let columns = super::audit::COLUMNS;
            let values: Vec<String> = (1..=columns).map(|n| format!("${n}")).collect();
            let user = format!("${}", columns + 1);
            format!(
                "INSERT INTO audit_events {} SELECT {} {}",
                super::audit::COLUMNS_SQL,
                values.join(", "),
                enabled(&user)
            )
        });
        let insert = query(SESSION.as_str())
            .bind(&session.token_hash[..])
            .bind(session.user_id.as_uuid())
            .bind(session.identity_id.map(|i| i.as_uuid()))
            .bind(session.now)
            .bind(session.expires_at)
            .bind(session.device.as_deref())
            .bind(session.authenticated_at);
        // The identity may have gone meanwhile (unlinked while a sign-in with it completes): the
        // foreign key refuses the session, which is said as such.
        let gone = |e: StoreError| e.or_gone("the session's user or identity");
        let started = |rows: usize| match rows {
            0 => SessionStart::NoUser,
            _ => SessionStart::Started { replaced: false },
        };
        // Without a session to end, the writes need no reads: one round trip on PostgreSQL.
        if replaces.is_none() && audit.len() <= 1 {
            let mut writes = Vec::with_capacity(2);
            if let Some(event) = audit.first() {
                writes.push(super::audit::bind(query(AUDIT.as_str()), event).bind(session.user_id.as_uuid()));
            }
            writes.push(insert);
            return Ok(started(self.db.fetch_together(writes).await.map_err(gone)?.len()));
        }
        let mut tx = self.db.begin().await?;
        if insert.fetch_optional(&mut tx).await.map_err(gone)?.is_none() {
            tx.rollback().await?;
            return Ok(SessionStart::NoUser);
        }
        super::audit::insert(&mut tx, audit).await?;
        let replaced = match replaces {
            Some(old) => end_session_in(&mut tx, old, SessionEnd::Replaced, session.now).await?,
            None => false,
        };
        tx.commit().await?;
        Ok(SessionStart::Started { replaced })
    }

    async fn start_session_of_identity(
        &self,
        session: &SessionOfIdentity,
        audit: &super::NewAuditEvent,
    ) -> Result<Option<IdentitySession>, StoreError> {
        // The identity and its user are found by both writes alike, on one snapshot (PostgreSQL's
        // one statement) or in one write transaction (SQLite): both write a row or neither does.
        // The user's row is share-locked: a user being disabled meanwhile is waited for and read
        // again (disabled: nothing written), so that no session outlives the disabling.
        const FOUND: &str = "FROM identities i JOIN users u ON u.id = i.user_id
                             WHERE i.issuer = $1 AND i.subject = $2 AND NOT u.disabled FOR SHARE OF u";
        fn audit_sql(backend: Backend) -> String {
            let user = uuid_text_sql(backend, "i.user_id");
            let details = json_set_sql(backend, "$13", "identity_id", &uuid_text_sql(backend, "i.id"));
            format!(
                "INSERT INTO audit_events {}
                 SELECT $3, $4, COALESCE($5, {user}), $6, $7, COALESCE($8, 'user'), COALESCE($9, {user}), $10, $11,
                        $12, {details} {FOUND}",
                super::audit::COLUMNS_SQL
            )
        }
        static AUDIT: [LazyLock<String>; 2] =
            [LazyLock::new(|| audit_sql(Backend::Postgres)), LazyLock::new(|| audit_sql(Backend::Sqlite))];
        static SESSION: LazyLock<String> = LazyLock::new(|| {
            format!(
                "INSERT INTO sessions (token_hash, user_id, identity_id, created_at, last_seen_at, expires_at, device,
                                       authenticated_at)
                 SELECT $3, i.user_id, i.id, $4, $4, $5, $6, $7 {FOUND}
                 RETURNING user_id, identity_id, EXISTS (
                     SELECT 1 FROM memberships m WHERE m.user_id = sessions.user_id AND m.is_default
                 ) AS has_default_team"
            )
        });
        let audit_sql: &'static str = match self.db.backend() {
            Backend::Postgres => AUDIT[0].as_str(),
            Backend::Sqlite => AUDIT[1].as_str(),
        };
        let audit =
            super::audit::bind(query(audit_sql).bind(session.issuer.as_str()).bind(session.subject.as_str()), audit);
        let insert = query(SESSION.as_str())
            .bind(session.issuer.as_str())
            .bind(session.subject.as_str())
            .bind(&session.token_hash[..])
            .bind(session.now)
            .bind(session.expires_at)
            .bind(session.device.as_deref())
            .bind(session.authenticated_at);
        // As for `start_session`: the identity unlinked (or the user deleted) after the statement
        // found it is refused by the foreign key, and said as such.
        let rows = self
            .db
            .fetch_together(vec![audit, insert])
            .await
            .map_err(|e| e.or_gone("the session's user or identity"))?;
        rows.first()
            .map(|row| {
                Ok(IdentitySession {
                    user: UserId::from_uuid(row.uuid("user_id")?),
                    identity: IdentityId::from_uuid(row.uuid("identity_id")?),
                    has_default_team: row.flag("has_default_team")?,
                })
            })
            .transpose()
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let row = query(
            "SELECT s.user_id, s.identity_id, s.created_at, s.authenticated_at, s.last_seen_at, s.expires_at, u.disabled
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(&token_hash[..])
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| {
            Ok(SessionRecord {
                user_id: UserId::from_uuid(row.uuid("user_id")?),
                identity_id: row.opt_uuid("identity_id")?.map(IdentityId::from_uuid),
                created_at: row.time("created_at")?,
                authenticated_at: row.opt_time("authenticated_at")?,
                last_seen_at: row.time("last_seen_at")?,
                expires_at: row.time("expires_at")?,
                user_disabled: row.flag("disabled")?,
            })
        })
        .transpose()
    }

    async fn session_profile(&self, token_hash: &[u8; 32]) -> Result<Option<(SessionRecord, UserProfile)>, StoreError> {
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(
                format!(
                    "SELECT s.identity_id AS session_identity_id, s.created_at AS session_created_at,
                            s.authenticated_at AS session_authenticated_at, s.last_seen_at AS session_last_seen_at,
                            s.expires_at AS session_expires_at, {}
                     FROM sessions s JOIN users u ON u.id = s.user_id {PROFILE_JOINS}
                     WHERE s.token_hash = $1",
                    profile_columns_of_user!()
                )
                .into_boxed_str(),
            )
        });
        let rows = query(*SQL).bind(&token_hash[..]).fetch_all(self.db.reader()).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let session = SessionRecord {
            user_id: UserId::from_uuid(first.uuid("user_id")?),
            identity_id: first.opt_uuid("session_identity_id")?.map(IdentityId::from_uuid),
            created_at: first.time("session_created_at")?,
            authenticated_at: first.opt_time("session_authenticated_at")?,
            last_seen_at: first.time("session_last_seen_at")?,
            expires_at: first.time("session_expires_at")?,
            user_disabled: first.flag("user_disabled")?,
        };
        Ok(fold_profile(&rows)?.map(|profile| (session, profile)))
    }

    async fn touch_session(&self, token_hash: &[u8; 32], now: DateTime<Utc>) -> Result<(), StoreError> {
        query("UPDATE sessions SET last_seen_at = $2 WHERE token_hash = $1 AND last_seen_at < $2")
            .bind(&token_hash[..])
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    async fn touch_sessions(&self, seen: &[([u8; 32], DateTime<Utc>)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        last_seen::touch(&self.db, Touched::Sessions, seen, |hash: &[u8; 32]| &hash[..]).await
    }

    async fn delete_session(&self, token_hash: &[u8; 32], reason: SessionEnd) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        if !end_session_in(&mut tx, token_hash, reason, crate::domain::now()).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let states = query(
            "DELETE FROM login_states WHERE state_hash IN
               (SELECT state_hash FROM login_states WHERE expires_at <= $1 LIMIT $2)
             AND expires_at <= $1",
        )
        .bind(now);
        let sessions = query(
            "DELETE FROM sessions WHERE token_hash IN
               (SELECT token_hash FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2 LIMIT $3)
             AND (expires_at <= $1 OR last_seen_at < $2)",
        )
        .bind(now)
        .bind(idle_before);
        let links = query(
            "DELETE FROM connect_tokens WHERE token_hash IN
               (SELECT token_hash FROM connect_tokens WHERE expires_at <= $1 LIMIT $2)
             AND expires_at <= $1",
        )
        .bind(now);
        let mut deleted = 0;
        for delete in [states, sessions, links] {
            deleted += self.db.delete_in_batches(delete).await?;
        }
        Ok(deleted)
    }

    async fn link_identity(&self, user: UserId, link: &NewLink) -> Result<LinkOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // A link decided on the address: under the lock of first sign-ins with it (see
        // `create_account`), the user must still hold it, verified, and be enabled — an admin may
        // have changed the address (which unverifies it) or disabled the user since.
        if let Some(email) = &link.by_email {
            exclusive(&mut tx, email_lock(email)).await?;
            let holds = query(
                "SELECT 1 AS one FROM users
                 WHERE id = $1 AND email_key = $2 AND email_verified AND NOT disabled FOR SHARE",
            )
            .bind(user.as_uuid())
            .bind(email.key())
            .fetch_optional(&mut tx)
            .await?;
            // Nor may another account have been given the address, verified, meanwhile (an
            // admin's change): the decision would then ask for a link.
            let shared =
                query("SELECT 1 AS one FROM users WHERE email_key = $1 AND email_verified AND id <> $2 LIMIT 1")
                    .bind(email.key())
                    .bind(user.as_uuid())
                    .fetch_optional(&mut tx)
                    .await?;
            if holds.is_none() || shared.is_some() {
                tx.rollback().await?;
                return Ok(LinkOutcome::HolderChanged);
            }
        }
        let inserted = query(
            "INSERT INTO identities
               (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
             ON CONFLICT (issuer, subject) DO NOTHING RETURNING id",
        )
        .bind(link.identity_id.as_uuid())
        .bind(user.as_uuid())
        .bind(link.issuer.as_str())
        .bind(link.subject.as_str())
        .bind(&link.provider)
        .bind(link.email.as_ref().map(Email::as_str))
        .bind(link.email_verified)
        .bind(link.now)
        .fetch_optional(&mut tx)
        .await
        // The user deleted meanwhile (an admin's delete held their row): not an internal error.
        .map_err(|e| e.or_gone("the user"))?;
        if inserted.is_some() {
            insert_identity_event(
                &mut tx,
                IdentityEvent {
                    user,
                    identity: link.identity_id,
                    action: "link",
                    provider: &link.provider,
                    issuer: &link.issuer,
                    subject: &link.subject,
                    now: link.now,
                },
            )
            .await?;
            let identity = identity_of(&mut tx, link.identity_id, user)
                .await?
                .ok_or(StoreError::Conflict { what: "identity vanished while linking" })?;
            let event = NewEvent::new(events::IDENTITY_LINKED, events::identity_changed(&identity));
            insert_event(&mut tx, &event, link.now).await?;
            log_changes(&mut tx, &[CacheChange::User(user)], link.now).await?;
            if let Some(row) = &link.audit {
                super::audit::insert(&mut tx, std::slice::from_ref(row)).await?;
            }
            tx.commit().await?;
            return Ok(LinkOutcome::Linked(identity));
        }
        let existing =
            query(concat!("SELECT ", identity_columns!(), " FROM identities i WHERE i.issuer = $1 AND i.subject = $2"))
                .bind(link.issuer.as_str())
                .bind(link.subject.as_str())
                .fetch_optional(&mut tx)
                .await?;
        tx.rollback().await?;
        // Unlinked by its owner between the insert and this read (PostgreSQL reads each
        // statement afresh): changed meanwhile, which a second try settles, not an internal error.
        let Some(existing) = existing else { return Err(StoreError::Gone { what: "the identity" }) };
        let identity = rows::identity(&existing)?;
        Ok(if identity.user_id == user {
            LinkOutcome::AlreadyLinked(identity)
        } else {
            LinkOutcome::LinkedToAnotherUser
        })
    }

    async fn unlink_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        sign_in: &[Issuer],
        now: DateTime<Utc>,
        audit: Option<&super::NewAuditEvent>,
    ) -> Result<UnlinkOutcome, StoreError> {
        retrying_conflicts(|| self.unlink_identity_once(user, identity, sign_in, now, audit)).await
    }

    async fn set_primary_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        now: DateTime<Utc>,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.db.begin().await?;
        // The user's row lock first, as an unlink takes it: an identity being unlinked is then
        // either still there or gone when it is looked up, never gone by the time it is set.
        let chosen = query("SELECT primary_identity_id FROM users WHERE id = $1 FOR UPDATE")
            .bind(user.as_uuid())
            .fetch_optional(&mut tx)
            .await?
            .map(|row| row.opt_uuid("primary_identity_id"))
            .transpose()?
            .flatten();
        let Some(found) = identity_of(&mut tx, identity, user).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        // Chosen already: nothing to write, log or purge (a loop of such calls costs nothing).
        if chosen == Some(identity.as_uuid()) {
            tx.rollback().await?;
            return Ok(Some(false));
        }
        query("UPDATE users SET primary_identity_id = $2, updated_at = $3 WHERE id = $1")
            .bind(user.as_uuid())
            .bind(identity.as_uuid())
            .bind(now)
            .execute(&mut tx)
            .await?;
        // Profiles with the old primary identity may be cached (sessions) here and elsewhere.
        log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        insert_identity_event(
            &mut tx,
            IdentityEvent {
                user,
                identity,
                action: "primary",
                provider: &found.provider,
                issuer: &found.issuer,
                subject: &found.subject,
                now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(true))
    }

    async fn users_with_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        query(concat!("SELECT ", user_columns!(), " FROM users u WHERE u.email_key = $1 ORDER BY u.id"))
            .bind(email.key())
            .fetch_all(self.db.reader())
            .await?
            .iter()
            .map(rows::user)
            .collect()
    }

    async fn put_identity_tokens(&self, identity: IdentityId, tokens: &EncryptedTokens) -> Result<(), StoreError> {
        query(
            "INSERT INTO identity_tokens (identity_id, access_token, refresh_token, expires_at, scopes, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (identity_id) DO UPDATE SET access_token = excluded.access_token,
               refresh_token = COALESCE(excluded.refresh_token, identity_tokens.refresh_token),
               expires_at = excluded.expires_at,
               scopes = excluded.scopes, updated_at = excluded.updated_at",
        )
        .bind(identity.as_uuid())
        .bind(&tokens.access_token)
        .bind(tokens.refresh_token.as_deref())
        .bind(tokens.expires_at)
        .bind(&tokens.scopes)
        .bind(tokens.updated_at)
        .execute(self.db.writer())
        .await
        .map_err(|e| e.or_gone("the identity"))?;
        Ok(())
    }

    async fn identity_tokens(&self, identity: IdentityId) -> Result<Option<EncryptedTokens>, StoreError> {
        let row = query(
            "SELECT access_token, refresh_token, expires_at, scopes, updated_at FROM identity_tokens WHERE identity_id = $1",
        )
        .bind(identity.as_uuid())
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| {
            Ok(EncryptedTokens {
                access_token: row.bytes("access_token")?,
                refresh_token: row.opt_bytes("refresh_token")?,
                expires_at: row.opt_time("expires_at")?,
                scopes: row.text("scopes")?,
                updated_at: row.time("updated_at")?,
            })
        })
        .transpose()
    }

    async fn secrets_page(
        &self,
        kind: SecretKind,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let read = match kind {
            SecretKind::IdentityTokens => query(
                "SELECT identity_id AS row_id, access_token, refresh_token FROM identity_tokens
                 WHERE identity_id > $1 ORDER BY identity_id LIMIT $2",
            ),
            SecretKind::AuthProfiles => query(
                "SELECT id AS row_id, access_token, refresh_token FROM auth_profiles
                 WHERE id > $1 AND access_token IS NOT NULL ORDER BY id LIMIT $2",
            ),
            SecretKind::WebhookEndpoints => query(
                "SELECT id AS row_id, secret, previous_secret FROM webhook_endpoints
                 WHERE id > $1 ORDER BY id LIMIT $2",
            ),
            SecretKind::ProfileCredentials => query(
                "SELECT profile_id AS row_id, credential FROM profile_credentials
                 WHERE profile_id > $1 ORDER BY profile_id LIMIT $2",
            ),
        };
        // The nil id sorts before every real one: the first page, with a condition the primary-key
        // index serves (an `IS NULL OR` form would scan from the start on every page).
        let after = after.unwrap_or(uuid::Uuid::nil());
        let rows = read.bind(after).bind(limit.max(0)).fetch_all(self.db.reader()).await?;
        let mut secrets = Vec::with_capacity(rows.len() * 2);
        for row in &rows {
            let row_id = row.uuid("row_id")?;
            if kind == SecretKind::WebhookEndpoints {
                push_secret(&mut secrets, row, kind, row_id, "secret")?;
                push_secret(&mut secrets, row, kind, row_id, "previous_secret")?;
                continue;
            }
            if kind == SecretKind::ProfileCredentials {
                push_secret(&mut secrets, row, kind, row_id, "credential")?;
                continue;
            }
            push_secret(&mut secrets, row, kind, row_id, "access_token")?;
            push_secret(&mut secrets, row, kind, row_id, "refresh_token")?;
        }
        Ok(secrets)
    }

    async fn replace_secret(&self, secret: &StoredSecret, new: &[u8]) -> Result<bool, StoreError> {
        let sql = match (secret.kind, secret.column) {
            (SecretKind::IdentityTokens, "access_token") => {
                "UPDATE identity_tokens SET access_token = $3 WHERE identity_id = $1 AND access_token = $2"
            }
            (SecretKind::IdentityTokens, "refresh_token") => {
                "UPDATE identity_tokens SET refresh_token = $3 WHERE identity_id = $1 AND refresh_token = $2"
            }
            (SecretKind::AuthProfiles, "access_token") => {
                "UPDATE auth_profiles SET access_token = $3 WHERE id = $1 AND access_token = $2"
            }
            (SecretKind::AuthProfiles, "refresh_token") => {
                "UPDATE auth_profiles SET refresh_token = $3 WHERE id = $1 AND refresh_token = $2"
            }
            (SecretKind::WebhookEndpoints, "secret") => {
                "UPDATE webhook_endpoints SET secret = $3 WHERE id = $1 AND secret = $2"
            }
            (SecretKind::WebhookEndpoints, "previous_secret") => {
                "UPDATE webhook_endpoints SET previous_secret = $3 WHERE id = $1 AND previous_secret = $2"
            }
            (SecretKind::ProfileCredentials, "credential") => {
                "UPDATE profile_credentials SET credential = $3 WHERE profile_id = $1 AND credential = $2"
            }
            (_, column) => return Err(StoreError::Corrupt(format!("no encrypted column {column}"))),
        };
        let updated =
            query(sql).bind(secret.row_id).bind(&secret.ciphertext).bind(new).execute(self.db.writer()).await?;
        Ok(updated == 1)
    }

    async fn count_secrets(&self, kind: SecretKind) -> Result<i64, StoreError> {
        let sql = match kind {
            SecretKind::IdentityTokens => "SELECT count(*) AS n FROM identity_tokens",
            SecretKind::AuthProfiles => "SELECT count(*) AS n FROM auth_profiles WHERE access_token IS NOT NULL",
            SecretKind::WebhookEndpoints => "SELECT count(*) AS n FROM webhook_endpoints",
            SecretKind::ProfileCredentials => "SELECT count(*) AS n FROM profile_credentials",
        };
        query(sql).fetch_one(self.db.reader()).await?.int("n")
    }

    async fn team_with_role(&self, team: &TeamRef, user: UserId) -> Result<Option<(Team, Option<Role>)>, StoreError> {
        let read = match team {
            TeamRef::Id(id) => query(concat!(
                "SELECT ",
                team_columns!(),
                ", m.role AS role FROM teams t LEFT JOIN memberships m ON m.team_id = t.id AND m.user_id = $2
                  WHERE t.id = $1"
            ))
            .bind(id.as_uuid()),
            TeamRef::Slug(slug) => query(concat!(
                "SELECT ",
                team_columns!(),
                ", m.role AS role FROM teams t LEFT JOIN memberships m ON m.team_id = t.id AND m.user_id = $2
                  WHERE t.slug = $1"
            ))
            .bind(slug.as_str()),
        };
        let row = read.bind(user.as_uuid()).fetch_optional(self.db.reader()).await?;
        row.map(|row| Ok((rows::team(&row)?, row.opt_text("role")?.as_deref().map(decode_role).transpose()?)))
            .transpose()
    }

    async fn write_member(
        &self,
        team: TeamId,
        acting: Option<UserId>,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
        how: MemberWrite,
    ) -> Result<MemberOutcome, StoreError> {
        let mut tx = self.db.begin().await?;
        // The user, then the team: the order of a user's deletion (see `lock_user_key`). A join
        // (`MemberWrite::Join`) reads whether the user is disabled, under a lock that a disable waits
        // for: a disabled user joins no team, as on the provisioning path. A user not found is
        // said after the acting owner's right is checked: one who lost it meanwhile is told that,
        // as the check before would have, whoever they named.
        let mut user_found = true;
        if how == MemberWrite::Join {
            let row = query("SELECT disabled FROM users WHERE id = $1 FOR SHARE")
                .bind(user.as_uuid())
                .fetch_optional(&mut tx)
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(MemberOutcome::UserNotFound);
            };
            if row.flag("disabled")? {
                tx.rollback().await?;
                return Ok(MemberOutcome::Unchanged);
            }
        } else {
            user_found = lock_user_key(&mut tx, user).await?;
        }
        // Serialises membership changes of one team, so that two cannot remove the last two owners.
        if !lock_team(&mut tx, team).await? {
            tx.rollback().await?;
            return Ok(MemberOutcome::TeamNotFound);
        }
        if let Some(refusal) = acting_owner(&mut tx, team, acting).await? {
            tx.rollback().await?;
            return Ok(MemberOutcome::NotAllowed(refusal));
        }
        if !user_found {
            tx.rollback().await?;
            return Ok(MemberOutcome::UserNotFound);
        }
        if let Some(Standing { role: previous, sole_owner, .. }) = standing(&mut tx, team, user).await? {
            if how == MemberWrite::Join {
                tx.rollback().await?;
                return Ok(MemberOutcome::Unchanged);
            }
            if sole_owner && role != Role::Owner {
                tx.rollback().await?;
                return Ok(MemberOutcome::LastOwner);
            }
            if previous == role {
                tx.rollback().await?;
                return Ok(MemberOutcome::Unchanged);
            }
            query("UPDATE memberships SET role = $3 WHERE team_id = $1 AND user_id = $2")
                .bind(team.as_uuid())
                .bind(user.as_uuid())
                .bind(role.as_str())
                .execute(&mut tx)
                .await?;
            let payload = events::member_changed(team, user, role, Some(previous));
            insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_ROLE_CHANGED, payload), now).await?;
            log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
            tx.commit().await?;
            return Ok(MemberOutcome::Updated);
        }
        if how == MemberWrite::RoleOnly {
            tx.rollback().await?;
            return Ok(MemberOutcome::NotMember);
        }
        query(
            "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES ($1, $2, $3, FALSE, $4)",
        )
        .bind(team.as_uuid())
        .bind(user.as_uuid())
        .bind(role.as_str())
        .bind(now)
        .execute(&mut tx)
        .await?;
        let payload = events::member_changed(team, user, role, None);
        insert_event(&mut tx, &NewEvent::new(events::TEAM_MEMBER_ADDED, payload), now).await?;
        log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        tx.commit().await?;
        Ok(MemberOutcome::Added)
    }
    async fn remove_member(
        &self,
        team: TeamId,
        acting: Option<UserId>,
        user: UserId,
    ) -> Result<RemoveOutcome, StoreError> {
        // Crediting the member's team-wide profiles to an owner share-locks that owner's row
        // after the team's, the other order from a user's deletion: PostgreSQL may abort one of
        // the two, which is then run again.
        retrying_conflicts(|| self.remove_member_once(team, acting, user, false)).await
    }

    async fn leave_team(&self, team: TeamId, user: UserId) -> Result<RemoveOutcome, StoreError> {
        retrying_conflicts(|| self.remove_member_once(team, None, user, true)).await
    }

    async fn insert_profile(
        &self,
        profile: &AuthProfile,
        first: FirstWrite<'_>,
        max_live: u32,
    ) -> Result<ProfileInsert, StoreError> {
        retrying_conflicts(|| self.insert_profile_once(profile, first, max_live)).await
    }

    async fn pending_profile(&self, key: &PendingKey<'_>) -> Result<Option<AuthProfile>, StoreError> {
        let sql = match key.kind {
            ProfileKind::OauthAccount => {
                concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE ", pending_account!())
            }
            ProfileKind::OauthApp => {
                concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE ", pending_app!())
            }
            // Only connections through OAuth wait for their provider.
            _ => return Ok(None),
        };
        let row = bind_pending(query(sql), key).fetch_optional(self.db.reader()).await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn delete_expired_pending(
        &self,
        key: Option<&PendingKey<'_>>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let delete = match key {
            None => {
                return self
                    .db
                    .delete_in_batches(
                        query(
                            "DELETE FROM auth_profiles WHERE id IN
                               (SELECT id FROM auth_profiles
                                WHERE status = 'pending_auth' AND pending_expires_at <= $1 LIMIT $2)
                             AND status = 'pending_auth' AND pending_expires_at <= $1",
                        )
                        .bind(now),
                    )
                    .await;
            }
            Some(key) => {
                // The time after the key's values: `$5` after a maker, `$4` without.
                let sql = match key.kind {
                    ProfileKind::OauthAccount => {
                        concat!("DELETE FROM auth_profiles WHERE ", pending_account!(), " AND pending_expires_at <= $5")
                    }
                    ProfileKind::OauthApp => {
                        concat!("DELETE FROM auth_profiles WHERE ", pending_app!(), " AND pending_expires_at <= $4")
                    }
                    _ => return Ok(0),
                };
                bind_pending(query(sql), key).bind(now)
            }
        };
        delete.execute(self.db.writer()).await
    }

    async fn live_profile(&self, team: TeamId, named: &ProfileRef) -> Result<Option<AuthProfile>, StoreError> {
        // Live, and of the team: whichever way it is named.
        let read = match named {
            ProfileRef::Id(id) => query(concat!(
                "SELECT ",
                profile_columns!(),
                " FROM auth_profiles p WHERE p.team_id = $1 AND p.status <> 'revoked' AND p.id = $2"
            ))
            .bind(team.as_uuid())
            .bind(id.as_uuid()),
            ProfileRef::Slug(slug) => query(concat!(
                "SELECT ",
                profile_columns!(),
                " FROM auth_profiles p WHERE p.team_id = $1 AND p.status <> 'revoked' AND p.slug = $2"
            ))
            .bind(team.as_uuid())
            .bind(slug.as_str()),
        };
        let row = read.fetch_optional(self.db.reader()).await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn profile(&self, id: ProfileId) -> Result<Option<AuthProfile>, StoreError> {
        let row = query(concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE p.id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn account_in_use(
        &self,
        provider: &str,
        account: &str,
        except: Option<ProfileId>,
    ) -> Result<bool, StoreError> {
        // On a reader: a connection of the same account committing meanwhile may or may not be
        // seen, on SQLite now as on PostgreSQL (the one writer used to order this read after it).
        let row = query(ACCOUNT_IN_USE)
            .bind(provider)
            .bind(account)
            .bind(except.map_or(uuid::Uuid::nil(), |id| id.as_uuid()))
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.is_some())
    }

    async fn team_profiles(&self, team: TeamId, viewer: UserId) -> Result<Vec<AuthProfile>, StoreError> {
        query(concat!(
            "SELECT ",
            profile_columns!(),
            " FROM auth_profiles p WHERE p.team_id = $1 AND p.status <> 'revoked'
                AND (p.profile_kind <> 'oauth_account' OR p.created_by = $2)
              ORDER BY p.created_at, p.id"
        ))
        .bind(team.as_uuid())
        .bind(viewer.as_uuid())
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(rows::profile)
        .collect()
    }

    async fn profiles_made_by(&self, user: UserId) -> Result<Vec<AuthProfile>, StoreError> {
        query(PROFILES_MADE_BY)
            .bind(user.as_uuid())
            .fetch_all(self.db.reader())
            .await?
            .iter()
            .map(rows::profile)
            .collect()
    }

    async fn mint_connect_token(&self, token: &ConnectToken) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // Serialises the mints of one profile: at READ COMMITTED, a concurrent mint's delete would
        // not see this one's uncommitted token, and both links would stay alive. A profile deleted
        // (a sweep of expired pending ones) or revoked meanwhile gets no link.
        let found = query("SELECT 1 FROM auth_profiles WHERE id = $1 AND status <> 'revoked' FOR UPDATE")
            .bind(token.profile.as_uuid())
            .fetch_optional(&mut tx)
            .await?;
        if found.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        query("DELETE FROM connect_tokens WHERE profile_id = $1")
            .bind(token.profile.as_uuid())
            .execute(&mut tx)
            .await?;
        // A pending profile outlives its newest link, so that the janitor does not delete both.
        keep_pending(&mut tx, token.profile, token.expires_at).await?;
        insert_connect_token(&mut tx, token).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError> {
        let row = query(
            "SELECT profile_id, user_id, allow_account_change, created_at, expires_at FROM connect_tokens
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| rows::connect_token(&row, token_hash)).transpose()
    }

    async fn take_connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
        keep_pending_until: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError> {
        let mut tx = self.db.begin().await?;
        // The profile's row lock first, then the link, in the order mints and revocations take
        // them: the other order deadlocks against them on PostgreSQL.
        query(
            "SELECT 1 FROM auth_profiles
             WHERE id = (SELECT profile_id FROM connect_tokens WHERE token_hash = $1) FOR UPDATE",
        )
        .bind(&token_hash[..])
        .execute(&mut tx)
        .await?;
        let row = query(
            "DELETE FROM connect_tokens WHERE token_hash = $1
             RETURNING profile_id, user_id, allow_account_change, created_at, expires_at",
        )
        .bind(&token_hash[..])
        .fetch_optional(&mut tx)
        .await?;
        let token = row.map(|row| rows::connect_token(&row, token_hash)).transpose()?;
        let token = token.filter(|t| t.expires_at > now);
        if let Some(token) = &token {
            keep_pending(&mut tx, token.profile, keep_pending_until).await?;
        }
        tx.commit().await?;
        Ok(token)
    }

    async fn profile_secrets(&self, id: ProfileId) -> Result<Option<ProfileSecrets>, StoreError> {
        let row = query(
            "SELECT status, token_version, access_token, refresh_token, access_token_expires_at,
                    access_token_stored_at, refresh_lease_owner, refresh_lease_until, upstream_account_id
             FROM auth_profiles WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(rows::profile_secrets).transpose()
    }

    async fn activate_profile(
        &self,
        id: ProfileId,
        expected_version: i64,
        activation: &Activation,
    ) -> Result<Option<Activated>, StoreError> {
        let mut tx = self.db.begin().await?;
        let allowed = may_connect_in(&mut tx, id, activation.by).await?;
        // The row as it is, locked: what it held is what the activation replaces.
        let held = query(
            "SELECT status, token_version, access_token, refresh_token, access_token_expires_at,
                    access_token_stored_at, refresh_lease_owner, refresh_lease_until, upstream_account_id
             FROM auth_profiles WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut tx)
        .await?;
        let (before, held) = match held {
            Some(row) if allowed => (row.text("status")?, rows::profile_secrets(&row)?),
            _ => {
                tx.rollback().await?;
                return Ok(None);
            }
        };
        let updated = query(
            "UPDATE auth_profiles SET status = 'active', access_token = $3,
                    refresh_token = COALESCE($4, CASE WHEN upstream_account_id = $6 THEN refresh_token END),
                    access_token_expires_at = $5, access_token_stored_at = $8, upstream_account_id = $6,
                    granted_scopes = $7, pending_expires_at = NULL,
                    refresh_lease_owner = NULL, refresh_lease_until = NULL, version = version + 1,
                    token_version = token_version + 1, updated_at = $8
             WHERE id = $1 AND version = $2 AND status <> 'revoked'",
        )
        .bind(id.as_uuid())
        .bind(expected_version)
        .bind(&activation.access_token)
        .bind(activation.refresh_token.as_deref())
        .bind(activation.expires_at)
        .bind(&activation.upstream_account_id)
        .bind(activation.scopes.join(" "))
        .bind(activation.now)
        .execute(&mut tx)
        .await?;
        if updated != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let extra = [("previous_status", serde_json::Value::from(before.as_str()))];
        insert_profile_event(&mut tx, id, events::AUTH_PROFILE_CONNECTED, &extra, activation.now).await?;
        let request_id = activation.request_id.as_deref();
        record_profile_change(
            &mut tx,
            super::audit::AUTH_PROFILE_CONNECTED,
            activation.by,
            id,
            Some(&before),
            request_id,
        )
        .await?;
        tx.commit().await?;
        let another = held.upstream_account_id.as_ref().is_some_and(|held| *held != activation.upstream_account_id);
        Ok(Some(Activated { replaced: another.then_some(held) }))
    }

    async fn acquire_refresh_lease(
        &self,
        id: ProfileId,
        version: i64,
        lease: &RefreshLease,
    ) -> Result<bool, StoreError> {
        let updated = query(
            "UPDATE auth_profiles SET refresh_lease_owner = $3, refresh_lease_until = $4
             WHERE id = $1 AND token_version = $2 AND status = 'active'
               AND (refresh_lease_until IS NULL OR refresh_lease_until < $5)",
        )
        .bind(id.as_uuid())
        .bind(version)
        .bind(lease.owner)
        .bind(lease.until)
        .bind(lease.now)
        .execute(self.db.writer())
        .await?;
        Ok(updated == 1)
    }

    async fn complete_refresh(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        refreshed: &Refreshed,
    ) -> Result<bool, StoreError> {
        let updated = query(
            "UPDATE auth_profiles SET access_token = $3, refresh_token = COALESCE($4, refresh_token),
                    access_token_expires_at = $5, access_token_stored_at = $6,
                    refresh_lease_owner = NULL, refresh_lease_until = NULL,
                    token_version = token_version + 1, updated_at = $6, granted_scopes = COALESCE($7, granted_scopes)
             WHERE id = $1 AND refresh_lease_owner = $2",
        )
        .bind(id.as_uuid())
        .bind(owner)
        .bind(&refreshed.access_token)
        .bind(refreshed.refresh_token.as_deref())
        .bind(refreshed.expires_at)
        .bind(refreshed.now)
        .bind(refreshed.granted_scopes.as_ref().map(|scopes| scopes.join(" ")))
        .execute(self.db.writer())
        .await?;
        Ok(updated == 1)
    }

    async fn replace_spent_refresh_token(
        &self,
        id: ProfileId,
        spent: &[u8],
        new: &[u8],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let updated = query(
            "UPDATE auth_profiles SET refresh_token = $3, token_version = token_version + 1, updated_at = $4
             WHERE id = $1 AND refresh_token = $2 AND status <> 'revoked'",
        )
        .bind(id.as_uuid())
        .bind(spent)
        .bind(new)
        .bind(now)
        .execute(self.db.writer())
        .await?;
        Ok(updated == 1)
    }

    async fn release_refresh_lease(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        refused_at: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let release = "UPDATE auth_profiles SET refresh_lease_owner = NULL, refresh_lease_until = NULL
                       WHERE id = $1 AND refresh_lease_owner = $2";
        let Some(version) = refused_at else {
            query(release).bind(id.as_uuid()).bind(owner).execute(self.db.writer()).await?;
            return Ok(false);
        };
        let mut tx = self.db.begin().await?;
        let held = query(
            "SELECT status, token_version FROM auth_profiles WHERE id = $1 AND refresh_lease_owner = $2 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .bind(owner)
        .fetch_optional(&mut tx)
        .await?;
        let Some(held) = held else {
            tx.rollback().await?;
            return Ok(false);
        };
        if held.int("token_version")? != version {
            query(release).bind(id.as_uuid()).bind(owner).execute(&mut tx).await?;
            tx.commit().await?;
            return Ok(false);
        }
        query(
            "UPDATE auth_profiles SET refresh_lease_owner = NULL, refresh_lease_until = NULL,
                    status = 'needs_reauth', token_version = token_version + 1, updated_at = $2
             WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(now)
        .execute(&mut tx)
        .await?;
        if held.text("status")? == "active" {
            let extra = [("reason", ReauthReason::RefreshRefused.as_str().into())];
            insert_profile_event(&mut tx, id, events::AUTH_PROFILE_NEEDS_REAUTH, &extra, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_profile(
        &self,
        id: ProfileId,
        by: Option<UserId>,
        now: DateTime<Utc>,
        request_id: Option<&str>,
    ) -> Result<Revocation, StoreError> {
        let mut tx = self.db.begin().await?;
        // The team's row (shared) before the profile's, as every write that checks a right does.
        if let Some(by) = by
            && role_allowed_in(&mut tx, id, by, ProfileRight::Manage).await?.is_none()
        {
            tx.rollback().await?;
            let live = self.profile(id).await?.is_some_and(|p| p.status != crate::domain::ProfileStatus::Revoked);
            return Ok(if live { Revocation::Refused } else { Revocation::NotFound });
        }
        let row = query(
            "SELECT status, token_version, access_token, refresh_token, access_token_expires_at,
                    access_token_stored_at, refresh_lease_owner, refresh_lease_until, upstream_account_id
             FROM auth_profiles WHERE id = $1 AND status <> 'revoked' FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Revocation::NotFound);
        };
        let secrets = rows::profile_secrets(&row)?;
        revoke_locked_profile(&mut tx, id, &[], now).await?;
        if let Some(by) = by {
            record_profile_change(&mut tx, super::audit::AUTH_PROFILE_REVOKED, by, id, None, request_id).await?;
        }
        tx.commit().await?;
        Ok(Revocation::Revoked(secrets))
    }

    // --- OpenID Provider: grants, codes, refresh tokens, consents, held requests ---

    async fn insert_grant(&self, grant: &NewGrant, code: &NewCode) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // The user and the client first, before the consent (see `lock_user_and_client`).
        if !lock_user_and_client(&mut tx, grant.user_id, &grant.client_id).await? {
            return Ok(false);
        }
        if grant.consent_required {
            let consent = query("SELECT 1 AS one FROM oauth_consents WHERE user_id = $1 AND client_id = $2 FOR SHARE")
                .bind(grant.user_id.as_uuid())
                .bind(grant.client_id.as_str())
                .fetch_optional(&mut tx)
                .await?;
            if consent.is_none() {
                return Ok(false);
            }
        }
        query(
            "INSERT INTO oauth_grants (id, client_id, user_id, identity_id, session_hash, scope, resource, provider,
                                       auth_time, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(grant.id)
        .bind(grant.client_id.as_str())
        .bind(grant.user_id.as_uuid())
        .bind(grant.identity_id.map(|i| i.as_uuid()))
        .bind(grant.session_hash.as_ref().map(|h| &h[..]))
        .bind(grant.scope.as_str())
        .bind(grant.resource.as_deref())
        .bind(grant.provider.as_deref())
        .bind(grant.auth_time)
        .bind(grant.now)
        .bind(grant.expires_at)
        .execute(&mut tx)
        .await?;
        query(
            "INSERT INTO oauth_codes (code_hash, grant_id, redirect_uri, code_challenge, nonce, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&code.code_hash[..])
        .bind(grant.id)
        .bind(code.redirect_uri.as_str())
        .bind(code.code_challenge.as_deref())
        .bind(code.nonce.as_deref())
        .bind(code.expires_at)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn code_grant(
        &self,
        code_hash: &[u8; 32],
        at: GrantAt,
    ) -> Result<Option<(GrantRecord, CodeRecord)>, StoreError> {
        let row = query(grant_select!(
            ", c.redirect_uri, c.code_challenge, c.nonce, c.expires_at AS code_expires_at, c.used_at
             FROM oauth_codes c JOIN oauth_grants g ON g.id = c.grant_id JOIN users u ON u.id = g.user_id
             WHERE c.code_hash = $1"
        ))
        .bind(&code_hash[..])
        .bind(at.now)
        .bind(at.idle_before)
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| {
            let code = CodeRecord {
                redirect_uri: row.text("redirect_uri")?,
                code_challenge: row.opt_text("code_challenge")?,
                nonce: row.opt_text("nonce")?,
                expires_at: row.time("code_expires_at")?,
                used: row.opt_time("used_at")?.is_some(),
            };
            Ok((grant_record(&row)?, code))
        })
        .transpose()
    }

    async fn redeem_code(
        &self,
        code_hash: &[u8; 32],
        refresh_hash: Option<&[u8; 32]>,
        at: GrantAt,
        request_id: Option<&str>,
    ) -> Result<RedeemOutcome, StoreError> {
        let now = at.now;
        let mut tx = self.db.begin().await?;
        // A concurrent redeemer waits on the row, then finds it used.
        let used = query(
            "UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
             RETURNING grant_id",
        )
        .bind(&code_hash[..])
        .bind(now)
        .fetch_optional(&mut tx)
        .await?;
        if let Some(row) = used {
            let grant_id = row.uuid("grant_id")?;
            // The grant may have ended since the caller read it (a sign-out, a revocation).
            if !grant_active_in(&mut tx, grant_id, at).await? {
                tx.rollback().await?;
                return Ok(RedeemOutcome::Invalid);
            }
            if let Some(refresh) = refresh_hash {
                insert_refresh_token(&mut tx, refresh, grant_id, now).await?;
            }
            tx.commit().await?;
            return Ok(RedeemOutcome::Redeemed);
        }
        let replayed = query("SELECT grant_id FROM oauth_codes WHERE code_hash = $1 AND used_at IS NOT NULL")
            .bind(&code_hash[..])
            .fetch_optional(&mut tx)
            .await?;
        let Some(row) = replayed else {
            tx.rollback().await?;
            return Ok(RedeemOutcome::Invalid);
        };
        if !revoke_replayed_grant_in(&mut tx, row.uuid("grant_id")?, now, "code_replayed", request_id).await? {
            tx.rollback().await?;
            return Ok(RedeemOutcome::Invalid);
        }
        tx.commit().await?;
        Ok(RedeemOutcome::Replayed)
    }

    async fn refresh_grant(
        &self,
        token_hash: &[u8; 32],
        at: GrantAt,
    ) -> Result<Option<(GrantRecord, Option<DateTime<Utc>>)>, StoreError> {
        let row = query(grant_select!(
            ", t.used_at FROM oauth_refresh_tokens t JOIN oauth_grants g ON g.id = t.grant_id
             JOIN users u ON u.id = g.user_id WHERE t.token_hash = $1"
        ))
        .bind(&token_hash[..])
        .bind(at.now)
        .bind(at.idle_before)
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|row| Ok((grant_record(&row)?, row.opt_time("used_at")?))).transpose()
    }

    async fn rotate_refresh_token(
        &self,
        old: &[u8; 32],
        new: &[u8; 32],
        at: GrantAt,
        reusable_after: Option<DateTime<Utc>>,
        request_id: Option<&str>,
    ) -> Result<RotateOutcome, StoreError> {
        let now = at.now;
        let mut tx = self.db.begin().await?;
        // A NULL `reusable_after` compares to nothing: a used token is then never reusable.
        let used = query(
            "UPDATE oauth_refresh_tokens SET used_at = COALESCE(used_at, $2) \
             WHERE token_hash = $1 AND (used_at IS NULL OR used_at > $3) RETURNING grant_id",
        )
        .bind(&old[..])
        .bind(now)
        .bind(reusable_after)
        .fetch_optional(&mut tx)
        .await?;
        if let Some(row) = used {
            let grant_id = row.uuid("grant_id")?;
            if !grant_active_in(&mut tx, grant_id, at).await? {
                tx.rollback().await?;
                return Ok(RotateOutcome::Invalid);
            }
            insert_refresh_token(&mut tx, new, grant_id, now).await?;
            tx.commit().await?;
            return Ok(RotateOutcome::Rotated);
        }
        let reused = query("SELECT grant_id FROM oauth_refresh_tokens WHERE token_hash = $1")
            .bind(&old[..])
            .fetch_optional(&mut tx)
            .await?;
        let Some(row) = reused else {
            tx.rollback().await?;
            return Ok(RotateOutcome::Invalid);
        };
        if !revoke_replayed_grant_in(&mut tx, row.uuid("grant_id")?, now, "refresh_token_reused", request_id).await? {
            tx.rollback().await?;
            return Ok(RotateOutcome::Invalid);
        }
        tx.commit().await?;
        Ok(RotateOutcome::Reused)
    }

    async fn grant(&self, id: uuid::Uuid, at: GrantAt) -> Result<Option<GrantRecord>, StoreError> {
        let row = query(grant_select!(" FROM oauth_grants g JOIN users u ON u.id = g.user_id WHERE g.id = $1"))
            .bind(id)
            .bind(at.now)
            .bind(at.idle_before)
            .fetch_optional(self.db.reader())
            .await?;
        row.map(|row| grant_record(&row)).transpose()
    }

    async fn revoke_grant(&self, id: uuid::Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let updated = query("UPDATE oauth_grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(self.db.writer())
            .await?;
        Ok(updated == 1)
    }

    async fn consent(&self, user: UserId, client: &str) -> Result<Option<Consent>, StoreError> {
        let row =
            query("SELECT scope, resources, resource_scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
                .bind(user.as_uuid())
                .bind(client)
                .fetch_optional(self.db.reader())
                .await?;
        row.as_ref().map(consent_of).transpose()
    }

    async fn widen_consent(
        &self,
        user: UserId,
        client: &str,
        scopes: &[String],
        resource: Option<&str>,
        now: DateTime<Utc>,
        request_id: Option<&str>,
    ) -> Result<Option<Consent>, StoreError> {
        let mut tx = self.db.begin().await?;
        // A user or client deleted meanwhile leaves nothing to widen; one that is not stays until
        // this commits (see `lock_user_and_client`).
        if !lock_user_and_client(&mut tx, user, client).await? {
            return Ok(None);
        }
        // The row exists (a concurrent first approval waits here for the other to commit), then
        // is locked: approvals of one user and client are merged one after the other. A row that
        // was there, and that the user's "remove access" deleted in between, is made again.
        let mut locked = None;
        for _ in 0..2 {
            query(
                "INSERT INTO oauth_consents (user_id, client_id, scope, updated_at) VALUES ($1, $2, '', $3)
                 ON CONFLICT (user_id, client_id) DO NOTHING",
            )
            .bind(user.as_uuid())
            .bind(client)
            .bind(now)
            .execute(&mut tx)
            .await?;
            locked = query(
                "SELECT scope, resources, resource_scopes FROM oauth_consents
                 WHERE user_id = $1 AND client_id = $2 FOR UPDATE",
            )
            .bind(user.as_uuid())
            .bind(client)
            .fetch_optional(&mut tx)
            .await?;
            if locked.is_some() {
                break;
            }
        }
        let Some(row) = locked else {
            tx.rollback().await?;
            return Err(StoreError::Gone { what: "the consent" });
        };
        let mut consent = consent_of(&row)?;
        consent.widen(scopes, resource);
        // The unpaired list of migration 21 is left empty (see `consent_of`): a binary of before
        // migration 23, during a roll-out, finds no resource approved there and asks again.
        let paired: Vec<String> =
            consent.resources.iter().map(|(resource, scopes)| format!("{resource} {}", scopes.join(" "))).collect();
        query(
            "UPDATE oauth_consents SET scope = $3, resources = '', resource_scopes = $4, updated_at = $5
             WHERE user_id = $1 AND client_id = $2",
        )
        .bind(user.as_uuid())
        .bind(client)
        .bind(consent.scopes.join(" "))
        .bind(paired.join("\n"))
        .bind(now)
        .execute(&mut tx)
        .await?;
        // The approval, as given (what was granted before is in the earlier rows).
        let approved = super::NewAuditEvent::new(super::audit::ActorKind::User, super::audit::APP_AUTHORIZED)
            .actor(Some(user.to_string()), None)
            .target("client", client.to_owned())
            .details(serde_json::json!({ "scopes": scopes, "resource": resource }))
            .request(request_id.map(str::to_owned));
        super::audit::insert(&mut tx, std::slice::from_ref(&approved)).await?;
        tx.commit().await?;
        Ok(Some(consent))
    }

    async fn user_apps(&self, user: UserId, at: GrantAt) -> Result<Vec<UserApp>, StoreError> {
        let rows = query(concat!(
            "SELECT g.client_id, c.name AS client_name, c.first_party, g.scope, MIN(g.created_at) AS since,
                    MAX(CASE WHEN g.session_hash IS NULL THEN 1 ELSE 0 END) = 1 AS offline, TRUE AS granted,
                    '' AS resource_scopes
               FROM oauth_grants g JOIN clients c ON c.id = g.client_id JOIN users u ON u.id = g.user_id
              WHERE g.user_id = $1 AND ",
            grant_active!(),
            // A grant whose code was never redeemed gave the app nothing (an abandoned sign-in):
            // it is not an app with access. A redeemed code stays until its grant expires.
            " AND EXISTS (SELECT 1 FROM oauth_codes used WHERE used.grant_id = g.id AND used.used_at IS NOT NULL)
             GROUP BY g.client_id, c.name, c.first_party, g.scope
             UNION ALL
             SELECT oc.client_id, c.name, c.first_party, oc.scope, oc.updated_at, FALSE, FALSE, oc.resource_scopes
               FROM oauth_consents oc JOIN clients c ON c.id = oc.client_id
              WHERE oc.user_id = $1
             ORDER BY since"
        ))
        .bind(user.as_uuid())
        .bind(at.now)
        .bind(at.idle_before)
        .fetch_all(self.db.reader())
        .await?;
        let mut apps: Vec<UserApp> = Vec::new();
        for row in &rows {
            let client_id = row.text("client_id")?;
            let index = match apps.iter().position(|app| app.client_id == client_id) {
                Some(index) => index,
                None => {
                    apps.push(UserApp {
                        client_id,
                        client_name: row.text("client_name")?,
                        scopes: Vec::new(),
                        offline: false,
                        active: false,
                        first_party: row.flag("first_party")?,
                        since: row.time("since")?,
                    });
                    apps.len() - 1
                }
            };
            let app = &mut apps[index];
            row.text("scope")?.split_whitespace().for_each(|scope| add_once(&mut app.scopes, scope));
            // A consent's resource lines: the resource first, then the scopes approved with it.
            for line in row.text("resource_scopes")?.lines() {
                line.split_whitespace().skip(1).for_each(|scope| add_once(&mut app.scopes, scope));
            }
            app.offline |= row.flag("offline")?;
            app.active |= row.flag("granted")?;
            app.since = app.since.min(row.time("since")?);
        }
        apps.sort_by(|a, b| a.client_name.cmp(&b.client_name).then_with(|| a.client_id.cmp(&b.client_id)));
        Ok(apps)
    }

    async fn remove_app(
        &self,
        user: UserId,
        client: &str,
        now: DateTime<Utc>,
        audit: &super::NewAuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // The consent first: a grant being written holds it FOR SHARE, so this waits for that
        // grant to commit, and the UPDATE after it (a statement of its own, which sees what was
        // committed before it began) revokes that grant too.
        let forgotten = query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
            .bind(user.as_uuid())
            .bind(client)
            .execute(&mut tx)
            .await?;
        let revoked = query(
            "UPDATE oauth_grants SET revoked_at = $3 WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(client)
        .bind(now)
        .execute(&mut tx)
        .await?;
        let removed = revoked + forgotten > 0;
        if removed {
            super::audit::insert(&mut tx, std::slice::from_ref(audit)).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn insert_request(&self, request: &HeldRequest) -> Result<(), StoreError> {
        query(
            "INSERT INTO oauth_requests (id_hash, client_id, params, session_hash, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&request.id_hash[..])
        .bind(request.client_id.as_str())
        .bind(request.params.as_str())
        .bind(request.session_hash.as_ref().map(|h| &h[..]))
        .bind(request.expires_at)
        .execute(self.db.writer())
        .await
        .map_err(|e| e.or_gone("the app"))?;
        Ok(())
    }

    async fn take_request(
        &self,
        id_hash: &[u8; 32],
        by: HeldFor<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<HeldRequest>, StoreError> {
        let take = match by {
            HeldFor::Session(session) => query(
                "DELETE FROM oauth_requests WHERE id_hash = $1 AND session_hash = $2
                 RETURNING client_id, params, session_hash, expires_at",
            )
            .bind(&id_hash[..])
            .bind(&session[..]),
            HeldFor::Client(client) => query(
                "DELETE FROM oauth_requests WHERE id_hash = $1 AND session_hash IS NULL AND client_id = $2
                 RETURNING client_id, params, session_hash, expires_at",
            )
            .bind(&id_hash[..])
            .bind(client),
        };
        let row = take.fetch_optional(self.db.writer()).await?;
        live_held_request(row, id_hash, now)
    }

    async fn held_request(&self, id_hash: &[u8; 32], now: DateTime<Utc>) -> Result<Option<HeldRequest>, StoreError> {
        // A read: a reader connection on SQLite (not the one writer); the primary on PostgreSQL,
        // which has the request a moment after it was held.
        let row = query("SELECT client_id, params, session_hash, expires_at FROM oauth_requests WHERE id_hash = $1")
            .bind(&id_hash[..])
            .fetch_optional(self.db.reader())
            .await?;
        live_held_request(row, id_hash, now)
    }

    async fn delete_expired_grants(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for sql in [
            // A code that expired unused takes its grant with it (its one code: a sign-in
            // abandoned half-way issued nothing, and its grant would otherwise stay, read at every
            // account page, until the refresh lifetime ends).
            UNUSED_CODES_GRANTS,
            // The others re-check their row: one that changed while the DELETE waited for it
            // keeps what it now is.
            // An expired grant's codes and refresh tokens (one per rotation: a month of an
            // agent's refreshes is thousands) first, in batches of their own, so that the grant's
            // delete cascades to none of them in one long statement.
            "DELETE FROM oauth_refresh_tokens WHERE token_hash IN
               (SELECT t.token_hash FROM oauth_grants g JOIN oauth_refresh_tokens t ON t.grant_id = g.id
                WHERE g.expires_at <= $1 LIMIT $2)
             AND grant_id IN (SELECT id FROM oauth_grants WHERE expires_at <= $1)",
            "DELETE FROM oauth_codes WHERE code_hash IN
               (SELECT c.code_hash FROM oauth_grants g JOIN oauth_codes c ON c.grant_id = g.id
                WHERE g.expires_at <= $1 LIMIT $2)
             AND grant_id IN (SELECT id FROM oauth_grants WHERE expires_at <= $1)",
            "DELETE FROM oauth_grants WHERE id IN (SELECT id FROM oauth_grants WHERE expires_at <= $1 LIMIT $2)
             AND expires_at <= $1",
            "DELETE FROM oauth_requests WHERE id_hash IN
               (SELECT id_hash FROM oauth_requests WHERE expires_at <= $1 LIMIT $2)
             AND expires_at <= $1",
        ] {
            deleted += self.db.delete_in_batches(query(sql).bind(now)).await?;
        }
        Ok(deleted)
    }

    // ---- OpenID Provider: signing keys ------------------------------------------------------

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<bool, StoreError> {
        // The partial unique index on un-retired keys settles concurrent first keys: the second
        // insert waits for the first to commit, then does nothing.
        let mut tx = self.db.begin().await?;
        let inserted = insert_signing_key(key).fetch_optional(&mut tx).await?;
        if inserted.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        // Other instances re-read the keys now, not at their next refresh: this key signs at once.
        log_changes(&mut tx, &[CacheChange::SigningKeys], key.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn published_signing_keys(&self, now: DateTime<Utc>) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = query(concat!(
            "SELECT ",
            signing_key_columns!(),
            " FROM signing_keys k WHERE k.unpublish_at IS NULL OR k.unpublish_at > $1 ORDER BY k.created_at, k.kid"
        ))
        .bind(now)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(rows::signing_key).collect()
    }

    async fn rotate_signing_key(&self, retire: &Retirement<'_>, new: &SigningKeyRecord) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        // Compare-and-swap on the un-retired key: of two concurrent rotations, the second waits
        // for the first's row lock (PostgreSQL) or transaction (SQLite), then finds the key
        // retired and writes nothing.
        let retired = query(
            "UPDATE signing_keys SET retired_at = $3, unpublish_at = $4
             WHERE kid = $1 AND alg = $2 AND retired_at IS NULL",
        )
        .bind(retire.kid)
        .bind(new.alg.as_str())
        .bind(retire.retired_at)
        .bind(retire.unpublish_at)
        .execute(&mut tx)
        .await?;
        if retired != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // No key of the algorithm signs past its successor's start: a rotation made at once from
        // a key that had not begun to sign ends its predecessor's signing now too (that one stays
        // published as long as it was to be).
        query("UPDATE signing_keys SET retired_at = $2 WHERE alg = $1 AND retired_at > $2")
            .bind(new.alg.as_str())
            .bind(new.signs_from)
            .execute(&mut tx)
            .await?;
        if insert_signing_key(new).fetch_optional(&mut tx).await?.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        // The audit row commits with the rotation, or neither does.
        super::audit::insert(
            &mut tx,
            &[super::NewAuditEvent {
                at: new.created_at,
                actor_kind: super::ActorKind::System,
                actor_id: None,
                actor_name: Some("signing_keys".into()),
                action: "keys.rotated".into(),
                target_kind: Some("signing_key".into()),
                target_id: Some(new.kid.clone()),
                request_id: None,
                success: true,
                reason: None,
                details: Some(serde_json::json!({
                    "alg": new.alg.as_str(),
                    "previous_kid": retire.kid,
                    "signs_from": new.signs_from,
                    // The previous key retired now (`--now`, or a key no instance can sign with).
                    "at_once": new.signs_from <= new.created_at,
                })),
            }],
        )
        .await?;
        log_changes(&mut tx, &[CacheChange::SigningKeys], new.created_at).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn replace_signing_key_ciphertext(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let updated = query("UPDATE signing_keys SET private_key = $3 WHERE kid = $1 AND private_key = $2")
            .bind(kid)
            .bind(old)
            .bind(new)
            .execute(self.db.writer())
            .await?;
        Ok(updated == 1)
    }

    async fn all_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows =
            query(concat!("SELECT ", signing_key_columns!(), " FROM signing_keys k ORDER BY k.created_at, k.kid"))
                .fetch_all(self.db.reader())
                .await?;
        rows.iter().map(rows::signing_key).collect()
    }

    async fn forget_unpublished_private_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let forgotten: &[u8] = &[];
        Ok(query("UPDATE signing_keys SET private_key = $2 WHERE unpublish_at <= $1 AND private_key <> $2")
            .bind(now)
            .bind(forgotten)
            .execute(self.db.writer())
            .await?)
    }

    async fn close(&self) {
        self.db.close().await;
    }

    fn pool_stats(&self) -> Vec<PoolStats> {
        self.db.pool_stats()
    }

    async fn check_replica(&self) -> Result<ReplicaLag, StoreError> {
        self.db.check_replica().await
    }

    // ---- OpenID Provider: registered clients ----------------------------------------------------

    async fn insert_client(&self, client: &Client) -> Result<ClientInsert, StoreError> {
        let inserted = insert_client_query(client).fetch_optional(self.db.writer()).await?;
        Ok(if inserted.is_some() { ClientInsert::Inserted } else { ClientInsert::IdTaken })
    }

    async fn client(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
        let row = query(concat!("SELECT ", client_columns!(), " FROM clients c WHERE c.id = $1"))
            .bind(id.as_str())
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(rows::client).transpose()
    }

    async fn list_clients(&self, after: Option<&ClientId>, limit: i64) -> Result<Vec<Client>, StoreError> {
        // By bytes, whatever the cluster's locale (whose collation would ignore case and
        // punctuation), as every listing is ordered.
        let page = match after {
            None => {
                query(concat!("SELECT ", client_columns!(), " FROM clients c ORDER BY c.id COLLATE \"C\" LIMIT $1"))
                    .bind(limit)
            }
            Some(after) => query(concat!(
                "SELECT ",
                client_columns!(),
                " FROM clients c WHERE c.id COLLATE \"C\" > $1 ORDER BY c.id COLLATE \"C\" LIMIT $2"
            ))
            .bind(after.as_str())
            .bind(limit),
        };
        page.fetch_all(self.db.reader()).await?.iter().map(rows::client).collect()
    }

    async fn update_client(
        &self,
        client: &Client,
        expected_updated_at: DateTime<Utc>,
    ) -> Result<ClientUpdate, StoreError> {
        let mut tx = self.db.begin().await?;
        let updated = update_client_query(client, Some(expected_updated_at)).execute(&mut tx).await?;
        if updated == 1 {
            log_changes(&mut tx, &[CacheChange::Client(client.id.clone())], crate::domain::now()).await?;
            tx.commit().await?;
            return Ok(ClientUpdate::Updated);
        }
        tx.rollback().await?;
        let exists = query("SELECT 1 FROM clients WHERE id = $1")
            .bind(client.id.as_str())
            .fetch_optional(self.db.reader())
            .await?;
        Ok(if exists.is_some() { ClientUpdate::Changed } else { ClientUpdate::NotFound })
    }

    async fn delete_client(&self, id: &ClientId) -> Result<bool, StoreError> {
        self.clear_client_grants(id.as_str()).await?;
        // What the cascade still finds (grants written meanwhile) locks the client's grants, then
        // their codes and refresh tokens: the other
        // order from a code's redemption or a token's rotation (the row, then its grant for the
        // new token's foreign key), so PostgreSQL may end one of the two as a deadlock.
        retrying_conflicts(|| async {
            let mut tx = self.db.begin().await?;
            if query("DELETE FROM clients WHERE id = $1").bind(id.as_str()).execute(&mut tx).await? != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            log_changes(&mut tx, &[CacheChange::Client(id.clone())], crate::domain::now()).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn sync_config_clients(&self, clients: &[Client]) -> Result<ConfigClientSync, StoreError> {
        // A client re-created under its id cascades as a deletion does (see `delete_client`).
        retrying_conflicts(|| self.sync_config_clients_once(clients)).await
    }

    async fn use_client_assertion(
        &self,
        client: &ClientId,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // A concurrent insert of the same key waits for the first to commit, then sees a row that
        // has not expired: no row is returned, whichever instance asks.
        let used = query(
            "INSERT INTO client_assertions (client_id, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at
             WHERE client_assertions.expires_at <= $4
             RETURNING client_id",
        )
        .bind(client.as_str())
        .bind(jti)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(self.db.writer())
        .await
        .map_err(|e| e.or_gone("the app"))?;
        Ok(used.is_some())
    }

    async fn delete_expired_client_assertions(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let delete = query(
            // The condition again outside the subquery: a row reused (its expiry pushed on) while
            // this waited for its lock must stay.
            "DELETE FROM client_assertions WHERE (client_id, jti) IN
               (SELECT client_id, jti FROM client_assertions WHERE expires_at <= $1 LIMIT $2)
             AND expires_at <= $1",
        );
        self.db.delete_in_batches(delete.bind(now)).await
    }

    // ---- Pages: a user's sessions ---------------------------------------------------------------

    async fn user_sessions(
        &self,
        user: UserId,
        now: DateTime<Utc>,
        seen_after: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<UserSession>, StoreError> {
        let rows = query(
            "SELECT s.token_hash, i.provider, s.device, s.created_at, s.last_seen_at, s.expires_at
             FROM sessions s LEFT JOIN identities i ON i.id = s.identity_id AND i.user_id = s.user_id
             WHERE s.user_id = $1 AND s.expires_at > $2 AND s.last_seen_at > $3
             ORDER BY s.last_seen_at DESC, s.created_at DESC LIMIT $4",
        )
        .bind(user.as_uuid())
        .bind(now)
        .bind(seen_after)
        .bind(limit)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UserSession {
                    token_hash: rows::hash32(&row.bytes("token_hash")?)?,
                    provider: row.opt_text("provider")?,
                    device: row.opt_text("device")?,
                    created_at: row.time("created_at")?,
                    last_seen_at: row.time("last_seen_at")?,
                    expires_at: row.time("expires_at")?,
                })
            })
            .collect()
    }

    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<WebhookInsert, StoreError> {
        // Registered while no fan-out runs, and after every event fanned out already: a fan-out
        // that read the endpoints before this committed has passed over it for good the events
        // it took, so the endpoint must not count as registered before any of them.
        let mut tx = self.db.begin().await?;
        exclusive(&mut tx, FAN_OUT_LOCK).await?;
        // Counted under the lock every registration takes: concurrent ones are counted in turn.
        if endpoint.config_name.is_none() {
            let registered = query("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE config_name IS NULL")
                .fetch_one(&mut tx)
                .await?
                .int("n")?;
            if registered >= super::MAX_API_WEBHOOKS {
                tx.rollback().await?;
                return Ok(WebhookInsert::Full);
            }
        }
        let newest_taken = query(
            "SELECT created_at FROM outbox_events WHERE processed_at IS NOT NULL ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_optional(&mut tx)
        .await?
        .map(|row| row.time("created_at"))
        .transpose()?;
        // A writer's clock a little ahead moves the registration with it; one far ahead (an event
        // dated days from now) is an outlier, which must neither leave every endpoint registered
        // from then on with nothing sent to it until that date, nor cost it the events of the
        // next minute (replay has the outlier, written before the endpoint was).
        let registered = match newest_taken {
            Some(taken) if taken >= endpoint.created_at && taken <= endpoint.created_at + WEBHOOK_CLOCK_SKEW => {
                taken + chrono::TimeDelta::microseconds(1)
            }
            _ => endpoint.created_at,
        };
        let inserted = query(
            "INSERT INTO webhook_endpoints (id, url, event_types, enabled, secret, previous_secret,
                                            previous_secret_until, config_name, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (config_name) DO NOTHING RETURNING id",
        )
        .bind(endpoint.id.as_uuid())
        .bind(endpoint.url.as_str())
        .bind(endpoint.event_types.join(" "))
        .bind(endpoint.enabled)
        .bind(endpoint.secret.as_slice())
        .bind(endpoint.previous_secret.as_deref())
        .bind(endpoint.previous_secret_until)
        .bind(endpoint.config_name.as_deref())
        .bind(registered)
        .bind(endpoint.updated_at.max(registered))
        .fetch_optional(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(inserted.map_or(WebhookInsert::NameTaken, |_| WebhookInsert::Registered(registered)))
    }

    async fn webhook(&self, id: WebhookId) -> Result<Option<WebhookEndpoint>, StoreError> {
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(format!("SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE id = $1").into_boxed_str())
        });
        let row = query(*SQL).bind(id.as_uuid()).fetch_optional(self.db.reader()).await?;
        row.as_ref().map(webhook_row).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(
                format!("SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id").into_boxed_str(),
            )
        });
        query(*SQL).fetch_all(self.db.reader()).await?.iter().map(webhook_row).collect()
    }

    async fn update_webhook(&self, endpoint: &WebhookEndpoint) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let (id, url, types) = (endpoint.id, Some(endpoint.url.as_str()), endpoint.event_types.join(" "));
        restart_series(&mut tx, id, Some(endpoint.enabled), url, Some(&types), endpoint.updated_at).await?;
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(
                format!(
                    "UPDATE webhook_endpoints SET url = $2, event_types = $3, updated_at = $5, {SET_ENABLED}
                     WHERE id = $1"
                )
                .into_boxed_str(),
            )
        });
        let updated = query(*SQL)
            .bind(endpoint.id.as_uuid())
            .bind(endpoint.url.as_str())
            .bind(types)
            .bind(endpoint.enabled)
            .bind(endpoint.updated_at)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(updated == 1)
    }

    async fn patch_webhook(
        &self,
        id: WebhookId,
        change: &WebhookChange,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(
                format!(
                    "UPDATE webhook_endpoints
                     SET url = COALESCE($2, url), event_types = COALESCE($3, event_types),
                         updated_at = $5, {SET_ENABLED}
                     WHERE id = $1 AND config_name IS NULL
                     RETURNING {WEBHOOK_COLUMNS}"
                )
                .into_boxed_str(),
            )
        });
        let mut tx = self.db.begin().await?;
        let types = change.event_types.as_ref().map(|types| types.join(" "));
        restart_series(&mut tx, id, change.enabled, change.url.as_deref(), types.as_deref(), now).await?;
        let row = query(*SQL)
            .bind(id.as_uuid())
            .bind(change.url.as_deref())
            .bind(types.as_deref())
            .bind(change.enabled)
            .bind(now)
            .fetch_optional(&mut tx)
            .await?;
        let endpoint = row.as_ref().map(webhook_row).transpose()?;
        // A configured endpoint (not changed here) keeps its deliveries as they were.
        if endpoint.is_some() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(endpoint)
    }

    async fn forget_expired_webhook_secrets(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // Re-checked on the row: a rotation that committed meanwhile set a new overlap.
        Ok(query(
            "UPDATE webhook_endpoints SET previous_secret = NULL, previous_secret_until = NULL
             WHERE previous_secret_until <= $1",
        )
        .bind(now)
        .execute(self.db.writer())
        .await?)
    }

    async fn replace_webhook_secret(
        &self,
        id: WebhookId,
        expected: &[u8],
        keys: &WebhookKeys<'_>,
    ) -> Result<bool, StoreError> {
        let updated = query(
            "UPDATE webhook_endpoints SET secret = $3, previous_secret = $4, previous_secret_until = $5, updated_at = $6
             WHERE id = $1 AND secret = $2",
        )
        .bind(id.as_uuid())
        .bind(expected)
        .bind(keys.secret)
        .bind(keys.previous)
        .bind(keys.previous_until)
        .bind(keys.now)
        .execute(self.db.writer())
        .await?;
        Ok(updated == 1)
    }

    async fn delete_webhook(&self, id: WebhookId) -> Result<bool, StoreError> {
        // Its delivery log may hold a month of rows: deleted in one statement, under the
        // endpoint's lock, it would hold up the fan-out (whose new deliveries wait on that lock)
        // for every endpoint, and could outlast the statement timeout every time. So: disabled
        // first, and not live for the fan-out (no `disabled_at`), so that nothing more is queued,
        // claimed or recorded for it; its deliveries in batches; the endpoint last, with what a
        // replay's page may have queued meanwhile. Stopped part-way, it is left disabled, and a
        // second deletion finishes.
        let stopped = query("UPDATE webhook_endpoints SET enabled = FALSE, disabled_at = NULL WHERE id = $1")
            .bind(id.as_uuid())
            .execute(self.db.writer())
            .await?;
        if stopped == 0 {
            return Ok(false);
        }
        let batch = "DELETE FROM webhook_deliveries WHERE id IN
                       (SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 LIMIT $2)";
        self.db.delete_in_batches(query(batch).bind(id.as_uuid())).await?;
        let mut tx = self.db.begin().await?;
        // The endpoint first, then its deliveries: the order a replay's page takes them.
        query("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR UPDATE").bind(id.as_uuid()).execute(&mut tx).await?;
        query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1").bind(id.as_uuid()).execute(&mut tx).await?;
        let deleted = query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id.as_uuid()).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn fan_out_events(
        &self,
        limit: i64,
        waited_up_to: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<FanOut, StoreError> {
        let nothing = FanOut { events: 0, waiting: None, busy: false };
        // A read first: every instance polls, and most polls find nothing to do (on SQLite a write
        // transaction would take the one writer connection each time).
        let waiting = query("SELECT 1 AS one FROM outbox_events WHERE processed_at IS NULL LIMIT 1")
            .fetch_optional(self.db.reader())
            .await?;
        if waiting.is_none() {
            return Ok(nothing);
        }
        let mut tx = self.db.begin().await?;
        if !try_exclusive(&mut tx, FAN_OUT_LOCK).await? {
            tx.rollback().await?;
            return Ok(FanOut { busy: true, ..nothing });
        }
        let events = query(
            "SELECT seq, id, topic, created_at FROM outbox_events WHERE processed_at IS NULL
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit.max(1))
        .fetch_all(&mut tx)
        .await?;
        // Events after a gap wait for it (until the caller has waited long enough), so that an
        // endpoint gets its events in sequence order.
        let done = query("SELECT seq FROM outbox_events WHERE processed_at IS NOT NULL ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut tx)
            .await?
            .map(|row| row.int("seq"))
            .transpose()?;
        // With none processed yet, numbering starts at 1. A number below the next is an event
        // that committed after later ones were processed: no gap, and the next stays where it is.
        let mut next = done.map_or(1, |seq| seq + 1);
        let (mut ready, mut waiting) = (0, None);
        for event in &events {
            let seq = event.int("seq")?;
            if seq > next && waited_up_to.is_none_or(|up_to| seq > up_to) {
                let up_to = events.last().map(|last| last.int("seq")).transpose()?.unwrap_or(seq);
                waiting = Some(Waiting { missing: next, up_to });
                break;
            }
            next = next.max(seq + 1);
            ready += 1;
        }
        let events = &events[..ready];
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(FanOut { events: 0, waiting, busy: false });
        }
        // An endpoint disabled since an event was written still gets it (the delivery waits until
        // the endpoint is enabled again): how far behind the fan-out runs must not decide.
        // (An enabled endpoint gets every event, whatever its `disabled_at`: a binary from before
        // the column enables an endpoint without clearing it.) Read with the key-share lock the
        // deliveries' foreign keys take anyway, from the start: a deletion that began meanwhile
        // then waits for this round (and deletes what it wrote) rather than removing an endpoint
        // it is writing deliveries for, which failed the whole round.
        let endpoints = query(
            "SELECT id, event_types, created_at, enabled, disabled_at FROM webhook_endpoints
             WHERE enabled OR disabled_at IS NOT NULL FOR KEY SHARE",
        )
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|row| {
            let types: Vec<String> = row.text("event_types")?.split_whitespace().map(str::to_owned).collect();
            let live_until = if row.flag("enabled")? { None } else { row.opt_time("disabled_at")? };
            Ok((WebhookId::from_uuid(row.uuid("id")?), types, row.time("created_at")?, live_until))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let (mut deliveries, mut seqs) = (Vec::new(), Vec::with_capacity(events.len()));
        for event in events {
            let (seq, id, topic, written) =
                (event.int("seq")?, event.uuid("id")?, event.text("topic")?, event.time("created_at")?);
            for (endpoint, types, registered, live_until) in &endpoints {
                let live = live_until.is_none_or(|disabled| written < disabled);
                if *registered <= written && live && (types.is_empty() || types.contains(&topic)) {
                    deliveries.push((*endpoint, id, seq));
                }
            }
            seqs.push(seq);
        }
        // Many rows a statement: a backlog of events times endpoints, one statement each, held the
        // fan-out lock (which a new endpoint's registration waits for) for seconds a batch.
        for chunk in deliveries.chunks(DELIVERIES_PER_INSERT) {
            let mut insert = query(INSERT_DELIVERIES_SQL.as_str()).bind(now);
            // A shorter chunk repeats its last delivery, under an id of its own: the same
            // (endpoint, event), which the statement's `ON CONFLICT` passes over.
            for (endpoint, event, seq) in padded(chunk, DELIVERIES_PER_INSERT) {
                insert = insert.bind(uuid::Uuid::now_v7()).bind(endpoint.as_uuid()).bind(*event).bind(*seq);
            }
            insert.execute(&mut tx).await?;
        }
        // By the numbers taken, not a range: an event committed late within it is not among them.
        for chunk in seqs.chunks(EVENTS_PER_UPDATE) {
            let mut processed = query(PROCESSED_EVENTS_SQL.as_str()).bind(now);
            for seq in padded(chunk, EVENTS_PER_UPDATE) {
                processed = processed.bind(*seq);
            }
            processed.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(FanOut { events: events.len() as u64, waiting, busy: false })
    }

    async fn claim_webhooks(
        &self,
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        static SQL: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
            Box::leak(
                format!(
                    "UPDATE webhook_endpoints SET lease_owner = $1, lease_until = $3
                     WHERE (lease_until IS NULL OR lease_until < $2) AND id IN (
                       SELECT e.id FROM webhook_endpoints e
                       WHERE e.enabled AND (e.lease_until IS NULL OR e.lease_until < $2)
                         AND (SELECT d.next_attempt_at FROM webhook_deliveries d
                              WHERE d.endpoint_id = e.id AND d.state = 'pending'
                              ORDER BY d.event_seq LIMIT 1) <= $2
                       -- Longest waiting first: with more endpoints due than a claim takes, the
                       -- same few (by id) would otherwise be claimed every round.
                       ORDER BY (SELECT d.next_attempt_at FROM webhook_deliveries d
                                 WHERE d.endpoint_id = e.id AND d.state = 'pending'
                                 ORDER BY d.event_seq LIMIT 1), e.id
                       -- Not `FOR UPDATE`: that conflicts with the key-share locks the fan-out's
                       -- new deliveries take on their endpoints, so every other instance would
                       -- skip exactly the endpoints just given work until the fan-out commits.
                       LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED)
                     RETURNING {WEBHOOK_COLUMNS}"
                )
                .into_boxed_str(),
            )
        });
        // The claim's own condition, read first: an enabled endpoint not leased whose first
        // pending delivery is due (a later one queued behind a retry, or one of a disabled
        // endpoint, is not work, and must not cost every poll a write).
        let due = query(
            "SELECT 1 AS one FROM webhook_endpoints e
             WHERE e.enabled AND (e.lease_until IS NULL OR e.lease_until < $1)
               AND (SELECT d.next_attempt_at FROM webhook_deliveries d
                    WHERE d.endpoint_id = e.id AND d.state = 'pending'
                    ORDER BY d.event_seq LIMIT 1) <= $1
             LIMIT 1",
        )
        .bind(now)
        .fetch_optional(self.db.reader())
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        // In a transaction committed once the rows are read: a claim whose answer is lost (a
        // connection dropped while reading it) leases nothing, rather than endpoints no task
        // delivers to until their leases run out. (Decoded after, one by one: a damaged row must
        // not roll back or fail every claim, and so every delivery, while it is the longest
        // waiting. It keeps its lease, so that it is passed over until the lease runs out rather
        // than claimed again by every poll.)
        let mut tx = self.db.begin().await?;
        let rows = query(*SQL).bind(owner).bind(now).bind(until).bind(limit.max(1)).fetch_all(&mut tx).await?;
        tx.commit().await?;
        let decoded = rows.iter().filter_map(|row| match webhook_row(row) {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                let id = row.uuid("id").map(|id| id.to_string()).unwrap_or_default();
                tracing::error!(webhook = %id, error = %error.chain(), "a webhook endpoint's row cannot be decoded; it is passed over");
                None
            }
        });
        Ok(decoded.collect())
    }

    async fn release_webhook(&self, id: WebhookId, owner: uuid::Uuid) -> Result<(), StoreError> {
        query("UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2")
            .bind(id.as_uuid())
            .bind(owner)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    async fn release_webhooks_of(&self, owner: uuid::Uuid) -> Result<u64, StoreError> {
        let released =
            query("UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
                .bind(owner)
                .execute(self.db.writer())
                .await?;
        Ok(released)
    }

    async fn pending_deliveries(&self, endpoint: WebhookId, limit: i64) -> Result<Vec<DeliveryJob>, StoreError> {
        let rows = query(
            "SELECT d.id, d.event_id, d.event_seq, o.topic, o.payload, o.created_at AS event_created_at, d.attempts,
                    d.scheduled_at, d.next_attempt_at
             FROM webhook_deliveries d JOIN outbox_events o ON o.id = d.event_id
             WHERE d.endpoint_id = $1 AND d.state = 'pending' ORDER BY d.event_seq LIMIT $2",
        )
        .bind(endpoint.as_uuid())
        .bind(limit.max(1))
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeliveryJob {
                    id: row.uuid("id")?,
                    event_id: EventId::from_uuid(row.uuid("event_id")?),
                    event_seq: row.int("event_seq")?,
                    topic: row.text("topic")?,
                    payload: row.opt_json("payload")?.unwrap_or_default(),
                    event_created_at: row.time("event_created_at")?,
                    attempts: row.int("attempts")?,
                    scheduled_at: row.time("scheduled_at")?,
                    next_attempt_at: row.time("next_attempt_at")?,
                })
            })
            .collect()
    }

    async fn webhook_queues(&self) -> Result<Vec<WebhookQueue>, StoreError> {
        let rows = query(WEBHOOK_QUEUES).fetch_all(self.db.reader()).await?;
        rows.iter()
            .map(|row| {
                Ok(WebhookQueue {
                    endpoint: WebhookId::from_uuid(row.uuid("id")?),
                    pending: row.int("pending")?,
                    oldest_scheduled_at: row.opt_time("oldest")?,
                })
            })
            .collect()
    }

    async fn delete_other_sessions(&self, user: UserId, keep: &[u8; 32]) -> Result<Option<u64>, StoreError> {
        retrying_conflicts(|| self.delete_other_sessions_once(user, keep)).await
    }

    async fn delete_sessions_begun(
        &self,
        user: UserId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        reason: SessionEnd,
    ) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        let ended = query("DELETE FROM sessions WHERE user_id = $1 AND created_at >= $2 AND created_at < $3")
            .bind(user.as_uuid())
            .bind(from)
            .bind(until)
            .execute(&mut tx)
            .await?;
        if ended == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        let now = crate::domain::now();
        insert_session_event(&mut tx, user, reason, ended, now).await?;
        log_changes(&mut tx, &[CacheChange::User(user)], now).await?;
        tx.commit().await?;
        Ok(ended)
    }

    async fn record_attempt(
        &self,
        endpoint: &WebhookEndpoint,
        delivery: uuid::Uuid,
        attempt: &Attempt,
    ) -> Result<bool, StoreError> {
        let (state, next, delivered_at) = match (&attempt.error, attempt.retry_at) {
            (None, _) => (DeliveryState::Delivered, attempt.at, Some(attempt.at)),
            (Some(_), Some(retry_at)) => (DeliveryState::Pending, retry_at, None),
            (Some(_), None) => (DeliveryState::Failed, attempt.at, None),
        };
        let updated = query(
            "UPDATE webhook_deliveries SET state = $2, attempts = attempts + 1, next_attempt_at = $3,
                    last_attempt_at = $4, last_status = $5, last_error = $6, delivered_at = $7,
                    -- The series of attempts counts from its first.
                    scheduled_at = CASE WHEN attempts = 0 THEN $4 ELSE scheduled_at END
             WHERE id = $1 AND state = 'pending' AND scheduled_at = $8
               AND EXISTS (SELECT 1 FROM webhook_endpoints e
                           WHERE e.id = webhook_deliveries.endpoint_id AND e.enabled AND e.url = $9)",
        )
        .bind(delivery)
        .bind(state.as_str())
        .bind(next)
        .bind(attempt.at)
        .bind(attempt.status)
        .bind(attempt.error.clone())
        .bind(delivered_at)
        .bind(attempt.scheduled_at)
        .bind(endpoint.url.as_str())
        .execute(self.db.writer())
        .await?;
        Ok(updated == 1)
    }

    async fn webhook_deliveries(
        &self,
        endpoint: WebhookId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows = query(DELIVERIES)
            .bind(endpoint.as_uuid())
            // A plain `<`, which the index seeks to (under `$2 IS NULL OR` SQLite would step down
            // from the newest on every page).
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit.max(1))
            .fetch_all(self.db.reader())
            .await?;
        rows.iter().map(delivery_row).collect()
    }

    async fn delete_old_events(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        // The candidates, read before the transaction (on SQLite a write transaction takes the
        // writer): the scan walks every old event held back by a pending delivery (an endpoint
        // disabled for weeks keeps them all), and must not hold every other write — sign-ins
        // included — behind it. Nothing to delete takes no write at all.
        let ids = query(
            "SELECT e.id FROM outbox_events e
             WHERE e.created_at < $1 AND e.processed_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.state = 'pending')
               -- The last event processed stays: the fan-out counts gaps from it (the last can
               -- only move on, so a candidate stays below it).
               AND e.seq < (SELECT MAX(p.seq) FROM outbox_events p WHERE p.processed_at IS NOT NULL)
             ORDER BY e.created_at LIMIT $2",
        )
        .bind(before)
        .bind(limit.max(0))
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(|row| row.uuid("id"))
        .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        // Locked, then deleted by statements that re-check what committed since the candidates
        // were read: a replay that made a delivery pending meanwhile keeps its event, and one
        // whose page holds an event (`FOR SHARE`) has it skipped, to be judged by a later sweep.
        let mut deleted = 0;
        for chunk in ids.chunks(EVENTS_PER_DELETE) {
            // A shorter chunk repeats its last id: the same row, locked and deleted once.
            let mut lock = query(LOCK_EVENTS_SQL.as_str());
            for id in padded(chunk, EVENTS_PER_DELETE) {
                lock = lock.bind(*id);
            }
            let locked =
                lock.fetch_all(&mut tx).await?.iter().map(|row| row.uuid("id")).collect::<Result<Vec<_>, _>>()?;
            if locked.is_empty() {
                continue;
            }
            let mut delete = query(DELETE_EVENTS_SQL.as_str());
            for id in padded(&locked, EVENTS_PER_DELETE) {
                delete = delete.bind(*id);
            }
            deleted += delete.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn replay_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        since: DateTime<Utc>,
        from: Option<ReplayCursor>,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<ReplayPage, StoreError> {
        let from = match from {
            Some(from) => from,
            None => {
                // Read before the transaction: on SQLite a write transaction takes the writer.
                let last = query("SELECT max(seq) AS last FROM outbox_events WHERE processed_at IS NOT NULL")
                    .fetch_one(self.db.reader())
                    .await?
                    .opt_int("last")?;
                // And where the replay starts: the first event since `since`, found through the
                // index by creation time, rather than walking every older event retained (a
                // month of them, for a replay of the last hour) on the first page, in its write
                // transaction.
                let first =
                    query(FIRST_PROCESSED_SINCE).bind(since).fetch_one(self.db.reader()).await?.opt_int("first")?;
                let (Some(through), Some(first)) = (last, first) else {
                    return Ok(ReplayPage { scheduled: 0, next: None, gone: false });
                };
                ReplayCursor { after: first - 1, through, started: now }
            }
        };
        let mut tx = self.db.begin().await?;
        // The endpoint stays for the page (its deletion waits, locking the endpoint first, as
        // here): a page never writes deliveries of an endpoint being deleted.
        let alive = query("SELECT 1 FROM webhook_endpoints WHERE id = $1 FOR KEY SHARE")
            .bind(endpoint.id.as_uuid())
            .fetch_optional(&mut tx)
            .await?;
        if alive.is_none() {
            tx.rollback().await?;
            return Ok(ReplayPage { scheduled: 0, next: None, gone: true });
        }
        // Only events already fanned out: later ones get their deliveries from the fan-out.
        let events = query(
            "SELECT seq, id, topic FROM outbox_events
             WHERE created_at >= $1 AND processed_at IS NOT NULL AND seq > $2 AND seq <= $3
             ORDER BY seq LIMIT $4 FOR SHARE",
        )
        .bind(since)
        .bind(from.after)
        .bind(from.through)
        .bind(limit.max(1))
        .fetch_all(&mut tx)
        .await?;
        let mut scheduled = 0;
        for event in &events {
            if !endpoint.wants(&event.text("topic")?) {
                continue;
            }
            let (seq, id) = (event.int("seq")?, event.uuid("id")?);
            let mut written = insert_delivery(&mut tx, endpoint.id, id, seq, now).await?;
            if written == 0 {
                // Not one the fan-out scheduled after the replay began (an event whose
                // transaction committed late, below the bound): that one is on its way already.
                // A failed one is sent again whenever its series began: a delivery queued before
                // the replay whose first attempt (which starts its series) came while the replay
                // ran, and failed it for good, is what the replay is for.
                written = query(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, scheduled_at = $3,
                            next_attempt_at = $3, delivered_at = NULL, last_attempt_at = NULL,
                            last_status = NULL, last_error = NULL
                     WHERE endpoint_id = $1 AND event_id = $2 AND (scheduled_at <= $4 OR state = 'failed')",
                )
                .bind(endpoint.id.as_uuid())
                .bind(id)
                .bind(now)
                .bind(from.started)
                .execute(&mut tx)
                .await?;
            }
            scheduled += written;
        }
        tx.commit().await?;
        let next = match events.last() {
            Some(last) if events.len() as i64 >= limit.max(1) => Some(ReplayCursor { after: last.int("seq")?, ..from }),
            _ => None,
        };
        Ok(ReplayPage { scheduled, next, gone: false })
    }

    async fn update_profile(
        &self,
        id: ProfileId,
        expected_version: i64,
        change: &ProfileChange<'_>,
    ) -> Result<ProfileUpdate, StoreError> {
        profile_actions::update_profile(&self.db, id, expected_version, change).await
    }

    async fn set_default_profile(
        &self,
        team: TeamId,
        id: ProfileId,
        by: UserId,
        now: DateTime<Utc>,
    ) -> Result<DefaultOutcome, StoreError> {
        profile_actions::set_default_profile(&self.db, team, id, by, now).await
    }

    async fn clear_default_profile(&self, team: TeamId, id: ProfileId, by: UserId) -> Result<Option<bool>, StoreError> {
        profile_actions::clear_default_profile(&self.db, team, id, by).await
    }

    async fn default_profile(&self, team: TeamId, connector_key: &str) -> Result<Option<AuthProfile>, StoreError> {
        profile_actions::default_profile(&self.db, team, connector_key).await
    }

    async fn active_personal_profile(
        &self,
        team: TeamId,
        user: UserId,
        connector_key: &str,
    ) -> Result<Option<AuthProfile>, StoreError> {
        profile_actions::active_personal_profile(&self.db, team, user, connector_key).await
    }

    async fn set_access_token_expiry(
        &self,
        id: ProfileId,
        token_version: i64,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        profile_actions::set_access_token_expiry(&self.db, id, token_version, expires_at).await
    }

    async fn mark_needs_reauth(
        &self,
        id: ProfileId,
        token_version: i64,
        reason: ReauthReason,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        profile_actions::mark_needs_reauth(&self.db, id, token_version, reason, now).await
    }

    // ---- Operators: listings and user deletion (the SQL is in admin.rs) -----------------------

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>, StoreError> {
        super::admin::list_users(&self.db, query).await
    }

    async fn list_teams(&self, query: &TeamQuery) -> Result<Vec<Team>, StoreError> {
        super::admin::list_teams(&self.db, query).await
    }

    async fn team_members(
        &self,
        team: TeamId,
        after: Option<uuid::Uuid>,
        limit: i64,
    ) -> Result<Vec<TeamMember>, StoreError> {
        super::admin::team_members(&self.db, team, after, limit).await
    }

    async fn create_team(
        &self,
        team: &Team,
        owner: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<CreateTeamOutcome, StoreError> {
        super::admin::create_team(&self.db, team, owner, now).await
    }

    async fn delete_team(&self, team: TeamId, now: DateTime<Utc>) -> Result<DeleteTeamOutcome, StoreError> {
        super::admin::delete_team(&self.db, team, now).await
    }

    async fn delete_user(&self, user: UserId, now: DateTime<Utc>) -> Result<DeleteUserOutcome, StoreError> {
        super::admin::delete_user(&self.db, user, now).await
    }

    async fn put_profile_credential(&self, write: &CredentialWrite<'_>) -> Result<CredentialOutcome, StoreError> {
        self.put_profile_credential_sql(write).await
    }

    async fn profile_credential(&self, id: ProfileId) -> Result<Option<StoredCredential>, StoreError> {
        self.profile_credential_sql(id).await
    }

    async fn append_audit_events(&self, events: &[super::NewAuditEvent]) -> Result<(), StoreError> {
        super::audit::append(&self.db, events).await
    }

    async fn audit_events(&self, query: &super::AuditQuery) -> Result<Vec<super::AuditEvent>, StoreError> {
        super::audit::list(&self.db, query).await
    }

    async fn delete_audit_events_before(&self, before: DateTime<Utc>, limit: i64) -> Result<u64, StoreError> {
        super::audit::delete_before(&self.db, before, limit).await
    }

    // ---- The cache-invalidation log (the SQL is in cache_sync.rs) ------------------------------

    async fn cache_changes_head(&self) -> Result<i64, StoreError> {
        super::cache_sync::head(&self.db).await
    }

    async fn cache_changes_after(&self, after: i64, limit: i64, anchor: Option<i64>) -> Result<LogPage, StoreError> {
        super::cache_sync::changes_after(&self.db, after, limit, anchor).await
    }

    async fn delete_cache_changes_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        super::cache_sync::prune(&self.db, before).await
    }

    async fn existing_identities(
        &self,
        issuer: &Issuer,
        subjects: &[Subject],
    ) -> Result<Vec<(Subject, UserId, bool)>, StoreError> {
        super::import::existing_identities(&self.db, issuer, subjects).await
    }

    async fn export_identities(
        &self,
        after: Option<IdentityId>,
        limit: i64,
    ) -> Result<Vec<ExportedIdentity>, StoreError> {
        super::import::export_identities(&self.db, after, limit).await
    }
}

// ---- OpenID Provider: registered clients ------------------------------------------------------

/// Whether two records register the same thing (their times aside).
fn same_registration(stored: &Client, wanted: &Client) -> bool {
    *stored == Client { created_at: stored.created_at, updated_at: stored.updated_at, ..wanted.clone() }
}

/// The JSON of a list of serialisable values.
fn json_list<T: serde::Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::Value::Array(items.iter().filter_map(|item| serde_json::to_value(item).ok()).collect())
}

fn ttl_seconds(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

fn kind_text(client: &Client) -> &'static str {
    match client.kind {
        ClientKind::Confidential => "confidential",
        ClientKind::Public => "public",
    }
}

/// `INSERT … ON CONFLICT (id) DO NOTHING RETURNING id` of a whole record.
fn insert_client_query(client: &Client) -> super::db::Query<'_> {
    let insert = query(
        "INSERT INTO clients
           (id, name, kind, secret_hash, jwks, redirect_uris, post_logout_redirect_uris, scopes, grant_types,
            resources, first_party, signing_alg, access_token_ttl_seconds, refresh_token_ttl_seconds, from_config,
            updated_at, previous_secret_hash, previous_secret_until, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         ON CONFLICT (id) DO NOTHING RETURNING id",
    );
    bind_client(insert, client).bind(client.created_at)
}

/// Binds `$1` to `$18` of a client's insert or update: the id, every field, `updated_at`, and the
/// previous secret.
fn bind_client<'q>(query: super::db::Query<'q>, client: &'q Client) -> super::db::Query<'q> {
    query
        .bind(client.id.as_str())
        .bind(&client.name)
        .bind(kind_text(client))
        .bind(client.secret_hash.as_ref().map(|h| &h[..]))
        .bind(client.jwks.clone())
        .bind(json_list(&client.redirect_uris))
        .bind(json_list(&client.post_logout_redirect_uris))
        .bind(json_list(&client.scopes))
        .bind(json_list(&client.grant_types))
        .bind(json_list(&client.resources))
        .bind(client.first_party)
        .bind(client.signing_alg.as_str())
        .bind(ttl_seconds(client.access_token_ttl))
        .bind(ttl_seconds(client.refresh_token_ttl))
        .bind(client.from_config)
        .bind(client.updated_at)
        .bind(client.previous_secret.as_ref().map(|p| &p.hash[..]))
        .bind(client.previous_secret.as_ref().map(|p| p.until))
}

/// `UPDATE` of every field but `id` and `created_at`; with `expected`, only if `updated_at` is
/// still that.
fn update_client_query(client: &Client, expected: Option<DateTime<Utc>>) -> super::db::Query<'_> {
    let sql = if expected.is_some() {
        "UPDATE clients SET name = $2, kind = $3, secret_hash = $4, jwks = $5, redirect_uris = $6,
                post_logout_redirect_uris = $7, scopes = $8, grant_types = $9, resources = $10, first_party = $11,
                signing_alg = $12, access_token_ttl_seconds = $13, refresh_token_ttl_seconds = $14,
                from_config = $15, updated_at = $16, previous_secret_hash = $17, previous_secret_until = $18
         WHERE id = $1 AND updated_at = $19"
    } else {
        "UPDATE clients SET name = $2, kind = $3, secret_hash = $4, jwks = $5, redirect_uris = $6,
                post_logout_redirect_uris = $7, scopes = $8, grant_types = $9, resources = $10, first_party = $11,
                signing_alg = $12, access_token_ttl_seconds = $13, refresh_token_ttl_seconds = $14,
                from_config = $15, updated_at = $16, previous_secret_hash = $17, previous_secret_until = $18
         WHERE id = $1"
    };
    let update = bind_client(query(sql), client);
    match expected {
        Some(at) => update.bind(at),
        None => update,
    }
}

/// Whether grant `g` (of user `u`) counts at `$2` (a [`GrantAt`]'s `now`, with its
/// `idle_before` as `$3`): not revoked or expired, its user enabled, the identity it is bound to
/// (if any) still there, and so the session (if any), neither expired nor idle.
macro_rules! grant_active {
    () => {
        "(g.revoked_at IS NULL AND g.expires_at > $2 AND NOT u.disabled
          AND (g.identity_id IS NULL OR EXISTS (SELECT 1 FROM identities i WHERE i.id = g.identity_id))
          AND (g.session_hash IS NULL OR EXISTS (
               SELECT 1 FROM sessions s
                WHERE s.token_hash = g.session_hash AND s.expires_at > $2 AND s.last_seen_at > $3)))"
    };
}
use grant_active;

/// A grant query: its columns, and `active` computed at `$2` (now), followed by `$tail` (the FROM
/// clause, which must join `oauth_grants g` and `users u`).
macro_rules! grant_select {
    ($tail:literal) => {
        concat!(
            "SELECT g.id AS grant_id, g.client_id, g.user_id AS grant_user_id, g.identity_id AS grant_identity_id,
                    g.scope, g.resource, g.provider, g.auth_time, g.expires_at AS grant_expires_at, g.session_hash, ",
            grant_active!(),
            " AS active",
            $tail
        )
    };
}
use crate::error::ErrorChain as _;
use grant_select;

/// Whether grant `id` is active `at`, read in `tx`.
async fn grant_active_in(tx: &mut Tx, id: uuid::Uuid, at: GrantAt) -> Result<bool, StoreError> {
    query(grant_select!(" FROM oauth_grants g JOIN users u ON u.id = g.user_id WHERE g.id = $1"))
        .bind(id)
        .bind(at.now)
        .bind(at.idle_before)
        .fetch_optional(tx)
        .await?
        .map(|row| row.flag("active"))
        .transpose()
        .map(|active| active.unwrap_or(false))
}

/// A consent row's scopes (space-separated) and its resources with their scopes (a line each:
/// the resource, then its scopes).
fn consent_of(row: &super::db::Row) -> Result<Consent, StoreError> {
    let words = |text: &str| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let resources = row
        .text("resource_scopes")?
        .lines()
        .filter_map(|line| {
            let mut line = words(line);
            (!line.is_empty()).then(|| (line.remove(0), line))
        })
        .collect();
    // Migration 21's unpaired list, which this binary leaves empty: a resource on it was approved
    // by a binary of before migration 23 during a roll-out, which added that approval's scopes
    // to `scope` too. As the migration has it, `scope` then covers nothing (the app asks once
    // more).
    let unpaired = !row.text("resources")?.trim().is_empty();
    let scopes = if unpaired { Vec::new() } else { words(&row.text("scope")?) };
    Ok(Consent { scopes, resources })
}

fn grant_record(row: &super::db::Row) -> Result<GrantRecord, StoreError> {
    Ok(GrantRecord {
        id: row.uuid("grant_id")?,
        client_id: row.text("client_id")?,
        user_id: UserId::from_uuid(row.uuid("grant_user_id")?),
        identity_id: row.opt_uuid("grant_identity_id")?.map(IdentityId::from_uuid),
        scope: row.text("scope")?,
        resource: row.opt_text("resource")?,
        provider: row.opt_text("provider")?,
        auth_time: row.time("auth_time")?,
        expires_at: row.time("grant_expires_at")?,
        session_hash: row.opt_bytes("session_hash")?.map(|b| rows::hash32(&b)).transpose()?,
        active: row.flag("active")?,
    })
}

async fn insert_refresh_token(
    tx: &mut Tx,
    hash: &[u8; 32],
    grant: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    query("INSERT INTO oauth_refresh_tokens (token_hash, grant_id, created_at) VALUES ($1, $2, $3)")
        .bind(&hash[..])
        .bind(grant)
        .bind(now)
        .execute(tx)
        .await?;
    Ok(())
}

/// Outbox events one statement of the retention sweep deletes by id.
const EVENTS_PER_DELETE: usize = 100;

/// `DELETE FROM outbox_events WHERE id IN ($1, …, $100)` of those still without a pending
/// delivery.
static DELETE_EVENTS_SQL: LazyLock<String> = LazyLock::new(|| {
    let ids: Vec<String> = (1..=EVENTS_PER_DELETE).map(|n| format!("${n}")).collect();
    format!(
        "DELETE FROM outbox_events WHERE id IN ({}) AND NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = outbox_events.id AND d.state = 'pending')",
        ids.join(", ")
    )
});

/// `SELECT id FROM outbox_events WHERE id IN ($1, …, $100)`, locked in id order, those another
/// transaction holds skipped (a replay's page, which locks the events it schedules; another
/// instance's sweep of the same candidates): two sweeps never wait on each other in opposite
/// orders. A statement of its own, before [`DELETE_EVENTS_SQL`]: on PostgreSQL a statement reads
/// what committed before it began, so the delete's check of pending deliveries, begun after the
/// locks are held, sees a delivery a replay made pending just before.
static LOCK_EVENTS_SQL: LazyLock<String> = LazyLock::new(|| {
    let ids: Vec<String> = (1..=EVENTS_PER_DELETE).map(|n| format!("${n}")).collect();
    format!("SELECT id FROM outbox_events WHERE id IN ({}) ORDER BY id FOR UPDATE SKIP LOCKED", ids.join(", "))
});

/// Deliveries the fan-out writes per statement (four values each).
const DELIVERIES_PER_INSERT: usize = 100;

/// The fan-out's insert of [`DELIVERIES_PER_INSERT`] pending deliveries, scheduled at `$1`;
/// one already there (the same endpoint and event) is passed over.
static INSERT_DELIVERIES_SQL: LazyLock<String> = LazyLock::new(|| {
    let rows: Vec<String> = (0..DELIVERIES_PER_INSERT)
        .map(|row| {
            let first = 2 + 4 * row;
            let [id, endpoint, event, seq] = [first, first + 1, first + 2, first + 3];
            format!("(${id}, ${endpoint}, ${event}, ${seq}, 'pending', 0, $1, $1, $1)")
        })
        .collect();
    format!(
        "INSERT INTO webhook_deliveries
           (id, endpoint_id, event_id, event_seq, state, attempts, scheduled_at, next_attempt_at, created_at)
         VALUES {}
         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
        rows.join(", ")
    )
});

/// Events the fan-out marks processed per statement.
const EVENTS_PER_UPDATE: usize = 100;

/// Marks [`EVENTS_PER_UPDATE`] events, by number, processed at `$1`.
static PROCESSED_EVENTS_SQL: LazyLock<String> = LazyLock::new(|| {
    let seqs: Vec<String> = (2..EVENTS_PER_UPDATE + 2).map(|n| format!("${n}")).collect();
    format!("UPDATE outbox_events SET processed_at = $1 WHERE seq IN ({})", seqs.join(", "))
});

/// Ends what a disabled user signed in with, for good: their sessions (with a `session.revoked`
/// event) and their OpenID Provider grants, offline ones included, so that enabling them again
/// brings back neither. Returns how many sessions ended.
async fn end_access(tx: &mut Tx, user: UserId, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let ended = query("DELETE FROM sessions WHERE user_id = $1").bind(user.as_uuid()).execute(&mut *tx).await?;
    insert_session_event(tx, user, SessionEnd::UserDisabled, ended, now).await?;
    query("UPDATE oauth_grants SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user.as_uuid())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(ended)
}

/// A page of an endpoint's deliveries, newest first, before a sequence number.
pub(super) const DELIVERIES: &str =
    "SELECT d.id, d.endpoint_id, d.event_id, d.event_seq, o.topic, d.state, d.attempts, d.scheduled_at,
            d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.delivered_at
     FROM webhook_deliveries d JOIN outbox_events o ON o.id = d.event_id
     WHERE d.endpoint_id = $1 AND d.event_seq < $2
     ORDER BY d.event_seq DESC LIMIT $3";

/// Revokes `grant` because one of its credentials came back (`cause`: a used code presented
/// again, a rotated refresh token reused), with its `grant.revoked` audit row in the same
/// transaction; false when it was revoked already (a replay into a grant an earlier replay, or the
/// user, revoked), which writes nothing, so that replays cannot flood the log and the caller rolls
/// back. `request_id` is the id of the request that presented it.
async fn revoke_replayed_grant_in(
    tx: &mut Tx,
    grant: uuid::Uuid,
    now: DateTime<Utc>,
    cause: &str,
    request_id: Option<&str>,
) -> Result<bool, StoreError> {
    let revoked = query(
        "UPDATE oauth_grants SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING client_id, user_id",
    )
    .bind(grant)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(revoked) = revoked {
        let details = serde_json::json!({
            "client_id": revoked.text("client_id")?,
            "user_id": revoked.uuid("user_id")?.to_string(),
            "cause": cause,
        });
        let event = super::NewAuditEvent::new(super::ActorKind::System, "grant.revoked")
            .actor(None, Some("oauth_token".into()))
            .target("grant", grant.to_string())
            .details(details)
            .request(request_id.map(str::to_owned));
        super::audit::insert(tx, &[event]).await?;
        return Ok(true);
    }
    Ok(false)
}

/// When `enabled` turns a disabled endpoint on again, or `url` points it elsewhere, starts its
/// pending deliveries' series of attempts anew at `now`: their time to give up counts from when
/// they can be sent, to where they now go, not from a time the endpoint spent disabled or failing
/// at its old address (which would fail them unsent, or hold them back by the old backoff).
async fn restart_series(
    tx: &mut Tx,
    endpoint: WebhookId,
    enabled: Option<bool>,
    url: Option<&str>,
    event_types: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if enabled != Some(true) && url.is_none() && event_types.is_none() {
        return Ok(());
    }
    // Not `FOR UPDATE`, which would hold off the fan-out's deliveries of every endpoint (their
    // foreign key checks share this row) while the deliveries below are rewritten.
    let was = query("SELECT enabled, url, event_types FROM webhook_endpoints WHERE id = $1 FOR NO KEY UPDATE")
        .bind(endpoint.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
    let Some(was) = was else { return Ok(()) };
    let enabling = enabled == Some(true) && !was.flag("enabled")?;
    let moving = match url {
        Some(url) => url != was.text("url")?,
        None => false,
    };
    let resubscribed = match event_types {
        Some(types) => types != was.text("event_types")?,
        None => false,
    };
    let sql = if enabling || moving {
        "UPDATE webhook_deliveries SET attempts = 0, scheduled_at = $2, next_attempt_at = $2
         WHERE endpoint_id = $1 AND state = 'pending'"
    } else if resubscribed {
        // The delivery holding the queue may be of a type no longer wanted (the way to drop a
        // type a receiver keeps refusing): due now, it is failed as unsubscribed at once rather
        // than at its next retry, and the rest go on.
        "UPDATE webhook_deliveries SET next_attempt_at = $2
         WHERE endpoint_id = $1 AND state = 'pending' AND next_attempt_at > $2"
    } else {
        return Ok(());
    };
    query(sql).bind(endpoint.as_uuid()).bind(now).execute(&mut *tx).await?;
    Ok(())
}

/// The first event fanned out at or after a time (`outbox_events_processed_created_idx`): where a
/// replay starts. `seq + 0`: the minimum of the plain column would be read by walking the index
/// by `seq` from the oldest event, past every one created before the time.
pub(super) const FIRST_PROCESSED_SINCE: &str =
    "SELECT min(seq + 0) AS first FROM outbox_events WHERE created_at >= $1 AND processed_at IS NOT NULL";

/// Whether another live profile holds an upstream account (`auth_profiles_account_idx`).
pub(super) const ACCOUNT_IN_USE: &str = "SELECT 1 AS one FROM auth_profiles
     WHERE provider = $1 AND upstream_account_id = $2 AND status IN ('active', 'needs_reauth') AND id <> $3
     LIMIT 1";

/// The live profiles a user made in the teams they are a member of, by their maker
/// (`auth_profiles_created_by_idx`).
pub(super) const PROFILES_MADE_BY: &str = concat!(
    "SELECT ",
    profile_columns!(),
    " FROM auth_profiles p
      WHERE p.created_by = $1 AND p.status <> 'revoked'
        AND EXISTS (SELECT 1 FROM memberships m WHERE m.team_id = p.team_id AND m.user_id = $1)
      ORDER BY p.created_at, p.id"
);

/// Each endpoint's pending deliveries, from the pending indexes: the count by walking the
/// endpoint's entries of one (a long queue is still walked, but no table row is read for it on
/// SQLite, and on PostgreSQL only for pages not yet all-visible), the oldest from the first entry
/// of `webhook_deliveries_pending_scheduled_idx`.
/// A disabled endpoint's oldest is none: its deliveries wait untried, with no lag to alert on.
pub(super) const WEBHOOK_QUEUES: &str = "SELECT e.id,
        (SELECT count(*) FROM webhook_deliveries d
          WHERE d.endpoint_id = e.id AND d.state = 'pending') AS pending,
        (SELECT d.scheduled_at FROM webhook_deliveries d
          WHERE e.enabled AND d.endpoint_id = e.id AND d.state = 'pending'
          ORDER BY d.scheduled_at LIMIT 1) AS oldest
     FROM webhook_endpoints e ORDER BY e.id";

/// The principal statement for `keys` (1 to [`PRINCIPALS_PER_READ`]) keys: their `(issuer,
/// subject)` pairs as a `VALUES` list joined to the identities' unique index (both databases
/// use it; a row-value `IN` makes SQLite scan), with each identity's rows together and its teams
/// default first. The list is padded to a power of two, so that each connection prepares at
/// most seven statements.
fn principals_sql(keys: usize) -> &'static str {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..=PRINCIPALS_PER_READ.trailing_zeros())
            .map(|power| {
                let values: Vec<String> =
                    (0..1usize << power).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
                format!(
                    concat!(
                        "SELECT i.issuer AS identity_issuer, i.subject AS identity_subject, i.id AS identity_id, ",
                        "i.last_seen_at AS identity_last_seen_at, ",
                        user_columns!(),
                        ", t.id AS team_id, t.slug AS team_slug, m.role AS role \
                          FROM (VALUES {}) AS k \
                          JOIN identities i ON i.issuer = k.column1 AND i.subject = k.column2 \
                          JOIN users u ON u.id = i.user_id \
                          LEFT JOIN memberships m ON m.user_id = u.id \
                          LEFT JOIN teams t ON t.id = m.team_id \
                          ORDER BY i.id, m.is_default DESC NULLS LAST, m.created_at, t.id"
                    ),
                    values.join(", ")
                )
            })
            .collect()
    });
    let power = keys.clamp(1, PRINCIPALS_PER_READ).next_power_of_two().trailing_zeros();
    SQL[power as usize].as_str()
}

/// Assembles the rows of [`principals_sql`] into one entry per (distinct) key, in the keys'
/// order: an identity whose rows do not decode is an error (what is wrong) for its key alone.
fn principals_by_key(
    keys: &[&(Issuer, Subject)],
    rows: &[Row],
) -> Result<Vec<Result<Option<Principal>, String>>, StoreError> {
    let mut found: Vec<Result<Option<Principal>, String>> = vec![Ok(None); keys.len()];
    let mut start = 0;
    while start < rows.len() {
        let identity = rows[start].uuid("identity_id")?;
        let mut end = start + 1;
        while end < rows.len() && rows[end].uuid("identity_id")? == identity {
            end += 1;
        }
        let (issuer, subject) = (rows[start].text("identity_issuer")?, rows[start].text("identity_subject")?);
        let principal = rows::principal(&rows[start..end]).map_err(|error| {
            tracing::error!(identity_id = %identity, error = %error.chain(), "an identity's rows cannot be decoded");
            match error {
                StoreError::Corrupt(what) => what,
                other => other.to_string(),
            }
        });
        if let Some(at) = keys.iter().position(|(i, s)| i.as_str() == issuer && s.as_str() == subject) {
            found[at] = principal;
        }
        start = end;
    }
    Ok(found)
}

/// A held request's row (`client_id`, `params`, `session_hash`, `expires_at`), unless it has
/// expired by `now`.
fn live_held_request(
    row: Option<Row>,
    id_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Option<HeldRequest>, StoreError> {
    let Some(row) = row else { return Ok(None) };
    let request = HeldRequest {
        id_hash: *id_hash,
        client_id: row.text("client_id")?,
        params: row.text("params")?,
        session_hash: row.opt_bytes("session_hash")?.map(|b| rows::hash32(&b)).transpose()?,
        expires_at: row.time("expires_at")?,
    };
    Ok((request.expires_at > now).then_some(request))
}
