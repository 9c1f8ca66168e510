//! Migrations built into the binary, one list per backend (added in pairs, append-only), and the
//! comparison with what a database has applied.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The table sqlx records applied migrations in.
pub(super) const TABLE: &str = "_sqlx_migrations";

/// One migration file embedded at compile time.
pub(super) struct Embedded {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Builds a migrator from embedded migrations.
pub(super) fn migrator(list: &'static [Embedded]) -> Migrator {
    Migrator::with_migrations(
        list.iter()
            .map(|m| {
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    m.sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// A migration as recorded by the database.
pub(super) struct Applied {
    pub version: i64,
    pub checksum: Vec<u8>,
    pub success: bool,
}

/// How a database's schema compares with this binary's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// How many of this binary's migrations are applied.
    pub applied: usize,
    /// Migrations of this binary not yet applied, as `version_description`.
    pub pending: Vec<String>,
    /// Versions applied to the database that this binary does not know (a newer binary ran).
    pub unknown: Vec<i64>,
    /// Versions whose applied SQL differs from this binary's (an edited migration).
    pub modified: Vec<i64>,
    /// Versions recorded as failed.
    pub failed: Vec<i64>,
}

impl MigrationStatus {
    /// Compares recorded migrations with a migrator's list.
    pub(super) fn compare(migrator: &Migrator, applied: &[Applied]) -> Self {
        let mut status = MigrationStatus::default();
        for migration in migrator.iter() {
            match applied.iter().find(|a| a.version == migration.version) {
                None => status.pending.push(format!("{}_{}", migration.version, migration.description)),
                Some(a) if !a.success => status.failed.push(a.version),
                Some(a) if a.checksum != *migration.checksum => status.modified.push(a.version),
                Some(_) => status.applied += 1,
            }
        }
        status.unknown = applied.iter().filter(|a| !migrator.version_exists(a.version)).map(|a| a.version).collect();
        status
    }

    /// Whether the schema is exactly what this binary expects.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.modified.is_empty() && self.failed.is_empty()
    }

    /// What is wrong with the schema beyond pending migrations, one sentence per kind (versions
    /// this binary does not know, edited ones, failed ones); empty when only pending ones, or
    /// nothing, stand between the database and this binary. Start-up and `tessera check` both
    /// say it in these words.
    pub fn problems(&self) -> Vec<String> {
        let list = |versions: &[i64]| versions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let mut problems = Vec::new();
        if !self.unknown.is_empty() {
            problems.push(format!(
                "migration(s) {} are not known to this binary (a newer release applied them: run that one)",
                list(&self.unknown)
            ));
        }
        if !self.modified.is_empty() {
            problems.push(format!(
                "migration(s) {} differ from this binary's (edited after they were applied)",
                list(&self.modified)
            ));
        }
        if !self.failed.is_empty() {
            problems.push(format!("migration(s) {} are recorded as failed; repair them by hand", list(&self.failed)));
        }
        problems
    }

    /// Whether only pending migrations stand between the database and this binary (so `migrate`
    /// would fix it).
    pub fn only_pending(&self) -> bool {
        self.unknown.is_empty() && self.modified.is_empty() && self.failed.is_empty()
    }
}
