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
use super::rows::{self, RowExt, domain_columns, identity_columns, impl_row_ext_common, team_columns, user_columns};
use super::{
    ClaimOutcome, CreateOutcome, DataReport, IdentityMatch, NewAccount, NewEvent, NewTeam, ReadFrom, Store, StoreError,
};
use crate::config::{Backend, DatabaseConfig};
use crate::domain::{
    DomainClaim, DomainName, Email, IdentityId, Issuer, Principal, Role, Subject, Team, TeamId, TeamRef, User, UserId,
    UserProfile,
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
        let Some(found) = self.get_user(user).await? else {
            return Ok(None);
        };
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
        Ok(Some(UserProfile { user: found, identities, teams }))
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
        let updated = sqlx::query("UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(user.as_uuid())
            .bind(disabled)
            .bind(micros(now))
            .execute(&self.writer)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
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

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
