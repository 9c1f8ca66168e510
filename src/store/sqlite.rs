//! The SQLite implementation of [`Store`]: an embedded file, created and migrated on first start.
//!
//! Writes go through a pool of exactly one connection and open with `BEGIN IMMEDIATE`, so write
//! transactions never fail with `SQLITE_BUSY` on a lock upgrade; reads use a separate pool and, in
//! WAL mode, never wait for the writer. Ids are 16-byte blobs and times integer microseconds.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::migrations::{self, Applied, Embedded, MigrationStatus};
use super::rows::{
    self, RowExt, domain_columns, identity_columns, impl_row_ext_common, profile_columns, team_columns, user_columns,
};
use super::{
    Activation, ClaimOutcome, ConnectToken, CreateOutcome, DataReport, EncryptedTokens, IdentityMatch, LinkOutcome,
    LoginState, MemberOutcome, NewAccount, NewEvent, NewLink, NewSession, NewTeam, PendingKey, ProfileSecrets,
    ReadFrom, RefreshLease, Refreshed, RemoveOutcome, SecretKind, SessionRecord, Store, StoreError, StoredSecret,
    UnlinkOutcome, decode_role,
};
use crate::config::{Backend, DatabaseConfig};
use crate::domain::{
    AuthProfile, DomainClaim, DomainName, Email, Identity, IdentityId, Issuer, Principal, ProfileId, Role, Slug,
    Subject, Team, TeamId, TeamRef, User, UserId, UserProfile,
};

static MIGRATIONS: &[Embedded] = &[
    Embedded {
        version: 1,
        description: "people_identities_teams",
        sql: include_str!("../../migrations/sqlite/0001_people_identities_teams.sql"),
    },
    Embedded {
        version: 2,
        description: "team_domains",
        sql: include_str!("../../migrations/sqlite/0002_team_domains.sql"),
    },
    Embedded { version: 3, description: "sign_in", sql: include_str!("../../migrations/sqlite/0003_sign_in.sql") },
    Embedded {
        version: 4,
        description: "connected_accounts",
        sql: include_str!("../../migrations/sqlite/0004_connected_accounts.sql"),
    },
    Embedded {
        version: 5,
        description: "token_version",
        sql: include_str!("../../migrations/sqlite/0005_token_version.sql"),
    },
];

/// Tessera's storage on an SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl RowExt for SqliteRow {
    impl_row_ext_common!();

    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        let micros: i64 = self.try_get(col)?;
        from_micros(micros)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get::<Option<i64>, _>(col)?.map(from_micros).transpose()
    }
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("time {micros} out of range")))
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// Whether the database file a `sqlite:` URL names exists already (in-memory databases do).
pub fn database_exists(url: &str) -> Result<bool, StoreError> {
    if is_in_memory(url) {
        return Ok(true);
    }
    Ok(SqliteConnectOptions::from_str(url)?.get_filename().exists())
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

impl SqliteStore {
    /// Opens (creating if needed) the database file the configuration names.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let url = config.url.expose();
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let in_memory = is_in_memory(url);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.max_connections.clamp(1, 8))
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options)
                .await?
        };
        Ok(Self { writer, reader })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Whether `user` is the only owner of `team`; `None` when they are not a member.
async fn sole_owner(
    tx: &mut Transaction<'static, Sqlite>,
    team: TeamId,
    user: UserId,
) -> Result<Option<bool>, StoreError> {
    let row = sqlx::query(
        "SELECT m.role = 'owner' AND
                (SELECT count(*) FROM memberships o WHERE o.team_id = m.team_id AND o.role = 'owner') = 1
         FROM memberships m WHERE m.team_id = ?1 AND m.user_id = ?2",
    )
    .bind(team.as_uuid())
    .bind(user.as_uuid())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|row| row.try_get::<bool, _>(0)).transpose()?)
}

/// Inserts `team` under the first free slug and makes `user` its owner, as their default team.
async fn insert_default_team(
    tx: &mut Transaction<'static, Sqlite>,
    user: UserId,
    team: &NewTeam,
    now: DateTime<Utc>,
) -> Result<Team, StoreError> {
    let mut slug = None;
    for candidate in &team.slug_candidates {
        let inserted = sqlx::query(
            "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (slug) DO NOTHING RETURNING id",
        )
        .bind(team.id.as_uuid())
        .bind(candidate.as_str())
        .bind(&team.name)
        .bind(micros(now))
        .fetch_optional(&mut **tx)
        .await?;
        if inserted.is_some() {
            slug = Some(candidate.clone());
            break;
        }
    }
    let slug = slug.ok_or(StoreError::Conflict { what: "team slug" })?;
    sqlx::query("INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES (?1, ?2, ?3, 1, ?4)")
        .bind(team.id.as_uuid())
        .bind(user.as_uuid())
        .bind(Role::Owner.as_str())
        .bind(micros(now))
        .execute(&mut **tx)
        .await?;
    Ok(Team { id: team.id, slug, name: team.name.clone(), created_at: now })
}

async fn insert_events(
    tx: &mut Transaction<'static, Sqlite>,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for event in events {
        sqlx::query("INSERT INTO outbox_events (id, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(event.id.as_uuid())
            .bind(event.topic)
            .bind(event.payload.to_string())
            .bind(micros(now))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
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

async fn insert_identity_event(
    tx: &mut Transaction<'static, Sqlite>,
    event: IdentityEvent<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO identity_events (id, user_id, identity_id, action, provider, issuer, subject, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(event.user.as_uuid())
    .bind(event.identity.as_uuid())
    .bind(event.action)
    .bind(event.provider)
    .bind(event.issuer.as_str())
    .bind(event.subject.as_str())
    .bind(micros(event.now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn identity_of(
    tx: &mut Transaction<'static, Sqlite>,
    identity: IdentityId,
    user: UserId,
) -> Result<Option<Identity>, StoreError> {
    let row =
        sqlx::query(concat!("SELECT ", identity_columns!(), " FROM identities i WHERE i.id = ?1 AND i.user_id = ?2"))
            .bind(identity.as_uuid())
            .bind(user.as_uuid())
            .fetch_optional(&mut **tx)
            .await?;
    row.as_ref().map(rows::identity).transpose()
}

async fn default_team_of(tx: &mut Transaction<'static, Sqlite>, user: UserId) -> Result<Option<Team>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        team_columns!(),
        " FROM memberships m JOIN teams t ON t.id = m.team_id WHERE m.user_id = ?1 AND m.is_default = 1"
    ))
    .bind(user.as_uuid())
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(rows::team).transpose()
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn migration_status(&self) -> Result<MigrationStatus, StoreError> {
        let migrator = migrations::migrator(MIGRATIONS);
        let exists = sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(migrations::TABLE)
            .fetch_optional(&self.reader)
            .await?
            .is_some();
        let applied = if exists {
            sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations")
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(|row| {
                    Ok(Applied { version: row.try_get(0)?, checksum: row.try_get(1)?, success: row.try_get(2)? })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus::compare(&migrator, &applied))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        migrations::migrator(MIGRATIONS).run(&self.writer).await?;
        Ok(())
    }

    async fn data_report(&self) -> Result<DataReport, StoreError> {
        let row = sqlx::query(
            "SELECT
               (SELECT count(*) FROM (SELECT user_id FROM memberships WHERE is_default = 1
                                      GROUP BY user_id HAVING count(*) > 1)) AS several_default,
               (SELECT count(*) FROM users u WHERE NOT EXISTS
                    (SELECT 1 FROM identities i WHERE i.user_id = u.id)) AS without_identity,
               (SELECT count(*) FROM users u WHERE NOT EXISTS
                    (SELECT 1 FROM memberships m WHERE m.user_id = u.id AND m.is_default = 1)) AS without_default,
               (SELECT count(*) FROM teams t WHERE NOT EXISTS
                    (SELECT 1 FROM memberships m WHERE m.team_id = t.id AND m.role = 'owner')) AS without_owner",
        )
        .fetch_one(&self.reader)
        .await?;
        let issuers = sqlx::query("SELECT DISTINCT issuer FROM identities ORDER BY issuer")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DataReport {
            users_with_several_default_teams: row.int("several_default")?,
            users_without_identity: row.int("without_identity")?,
            users_without_default_team: row.int("without_default")?,
            teams_without_owner: row.int("without_owner")?,
            issuers,
        })
    }

    async fn find_identity(&self, issuer: &Issuer, subject: &Subject) -> Result<Option<IdentityMatch>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT i.id AS identity_id, i.last_seen_at AS identity_last_seen_at, ",
            user_columns!(),
            ", ",
            team_columns!(),
            " FROM identities i
              JOIN users u ON u.id = i.user_id
              LEFT JOIN memberships m ON m.user_id = u.id AND m.is_default = 1
              LEFT JOIN teams t ON t.id = m.team_id
              WHERE i.issuer = ?1 AND i.subject = ?2"
        ))
        .bind(issuer.as_str())
        .bind(subject.as_str())
        .fetch_optional(&self.reader)
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
        let now = micros(account.now);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO users (id, email, email_verified, name, disabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
        )
        .bind(account.user_id.as_uuid())
        .bind(account.email.as_ref().map(Email::as_str))
        .bind(account.email_verified)
        .bind(account.name.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let linked = sqlx::query(
            "INSERT INTO identities
               (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (issuer, subject) DO NOTHING RETURNING user_id",
        )
        .bind(account.identity_id.as_uuid())
        .bind(account.user_id.as_uuid())
        .bind(account.issuer.as_str())
        .bind(account.subject.as_str())
        .bind(&account.provider)
        .bind(account.email.as_ref().map(Email::as_str))
        .bind(account.email_verified)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if linked.is_none() {
            tx.rollback().await?;
            return Ok(CreateOutcome::IdentityTaken);
        }
        let team = insert_default_team(&mut tx, account.user_id, &account.team, account.now).await?;
        insert_events(&mut tx, &account.events, account.now).await?;
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
    ) -> Result<Option<(Team, bool)>, StoreError> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT 1 FROM users WHERE id = ?1")
            .bind(user.as_uuid())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            tx.rollback().await?;
            return Ok(None);
        }
        if let Some(existing) = default_team_of(&mut tx, user).await? {
            tx.rollback().await?;
            return Ok(Some((existing, false)));
        }
        let created = insert_default_team(&mut tx, user, team, now).await?;
        tx.commit().await?;
        Ok(Some((created, true)))
    }

    async fn touch_identity(&self, identity: IdentityId, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE identities SET last_seen_at = ?2 WHERE id = ?1 AND last_seen_at < ?2")
            .bind(identity.as_uuid())
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn get_user(&self, user: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = ?1"))
            .bind(user.as_uuid())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn user_profile(&self, user: UserId, _from: ReadFrom) -> Result<Option<UserProfile>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", u.primary_identity_id AS primary_identity_id FROM users u WHERE u.id = ?1"
        ))
        .bind(user.as_uuid())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (found, chosen_primary) = (rows::user(&row)?, row.opt_uuid("primary_identity_id")?);
        let identities = sqlx::query(concat!(
            "SELECT ",
            identity_columns!(),
            " FROM identities i WHERE i.user_id = ?1 ORDER BY i.created_at, i.id"
        ))
        .bind(user.as_uuid())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(rows::identity)
        .collect::<Result<Vec<_>, _>>()?;
        let teams = sqlx::query(concat!(
            "SELECT ",
            team_columns!(),
            ", m.role AS role, m.is_default AS is_default
              FROM memberships m JOIN teams t ON t.id = m.team_id
              WHERE m.user_id = ?1 ORDER BY m.is_default DESC, m.created_at, t.id"
        ))
        .bind(user.as_uuid())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(rows::membership)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(rows::user_profile(found, chosen_primary, identities, teams)))
    }

    async fn principal(
        &self,
        issuer: &Issuer,
        subject: &Subject,
        _from: ReadFrom,
    ) -> Result<Option<Principal>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT i.id AS identity_id, i.last_seen_at AS identity_last_seen_at, ",
            user_columns!(),
            ", t.id AS team_id, t.slug AS team_slug, m.role AS role
              FROM identities i
              JOIN users u ON u.id = i.user_id
              LEFT JOIN memberships m ON m.user_id = u.id
              LEFT JOIN teams t ON t.id = m.team_id
              WHERE i.issuer = ?1 AND i.subject = ?2
              ORDER BY m.is_default DESC, m.created_at, t.id"
        ))
        .bind(issuer.as_str())
        .bind(subject.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows::principal(&rows)
    }

    async fn set_user_disabled(
        &self,
        user: UserId,
        disabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(user.as_uuid())
            .bind(disabled)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        if disabled {
            sqlx::query("DELETE FROM sessions WHERE user_id = ?1").bind(user.as_uuid()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.get_user(user).await
    }

    async fn find_team(&self, team: &TeamRef) -> Result<Option<Team>, StoreError> {
        let query = match team {
            TeamRef::Id(id) => {
                sqlx::query(concat!("SELECT ", team_columns!(), " FROM teams t WHERE t.id = ?1")).bind(id.as_uuid())
            }
            TeamRef::Slug(slug) => sqlx::query(concat!("SELECT ", team_columns!(), " FROM teams t WHERE t.slug = ?1"))
                .bind(slug.as_str().to_owned()),
        };
        let row = query.fetch_optional(&self.reader).await?;
        row.as_ref().map(rows::team).transpose()
    }

    async fn claim_domain(&self, claim: &DomainClaim) -> Result<ClaimOutcome, StoreError> {
        let row = sqlx::query(
            "INSERT INTO team_domains (domain, team_id, issuer, verified, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (domain) DO UPDATE
               SET issuer = excluded.issuer, verified = excluded.verified, updated_at = excluded.updated_at
               WHERE team_domains.team_id = excluded.team_id
             RETURNING created_at",
        )
        .bind(claim.domain.as_str())
        .bind(claim.team_id.as_uuid())
        .bind(claim.issuer.as_str())
        .bind(claim.verified)
        .bind(micros(claim.updated_at))
        .fetch_optional(&self.writer)
        .await?;
        let Some(row) = row else {
            return Ok(ClaimOutcome::ClaimedByAnotherTeam);
        };
        let created_at = row.time("created_at")?;
        let stored = DomainClaim { created_at, ..claim.clone() };
        Ok(if created_at == claim.updated_at { ClaimOutcome::Created(stored) } else { ClaimOutcome::Updated(stored) })
    }

    async fn team_domains(&self, team: TeamId) -> Result<Vec<DomainClaim>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            domain_columns!(),
            " FROM team_domains d WHERE d.team_id = ?1 ORDER BY d.domain"
        ))
        .bind(team.as_uuid())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(rows::domain_claim)
        .collect()
    }

    async fn release_domain(&self, team: TeamId, domain: &DomainName) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM team_domains WHERE team_id = ?1 AND domain = ?2")
            .bind(team.as_uuid())
            .bind(domain.as_str())
            .execute(&self.writer)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn domain_claim(&self, domain: &DomainName, _from: ReadFrom) -> Result<Option<DomainClaim>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", domain_columns!(), " FROM team_domains d WHERE d.domain = ?1"))
            .bind(domain.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::domain_claim).transpose()
    }

    async fn insert_login_state(&self, state: &LoginState) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO login_states
               (state_hash, provider, pkce_verifier, nonce, return_to, link_user_id, profile_id, profile_version,
                allow_account_change, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(&state.state_hash[..])
        .bind(&state.provider)
        .bind(&state.pkce_verifier)
        .bind(&state.nonce)
        .bind(&state.return_to)
        .bind(state.link_user.map(|u| u.as_uuid()))
        .bind(state.profile.map(|p| p.as_uuid()))
        .bind(state.profile_version)
        .bind(state.allow_account_change)
        .bind(micros(state.created_at))
        .bind(micros(state.expires_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn take_login_state(
        &self,
        state_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<LoginState>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM login_states WHERE state_hash = ?1
             RETURNING provider, pkce_verifier, nonce, return_to, link_user_id, profile_id, profile_version,
                       allow_account_change, created_at, expires_at",
        )
        .bind(&state_hash[..])
        .fetch_optional(&self.writer)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state = LoginState {
            state_hash: *state_hash,
            provider: row.text("provider")?,
            pkce_verifier: row.text("pkce_verifier")?,
            nonce: row.text("nonce")?,
            return_to: row.text("return_to")?,
            link_user: row.opt_uuid("link_user_id")?.map(UserId::from_uuid),
            profile: row.opt_uuid("profile_id")?.map(ProfileId::from_uuid),
            profile_version: row.try_get("profile_version")?,
            allow_account_change: row.flag("allow_account_change")?,
            created_at: row.time("created_at")?,
            expires_at: row.time("expires_at")?,
        };
        Ok((state.expires_at > now).then_some(state))
    }

    async fn insert_session(&self, session: &NewSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, identity_id, created_at, last_seen_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        )
        .bind(&session.token_hash[..])
        .bind(session.user_id.as_uuid())
        .bind(session.identity_id.map(|i| i.as_uuid()))
        .bind(micros(session.now))
        .bind(micros(session.expires_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.user_id, s.created_at, s.last_seen_at, s.expires_at, u.disabled
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| {
            Ok(SessionRecord {
                user_id: UserId::from_uuid(row.uuid("user_id")?),
                created_at: row.time("created_at")?,
                last_seen_at: row.time("last_seen_at")?,
                expires_at: row.time("expires_at")?,
                user_disabled: row.flag("disabled")?,
            })
        })
        .transpose()
    }

    async fn touch_session(&self, token_hash: &[u8; 32], now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET last_seen_at = ?2 WHERE token_hash = ?1 AND last_seen_at < ?2")
            .bind(&token_hash[..])
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM sessions WHERE token_hash = ?1")
            .bind(&token_hash[..])
            .execute(&self.writer)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn delete_expired(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let states = sqlx::query("DELETE FROM login_states WHERE expires_at <= ?1")
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?1 OR last_seen_at < ?2")
            .bind(micros(now))
            .bind(micros(idle_before))
            .execute(&self.writer)
            .await?;
        let links = sqlx::query("DELETE FROM connect_tokens WHERE expires_at <= ?1")
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        Ok(states.rows_affected() + sessions.rows_affected() + links.rows_affected())
    }

    async fn link_identity(&self, user: UserId, link: &NewLink) -> Result<LinkOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO identities
               (id, user_id, issuer, subject, provider, email, email_verified, created_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (issuer, subject) DO NOTHING RETURNING id",
        )
        .bind(link.identity_id.as_uuid())
        .bind(user.as_uuid())
        .bind(link.issuer.as_str())
        .bind(link.subject.as_str())
        .bind(&link.provider)
        .bind(link.email.as_ref().map(Email::as_str))
        .bind(link.email_verified)
        .bind(micros(link.now))
        .fetch_optional(&mut *tx)
        .await?;
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
            tx.commit().await?;
            return Ok(LinkOutcome::Linked(identity));
        }
        let existing = sqlx::query(concat!(
            "SELECT ",
            identity_columns!(),
            " FROM identities i WHERE i.issuer = ?1 AND i.subject = ?2"
        ))
        .bind(link.issuer.as_str())
        .bind(link.subject.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
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
        now: DateTime<Utc>,
    ) -> Result<UnlinkOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(found) = identity_of(&mut tx, identity, user).await? else {
            tx.rollback().await?;
            return Ok(UnlinkOutcome::NotFound);
        };
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM identities WHERE user_id = ?1")
            .bind(user.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
        if count <= 1 {
            tx.rollback().await?;
            return Ok(UnlinkOutcome::LastIdentity);
        }
        sqlx::query("DELETE FROM identities WHERE id = ?1").bind(identity.as_uuid()).execute(&mut *tx).await?;
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
        tx.commit().await?;
        Ok(UnlinkOutcome::Unlinked(found))
    }

    async fn set_primary_identity(
        &self,
        user: UserId,
        identity: IdentityId,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(found) = identity_of(&mut tx, identity, user).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        sqlx::query("UPDATE users SET primary_identity_id = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(user.as_uuid())
            .bind(identity.as_uuid())
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
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
        Ok(true)
    }

    async fn users_with_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        sqlx::query(concat!("SELECT ", user_columns!(), " FROM users u WHERE lower(u.email) = lower(?1) ORDER BY u.id"))
            .bind(email.as_str())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(rows::user)
            .collect()
    }

    async fn put_identity_tokens(&self, identity: IdentityId, tokens: &EncryptedTokens) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO identity_tokens (identity_id, access_token, refresh_token, expires_at, scopes, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (identity_id) DO UPDATE SET access_token = excluded.access_token,
               refresh_token = excluded.refresh_token, expires_at = excluded.expires_at,
               scopes = excluded.scopes, updated_at = excluded.updated_at",
        )
        .bind(identity.as_uuid())
        .bind(&tokens.access_token)
        .bind(tokens.refresh_token.as_deref())
        .bind(tokens.expires_at.map(micros))
        .bind(&tokens.scopes)
        .bind(micros(tokens.updated_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn identity_tokens(&self, identity: IdentityId) -> Result<Option<EncryptedTokens>, StoreError> {
        let row = sqlx::query(
            "SELECT access_token, refresh_token, expires_at, scopes, updated_at FROM identity_tokens WHERE identity_id = ?1",
        )
        .bind(identity.as_uuid())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| {
            Ok(EncryptedTokens {
                access_token: row.try_get("access_token")?,
                refresh_token: row.try_get("refresh_token")?,
                expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(from_micros).transpose()?,
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
        match kind {
            SecretKind::IdentityTokens => {
                let rows = sqlx::query(
                    "SELECT identity_id, access_token, refresh_token FROM identity_tokens
                     WHERE ?1 IS NULL OR identity_id > ?1 ORDER BY identity_id LIMIT ?2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
                let mut secrets = Vec::with_capacity(rows.len() * 2);
                for row in &rows {
                    let row_id = row.uuid("identity_id")?;
                    secrets.push(StoredSecret {
                        kind,
                        row_id,
                        column: "access_token",
                        ciphertext: row.try_get("access_token")?,
                    });
                    if let Some(refresh) = row.try_get::<Option<Vec<u8>>, _>("refresh_token")? {
                        secrets.push(StoredSecret { kind, row_id, column: "refresh_token", ciphertext: refresh });
                    }
                }
                Ok(secrets)
            }
            SecretKind::AuthProfiles => {
                let rows = sqlx::query(
                    "SELECT id, access_token, refresh_token FROM auth_profiles
                     WHERE (?1 IS NULL OR id > ?1) AND access_token IS NOT NULL ORDER BY id LIMIT ?2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
                let mut secrets = Vec::with_capacity(rows.len() * 2);
                for row in &rows {
                    let row_id = row.uuid("id")?;
                    if let Some(access) = row.opt_bytes("access_token")? {
                        secrets.push(StoredSecret { kind, row_id, column: "access_token", ciphertext: access });
                    }
                    if let Some(refresh) = row.opt_bytes("refresh_token")? {
                        secrets.push(StoredSecret { kind, row_id, column: "refresh_token", ciphertext: refresh });
                    }
                }
                Ok(secrets)
            }
        }
    }

    async fn replace_secret(&self, secret: &StoredSecret, new: &[u8]) -> Result<bool, StoreError> {
        let sql = match (secret.kind, secret.column) {
            (SecretKind::IdentityTokens, "access_token") => {
                "UPDATE identity_tokens SET access_token = ?3 WHERE identity_id = ?1 AND access_token = ?2"
            }
            (SecretKind::IdentityTokens, "refresh_token") => {
                "UPDATE identity_tokens SET refresh_token = ?3 WHERE identity_id = ?1 AND refresh_token = ?2"
            }
            (SecretKind::AuthProfiles, "access_token") => {
                "UPDATE auth_profiles SET access_token = ?3 WHERE id = ?1 AND access_token = ?2"
            }
            (SecretKind::AuthProfiles, "refresh_token") => {
                "UPDATE auth_profiles SET refresh_token = ?3 WHERE id = ?1 AND refresh_token = ?2"
            }
            (_, column) => return Err(StoreError::Corrupt(format!("no encrypted column {column}"))),
        };
        let updated =
            sqlx::query(sql).bind(secret.row_id).bind(&secret.ciphertext).bind(new).execute(&self.writer).await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn count_secrets(&self, kind: SecretKind) -> Result<i64, StoreError> {
        let sql = match kind {
            SecretKind::IdentityTokens => "SELECT count(*) FROM identity_tokens",
            SecretKind::AuthProfiles => "SELECT count(*) FROM auth_profiles WHERE access_token IS NOT NULL",
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&self.reader).await?)
    }

    async fn team_with_role(&self, team: &TeamRef, user: UserId) -> Result<Option<(Team, Option<Role>)>, StoreError> {
        let query = match team {
            TeamRef::Id(id) => sqlx::query(concat!(
                "SELECT ",
                team_columns!(),
                ", m.role AS role FROM teams t LEFT JOIN memberships m ON m.team_id = t.id AND m.user_id = ?2
                  WHERE t.id = ?1"
            ))
            .bind(id.as_uuid()),
            TeamRef::Slug(slug) => sqlx::query(concat!(
                "SELECT ",
                team_columns!(),
                ", m.role AS role FROM teams t LEFT JOIN memberships m ON m.team_id = t.id AND m.user_id = ?2
                  WHERE t.slug = ?1"
            ))
            .bind(slug.as_str().to_owned()),
        };
        let row = query.bind(user.as_uuid()).fetch_optional(&self.reader).await?;
        row.map(|row| Ok((rows::team(&row)?, row.opt_text("role")?.as_deref().map(decode_role).transpose()?)))
            .transpose()
    }

    async fn put_member(
        &self,
        team: TeamId,
        user: UserId,
        role: Role,
        now: DateTime<Utc>,
    ) -> Result<MemberOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let exists =
            sqlx::query("SELECT 1 FROM users WHERE id = ?1").bind(user.as_uuid()).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Ok(MemberOutcome::UserNotFound);
        }
        if let Some(sole_owner) = sole_owner(&mut tx, team, user).await? {
            if sole_owner && role != Role::Owner {
                tx.rollback().await?;
                return Ok(MemberOutcome::LastOwner);
            }
            sqlx::query("UPDATE memberships SET role = ?3 WHERE team_id = ?1 AND user_id = ?2")
                .bind(team.as_uuid())
                .bind(user.as_uuid())
                .bind(role.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(MemberOutcome::Updated);
        }
        sqlx::query(
            "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES (?1, ?2, ?3, FALSE, ?4)",
        )
        .bind(team.as_uuid())
        .bind(user.as_uuid())
        .bind(role.as_str())
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(MemberOutcome::Added)
    }

    async fn remove_member(&self, team: TeamId, user: UserId) -> Result<RemoveOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(sole_owner) = sole_owner(&mut tx, team, user).await? else {
            tx.rollback().await?;
            return Ok(RemoveOutcome::NotMember);
        };
        if sole_owner {
            tx.rollback().await?;
            return Ok(RemoveOutcome::LastOwner);
        }
        // The membership, and the former member's connect links and connect flows for the team.
        for sql in [
            "DELETE FROM memberships WHERE team_id = ?1 AND user_id = ?2",
            "DELETE FROM connect_tokens
             WHERE user_id = ?2 AND profile_id IN (SELECT id FROM auth_profiles WHERE team_id = ?1)",
            "DELETE FROM login_states
             WHERE link_user_id = ?2 AND profile_id IN (SELECT id FROM auth_profiles WHERE team_id = ?1)",
        ] {
            sqlx::query(sql).bind(team.as_uuid()).bind(user.as_uuid()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(RemoveOutcome::Removed)
    }

    async fn insert_profile(&self, profile: &AuthProfile) -> Result<Option<AuthProfile>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO auth_profiles
               (id, team_id, slug, connector_key, profile_kind, provider, status, created_by, display_name, scopes,
                pending_expires_at, version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12, ?12)
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
        .bind(profile.pending_expires_at.map(micros))
        .bind(micros(profile.created_at))
        .fetch_optional(&self.writer)
        .await?;
        Ok(inserted.map(|_| profile.clone()))
    }

    async fn pending_profile(&self, key: &PendingKey<'_>) -> Result<Option<AuthProfile>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            profile_columns!(),
            " FROM auth_profiles p
              WHERE p.team_id = ?1 AND p.connector_key = ?2 AND p.provider = ?3 AND p.profile_kind = ?4
                AND p.status = 'pending_auth' AND (p.profile_kind <> 'oauth_account' OR p.created_by = ?5)"
        ))
        .bind(key.team.as_uuid())
        .bind(key.connector_key)
        .bind(key.provider)
        .bind(key.kind.as_str())
        .bind(key.created_by.as_uuid())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn delete_expired_pending(
        &self,
        key: Option<&PendingKey<'_>>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let deleted = match key {
            None => {
                sqlx::query("DELETE FROM auth_profiles WHERE status = 'pending_auth' AND pending_expires_at <= ?1")
                    .bind(micros(now))
                    .execute(&self.writer)
                    .await?
            }
            Some(key) => {
                sqlx::query(
                    "DELETE FROM auth_profiles
                     WHERE team_id = ?1 AND connector_key = ?2 AND provider = ?3 AND profile_kind = ?4
                       AND status = 'pending_auth' AND (profile_kind <> 'oauth_account' OR created_by = ?5)
                       AND pending_expires_at <= ?6",
                )
                .bind(key.team.as_uuid())
                .bind(key.connector_key)
                .bind(key.provider)
                .bind(key.kind.as_str())
                .bind(key.created_by.as_uuid())
                .bind(micros(now))
                .execute(&self.writer)
                .await?
            }
        };
        Ok(deleted.rows_affected())
    }

    async fn profile_by_slug(&self, team: TeamId, slug: &Slug) -> Result<Option<AuthProfile>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            profile_columns!(),
            " FROM auth_profiles p WHERE p.team_id = ?1 AND p.slug = ?2 AND p.status <> 'revoked'"
        ))
        .bind(team.as_uuid())
        .bind(slug.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn profile(&self, id: ProfileId) -> Result<Option<AuthProfile>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", profile_columns!(), " FROM auth_profiles p WHERE p.id = ?1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::profile).transpose()
    }

    async fn team_profiles(&self, team: TeamId) -> Result<Vec<AuthProfile>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            profile_columns!(),
            " FROM auth_profiles p WHERE p.team_id = ?1 AND p.status <> 'revoked' ORDER BY p.created_at, p.id"
        ))
        .bind(team.as_uuid())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(rows::profile)
        .collect()
    }

    async fn mint_connect_token(&self, token: &ConnectToken) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM connect_tokens WHERE profile_id = ?1")
            .bind(token.profile.as_uuid())
            .execute(&mut *tx)
            .await?;
        // A pending profile outlives its newest link, so that the janitor does not delete both.
        sqlx::query(
            "UPDATE auth_profiles SET pending_expires_at = MAX(pending_expires_at, ?2)
             WHERE id = ?1 AND status = 'pending_auth'",
        )
        .bind(token.profile.as_uuid())
        .bind(micros(token.expires_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO connect_tokens (token_hash, profile_id, user_id, allow_account_change, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&token.token_hash[..])
        .bind(token.profile.as_uuid())
        .bind(token.user.as_uuid())
        .bind(token.allow_account_change)
        .bind(micros(token.created_at))
        .bind(micros(token.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError> {
        let row = sqlx::query(
            "SELECT profile_id, user_id, allow_account_change, created_at, expires_at FROM connect_tokens
             WHERE token_hash = ?1 AND expires_at > ?2",
        )
        .bind(&token_hash[..])
        .bind(micros(now))
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| rows::connect_token(&row, token_hash)).transpose()
    }

    async fn take_connect_token(
        &self,
        token_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<ConnectToken>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM connect_tokens WHERE token_hash = ?1
             RETURNING profile_id, user_id, allow_account_change, created_at, expires_at",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.writer)
        .await?;
        let token = row.map(|row| rows::connect_token(&row, token_hash)).transpose()?;
        Ok(token.filter(|t| t.expires_at > now))
    }

    async fn profile_secrets(&self, id: ProfileId) -> Result<Option<ProfileSecrets>, StoreError> {
        let row = sqlx::query(
            "SELECT status, token_version, access_token, refresh_token, access_token_expires_at,
                    refresh_lease_owner, refresh_lease_until
             FROM auth_profiles WHERE id = ?1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::profile_secrets).transpose()
    }

    async fn activate_profile(
        &self,
        id: ProfileId,
        expected_version: i64,
        activation: &Activation,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE auth_profiles SET status = 'active', access_token = ?3,
                    refresh_token = COALESCE(?4, CASE WHEN upstream_account_id = ?6 THEN refresh_token END),
                    access_token_expires_at = ?5, upstream_account_id = ?6, scopes = ?7, pending_expires_at = NULL,
                    refresh_lease_owner = NULL, refresh_lease_until = NULL, version = version + 1,
                    token_version = token_version + 1, updated_at = ?8
             WHERE id = ?1 AND version = ?2 AND status <> 'revoked'",
        )
        .bind(id.as_uuid())
        .bind(expected_version)
        .bind(&activation.access_token)
        .bind(activation.refresh_token.as_deref())
        .bind(activation.expires_at.map(micros))
        .bind(&activation.upstream_account_id)
        .bind(activation.scopes.join(" "))
        .bind(micros(activation.now))
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn acquire_refresh_lease(
        &self,
        id: ProfileId,
        version: i64,
        lease: &RefreshLease,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE auth_profiles SET refresh_lease_owner = ?3, refresh_lease_until = ?4
             WHERE id = ?1 AND token_version = ?2 AND status = 'active'
               AND (refresh_lease_until IS NULL OR refresh_lease_until < ?5)",
        )
        .bind(id.as_uuid())
        .bind(version)
        .bind(lease.owner)
        .bind(micros(lease.until))
        .bind(micros(lease.now))
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn complete_refresh(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        refreshed: &Refreshed,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE auth_profiles SET access_token = ?3, refresh_token = COALESCE(?4, refresh_token),
                    access_token_expires_at = ?5, refresh_lease_owner = NULL, refresh_lease_until = NULL,
                    token_version = token_version + 1, updated_at = ?6
             WHERE id = ?1 AND refresh_lease_owner = ?2",
        )
        .bind(id.as_uuid())
        .bind(owner)
        .bind(&refreshed.access_token)
        .bind(refreshed.refresh_token.as_deref())
        .bind(refreshed.expires_at.map(micros))
        .bind(micros(refreshed.now))
        .execute(&self.writer)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn release_refresh_lease(
        &self,
        id: ProfileId,
        owner: uuid::Uuid,
        needs_reauth: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = if needs_reauth {
            "UPDATE auth_profiles SET refresh_lease_owner = NULL, refresh_lease_until = NULL, status = 'needs_reauth',
                    token_version = token_version + 1, updated_at = ?3
             WHERE id = ?1 AND refresh_lease_owner = ?2"
        } else {
            "UPDATE auth_profiles SET refresh_lease_owner = NULL, refresh_lease_until = NULL
             WHERE id = ?1 AND refresh_lease_owner = ?2 AND ?3 IS NOT NULL"
        };
        sqlx::query(sql).bind(id.as_uuid()).bind(owner).bind(micros(now)).execute(&self.writer).await?;
        Ok(())
    }

    async fn revoke_profile(&self, id: ProfileId, now: DateTime<Utc>) -> Result<Option<ProfileSecrets>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT status, token_version, access_token, refresh_token, access_token_expires_at,
                    refresh_lease_owner, refresh_lease_until
             FROM auth_profiles WHERE id = ?1 AND status <> 'revoked'",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let secrets = rows::profile_secrets(&row)?;
        sqlx::query(
            "UPDATE auth_profiles SET status = 'revoked', access_token = NULL, refresh_token = NULL,
                    access_token_expires_at = NULL, refresh_lease_owner = NULL, refresh_lease_until = NULL,
                    version = version + 1, token_version = token_version + 1, updated_at = ?2
             WHERE id = ?1",
        )
        .bind(id.as_uuid())
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM connect_tokens WHERE profile_id = ?1").bind(id.as_uuid()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(secrets))
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
