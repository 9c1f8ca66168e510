//! `tessera check`: validates the configuration, connects, reports pending migrations and broken
//! data invariants. Any finding of severity [`Severity::Problem`] makes the command fail.

use std::fmt;
use std::sync::Arc;

use crate::config::Config;
use crate::domain::Issuer;
use crate::error::Chain;
use crate::store::{self, Store};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// All good.
    Ok,
    /// Worth a look; does not fail the check.
    Warning,
    /// Broken; fails the check.
    Problem,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// What was found, and what to do about it.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "problem",
        };
        write!(f, "{label:<8} {}", self.message)
    }
}

/// The findings of a check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every finding, in order.
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding { severity, message: message.into() });
    }

    /// Whether any finding is a problem.
    pub fn has_problems(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Problem)
    }
}

/// Runs every check against the configured database.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    report.push(
        Severity::Ok,
        format!(
            "configuration: listen {}, database {}, {} issuer(s), {} admin token(s)",
            config.listen,
            config.database.url,
            config.issuers.len(),
            config.admin_tokens.len()
        ),
    );
    // What `serve` logs at start-up (deprecated settings, settings that do nothing), said here
    // too: a check read from its output must not miss them.
    for warning in config.warnings.iter().cloned().chain(store::url_warnings(&config.database)) {
        report.push(Severity::Warning, warning);
    }
    if config.admin_tokens.is_empty() {
        report.push(Severity::Warning, "no admin token configured (TESSERA_ADMIN_TOKEN): the admin API is closed");
    }
    if config.issuers.is_empty() {
        report
            .push(Severity::Warning, "no issuer configured (TESSERA_ALLOWED_ISSUERS): bootstrap refuses every issuer");
    }
    for issuer in config.issuers_without_audiences() {
        report.push(Severity::Warning, format!("issuer {} {}", issuer.issuer, crate::config::NO_AUDIENCES));
    }
    if store::sqlite_file_missing(&config.database.url).unwrap_or(false) {
        let missing = format!("the SQLite database {} does not exist yet", config.database.url);
        match (config.database.auto_migrate, store::sqlite_file_uncreatable(&config.database.url)) {
            (_, Some(why)) => report.push(Severity::Problem, format!("{missing}, and cannot be created: {why}")),
            (true, None) => report.push(Severity::Warning, format!("{missing}; `tessera serve` creates it")),
            (false, None) => report.push(
                Severity::Problem,
                format!("{missing}; `tessera migrate` creates it (database.auto_migrate is off)"),
            ),
        }
        return report;
    }
    let store = match store::connect(&config.database).await {
        Ok(store) => store,
        Err(e) => {
            report.push(Severity::Problem, format!("cannot connect to {}: {}", config.database.url, Chain(&e)));
            return report;
        }
    };
    let schema_usable = check_store(store.as_ref(), config, &mut report).await;
    // Against a schema that is missing, behind or ahead, every read would only repeat that.
    if schema_usable {
        check_signing_keys(&store, config, &mut report).await;
        check_config_clients(store.as_ref(), config, &mut report).await;
    } else {
        // Said, so that a check that passes with pending migrations (which `serve` applies)
        // does not read as if these held too.
        let unchecked: Vec<&str> = [
            (config.auth.public_url.is_some() && config.encryption.is_some()).then_some("the signing keys"),
            (!config.oidc.clients.is_empty()).then_some("the ids of [[oidc.clients]]"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !unchecked.is_empty() {
            report.push(
                Severity::Warning,
                format!("{} are not checked: the schema is not this binary's yet", unchecked.join(" and ")),
            );
        }
    }
    store.close().await;
    report
}

/// Whether a client of the configuration file has the id of one registered through the admin
/// API: `tessera serve` refuses to start then (it would not take over an app it did not make).
async fn check_config_clients(store: &dyn Store, config: &Config, report: &mut Report) {
    for configured in &config.oidc.clients {
        let id = &configured.client.id;
        match store.client(id).await {
            Ok(Some(stored)) if !stored.from_config => report.push(
                Severity::Problem,
                format!(
                    "the client id {} of [[oidc.clients]] is taken by a client registered through the admin API: \
                     rename one of them (`tessera serve` refuses to start)",
                    id.as_str()
                ),
            ),
            Ok(_) => {}
            Err(e) => report.push(Severity::Problem, format!("cannot read the client {}: {}", id.as_str(), Chain(&e))),
        }
    }
}

/// With the OpenID Provider on, whether the stored signing keys that sign now or will decrypt
/// with this configuration's key ring: `tessera serve` refuses to start (or, for a key made
/// since, to be ready) otherwise; and whether one of them has a damaged row (which does not stop
/// `serve`, but its algorithm's signatures fail until it is rotated away).
async fn check_signing_keys(store: &Arc<dyn Store>, config: &Config, report: &mut Report) {
    let (Some(_), Some(keyring)) = (&config.auth.public_url, &config.encryption) else { return };
    let settings = crate::service::op::keys::SigningKeySettings::from_config(&config.oidc);
    match crate::service::op::keys::SigningKeys::open(store.clone(), keyring.clone(), settings).await {
        Err(e) => report.push(Severity::Problem, format!("cannot read the signing keys: {}", Chain(&e))),
        Ok(keys) => {
            match keys.unusable_key_of(|_| true) {
                Some((alg, unusable)) => report.push(
                    Severity::Problem,
                    format!(
                        "{unusable}: add the ring key that encrypted it, or, if that is lost for good, retire the key \
                         at once (`tessera keys signing rotate --alg {} --now`)",
                        alg.as_str()
                    ),
                ),
                None => report.push(Severity::Ok, "the signing keys decrypt with this key ring"),
            }
            if let Some(damaged) = keys.damaged_key() {
                let fix = "its row was changed since it was made; rotate it away (`tessera keys signing rotate`)";
                report.push(Severity::Problem, format!("{damaged}: {fix}"));
            }
        }
    }
}

/// The database's reachability, migrations and data invariants; whether its schema is this
/// binary's (reachable, migrated, nothing pending, unknown, changed or failed).
async fn check_store(store: &dyn Store, config: &Config, report: &mut Report) -> bool {
    if let Err(e) = store.ping().await {
        report.push(Severity::Problem, format!("the database does not answer: {}", Chain(&e)));
        return false;
    }
    report.push(Severity::Ok, format!("database reachable ({})", store.backend().name()));
    let status = match store.migration_status().await {
        Ok(status) => status,
        Err(e) => {
            report.push(Severity::Problem, format!("cannot read the migration history: {e}"));
            return false;
        }
    };
    let usable = status.applied > 0 && status.is_current();
    if status.pending.is_empty() {
        report.push(Severity::Ok, format!("migrations: {} applied, none pending", status.applied));
    } else {
        let pending = format!("{} pending migration(s): {}", status.pending.len(), status.pending.join(", "));
        // What `serve` does with them: applies them itself (`database.auto_migrate`, SQLite's
        // default), or refuses to start.
        match config.database.auto_migrate {
            true => report.push(
                Severity::Warning,
                format!("{pending}; `tessera serve` applies them at start-up (database.auto_migrate)"),
            ),
            false => report.push(Severity::Problem, format!("{pending}; run `tessera migrate`")),
        }
    }
    for problem in status.problems() {
        report.push(Severity::Problem, problem);
    }
    if status.applied == 0 {
        return false;
    }
    let data = match store.data_report().await {
        Ok(data) => data,
        Err(e) => {
            report.push(Severity::Problem, format!("cannot inspect the data: {e}"));
            return usable;
        }
    };
    let mut clean = true;
    let mut count = |severity: Severity, n: i64, what: &str| {
        if n > 0 {
            clean = false;
            report.push(severity, format!("{n} {what}"));
        }
    };
    count(Severity::Problem, data.users_with_several_default_teams, "user(s) with more than one default team");
    count(Severity::Problem, data.users_without_identity, "user(s) without any identity");
    count(
        Severity::Warning,
        data.users_without_default_team,
        "user(s) without a default team (created at their next sign-in or bootstrap)",
    );
    count(Severity::Warning, data.teams_without_owner, "team(s) without an owner");
    for issuer in &data.issuers {
        match Issuer::parse(issuer) {
            Ok(normalised) if normalised.as_str() == issuer => {
                let known = config.issuers.iter().any(|c| c.issuer == normalised)
                    || config.providers.iter().any(|p| p.issuer == normalised);
                if !known {
                    clean = false;
                    report.push(
                        Severity::Warning,
                        format!("identities exist for {issuer}, which is neither an allowed issuer nor a provider's"),
                    );
                }
            }
            _ => {
                clean = false;
                report.push(
                    Severity::Problem,
                    format!("identities store the issuer {issuer:?} in a non-normalised form"),
                );
            }
        }
    }
    if clean {
        report.push(Severity::Ok, "data invariants hold");
    }
    usable
}
