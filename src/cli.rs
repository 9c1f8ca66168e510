//! The command line: `tessera serve | migrate | check | keys … | users … | teams … | clients … |
//! import | export | backup`.
//! (Benchmarks are a separate binary, `tessera-bench`, outside the product.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::crypto::keyring::KeyRing;
use crate::domain::SigningAlg;
use crate::service::op::keys::{SigningKeyInfo, SigningKeySettings, SigningKeys, published_keys};
use crate::startup::{Application, prepare_schema};
use crate::{service, store, telemetry};

/// `println!` for a command's output: when the reader has gone (`tessera users list | head -3`)
/// the rest of the output is dropped and the command ends with its own exit code, where
/// `println!` would panic (exit 101).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::print_line(format_args!($($arg)*)) };
}

/// `eprintln!` for a command's messages: a closed or broken stderr (`tessera … 2>&-`) drops them
/// instead of panicking, so the command still ends with its own exit code.
macro_rules! err {
    ($($arg:tt)*) => { $crate::cli::print_error(format_args!($($arg)*)) };
}

pub mod admin;
pub mod import;

/// Writes one line to stderr (see `err!`); a failure to write is ignored, there being nowhere
/// left to report it.
pub(crate) fn print_error(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes one line of a command's output to stdout (see `out!`): a closed pipe is not an error;
/// any other failure to write is reported and ends the process with status 1.
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            err!("tessera: cannot write the output: {error}");
            std::process::exit(1);
        }
        _ => {}
    }
}

/// Tessera: a self-hosted identity broker and user-provisioning service.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
pub struct Cli {
    /// A TOML configuration file; environment variables override its keys. Without it,
    /// `TESSERA_CONFIG` names the file (blank counts as unset, as for every variable).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve {
        /// Apply pending migrations before serving (the default on SQLite).
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration, connect, report pending migrations and broken data; exit
    /// non-zero on any problem.
    Check,
    /// Manage the key ring that encrypts secrets at rest, and the OpenID Provider's signing keys.
    Keys {
        /// What to do.
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// List, show, disable and enable users, against the configured database.
    Users {
        /// What to do.
        #[command(subcommand)]
        action: admin::UsersCommand,
    },
    /// List and create teams, against the configured database.
    Teams {
        /// What to do.
        #[command(subcommand)]
        action: admin::TeamsCommand,
    },
    /// List and show the OpenID Provider's registered clients, against the configured database.
    Clients {
        /// What to do.
        #[command(subcommand)]
        action: admin::ClientsCommand,
    },
    /// Provision identities in bulk from a JSON Lines or CSV file, as the admin bootstrap does;
    /// re-running it writes nothing for what it made already, so an interrupted import is resumed
    /// by running it again.
    Import(import::ImportArgs),
    /// Write every identity (issuer, subject, email, email_verified, name, provider) as JSON Lines or CSV,
    /// in the format `tessera import` reads.
    Export(import::ExportArgs),
    /// Write a consistent copy of the SQLite database to a new file, while Tessera keeps
    /// serving (PostgreSQL is backed up with its own tools: pg_dump, base backups).
    Backup {
        /// The file to write, readable by its owner only; it must not exist.
        to: PathBuf,
    },
}

/// Key actions.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-encrypt every stored secret (upstream tokens, connected accounts' tokens and
    /// credentials, webhook signing keys, signing keys' private keys) under the active (first)
    /// key of TESSERA_ENCRYPTION_KEYS, so that older keys can be removed afterwards.
    Rotate {
        /// The id of the key the fleet's ring now has first: nothing is done (exit 2) unless this
        /// ring's active key is that one (a shell still holding the previous ring would
        /// re-encrypt everything back under the old key).
        #[arg(long, value_name = "ID")]
        expect_active: Option<String>,
    },
    /// The keys Tessera signs its own tokens with, as an OpenID Provider.
    Signing {
        /// What to do.
        #[command(subcommand)]
        action: SigningCommand,
    },
}

/// Signing-key actions.
#[derive(Debug, Subcommand)]
pub enum SigningCommand {
    /// List the published signing keys: which one signs, which one is next, which are retired.
    List,
    /// Start a rotation: a new key is published now and signs once every cached JWKS lists it;
    /// the current key signs until then and stays published until its tokens have expired.
    Rotate {
        /// The algorithm (ES256, RS256 or EdDSA); oidc.signing_alg by default.
        #[arg(long, value_parser = parse_signing_alg)]
        alg: Option<SigningAlg>,
        /// Retire the current key at once: the new one signs now, before relying parties' cached
        /// JWKS list it (they refetch on its unknown kid). For a key whose ring key is lost, or a
        /// leak that cannot wait.
        #[arg(long)]
        now: bool,
    },
}

fn parse_signing_alg(value: &str) -> Result<SigningAlg, String> {
    value.parse().map_err(|()| format!("{value:?} is not one of ES256, RS256, EdDSA"))
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = cli.config.clone().or_else(|| {
        let named = std::env::var_os("TESSERA_CONFIG")?;
        (!named.to_string_lossy().trim().is_empty()).then(|| PathBuf::from(named))
    });
    let config = match Config::load(file.as_deref(), |key| std::env::var(key).ok()) {
        // An import logs no line per provisioned user, unless a log filter was asked for.
        Ok(mut config) if matches!(cli.command, Command::Import(_)) && !config.log.filter_given => {
            config.log.filter = "warn".to_owned();
            config
        }
        Ok(config) => config,
        Err(e) => {
            err!("tessera: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    telemetry::log_panics();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            err!("tessera: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli.command, config));
    // Do not wait long for stragglers such as a DNS lookup on a blocking thread.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn run(command: Command, config: Config) -> ExitCode {
    // `serve` handles its signals itself (it drains).
    if matches!(command, Command::Serve { .. }) {
        return run_command(command, config).await;
    }
    // Every other command stops at SIGTERM or Ctrl-C (exit 130): as a container's first process,
    // which gets no default action for them, it would otherwise run on until it is killed. What
    // it was writing is rolled back with its transaction. The command runs as a task of its own, so
    // that one blocked in a file's read or write (an export to a pipe nobody drains, an import
    // from a FIFO nobody writes to: see `cli::import::blocking`) does not hold up the wait.
    let stopped = signal();
    let command = tokio::spawn(run_command(command, config));
    tokio::select! {
        code = command => code.unwrap_or(ExitCode::FAILURE),
        () = stopped => {
            err!("tessera: interrupted");
            ExitCode::from(130)
        }
    }
}

/// A command, to its end.
async fn run_command(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Serve { migrate } => serve(config, migrate).await,
        Command::Migrate => migrate(config).await,
        Command::Check => {
            let report = service::check::run(&config).await;
            for finding in &report.findings {
                out!("{finding}");
            }
            if report.has_problems() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
        Command::Keys { action: KeysCommand::Rotate { expect_active } } => rotate_keys(config, expect_active).await,
        Command::Keys { action: KeysCommand::Signing { action } } => signing_keys(config, action).await,
        Command::Users { action } => admin::users(&config, action).await,
        Command::Teams { action } => admin::teams(&config, action).await,
        Command::Clients { action } => admin::clients(&config, action).await,
        Command::Import(args) => import::import(&config, args).await,
        Command::Export(args) => import::export(&config, args).await,
        Command::Backup { to } => backup(config, &to).await,
    }
}

async fn backup(config: Config, to: &std::path::Path) -> ExitCode {
    let url = config.database.url.expose();
    if config.database.url.backend() != crate::config::Backend::Sqlite {
        err!(
            "tessera: `backup` copies an SQLite database; back up PostgreSQL with its own tools (pg_dump, base backups)"
        );
        return ExitCode::from(2);
    }
    match store::sqlite_file(url) {
        Ok(Some(file)) if file.exists() => {}
        Ok(Some(_)) => {
            err!("tessera: there is no database at {} to back up", config.database.url.redacted());
            return ExitCode::from(2);
        }
        Ok(None) => {
            err!("tessera: an in-memory database cannot be backed up");
            return ExitCode::from(2);
        }
        Err(e) => return fail(&e),
    }
    // Absolute, so that SQLite cannot read the name as a URI (`file:…`).
    let target = match std::path::absolute(to) {
        Ok(target) if target.to_str().is_some() => target,
        _ => {
            err!("tessera: {} is not a usable path (absolute, UTF-8)", to.display());
            return ExitCode::from(2);
        }
    };
    // Checked first so that no copy is made in vain; `write_backup` never replaces it either.
    let written =
        if target.symlink_metadata().is_ok() { Err(BackupError::Exists) } else { write_backup(url, &target).await };
    match written {
        Ok(bytes) => {
            out!(
                "wrote a consistent copy of {} to {} ({bytes} bytes)",
                config.database.url.redacted(),
                target.display()
            );
            ExitCode::SUCCESS
        }
        Err(BackupError::Exists) => {
            err!("tessera: {} exists; name a new file", target.display());
            ExitCode::from(2)
        }
        Err(BackupError::File(what, e)) => {
            err!("tessera: cannot {what} {}: {e}", target.display());
            ExitCode::FAILURE
        }
        Err(BackupError::Store(e)) => fail(&e),
    }
}

/// Why [`write_backup`] failed.
enum BackupError {
    /// The target appeared meanwhile.
    Exists,
    /// A file operation failed: what it was, and why.
    File(&'static str, std::io::Error),
    /// The copy itself failed.
    Store(store::StoreError),
}

/// Copies the database into a new owner-only file beside `target` (`.tessera-backup.RANDOM.partial`),
/// flushes it to disk, and puts it in place as `target` only when complete: an interrupted backup
/// never leaves a partial file under the name of a good one, and an existing file is never
/// replaced. Returns the copy's size.
async fn write_backup(url: &str, target: &std::path::Path) -> Result<u64, BackupError> {
    let parent = target.parent().unwrap_or(std::path::Path::new("/"));
    // The directory as the kernel resolves it, so that SQLite (which opens the partial file by
    // name) and this function name the same file.
    let dir = std::fs::canonicalize(parent).map_err(|e| BackupError::File("find the directory of", e))?;
    let suffix: String = crate::crypto::random_bytes::<6>().iter().map(|b| format!("{b:02x}")).collect();
    let partial = dir.join(format!(".tessera-backup.{suffix}.partial"));
    let mut new_file = std::fs::OpenOptions::new();
    new_file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut new_file, 0o600);
    new_file.open(&partial).map_err(|e| BackupError::File("create a file beside", e))?;
    let written = async {
        let Some(path) = partial.to_str() else {
            return Err(BackupError::File("name a UTF-8 file beside", std::io::ErrorKind::InvalidInput.into()));
        };
        store::copy_sqlite(url, path).await.map_err(BackupError::Store)?;
        let copy = std::fs::File::open(&partial).map_err(|e| BackupError::File("reopen the copy of", e))?;
        copy.sync_all().map_err(|e| BackupError::File("flush the copy of", e))?;
        let bytes = copy.metadata().map_err(|e| BackupError::File("read the copy of", e))?.len();
        if bytes == 0 {
            let empty = std::io::Error::other("SQLite wrote nothing into it");
            return Err(BackupError::File("copy the database to", empty));
        }
        // A hard link refuses an existing target, where a rename would replace it. Where the
        // file system has no hard links, a rename after checking that the target is still absent.
        match std::fs::hard_link(&partial, target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(BackupError::Exists),
            Err(_) if target.symlink_metadata().is_ok() => return Err(BackupError::Exists),
            Err(_) => std::fs::rename(&partial, target).map_err(|e| BackupError::File("move the copy to", e))?,
        }
        if let Ok(dir) = std::fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(bytes)
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    written
}

async fn serve(config: Config, migrate: bool) -> ExitCode {
    // The main listener, and the metrics listener when there is one.
    let listeners = 1 + usize::from(config.metrics.own_listener().is_some());
    crate::http::serve::fit_open_file_limit(&config.server, listeners);
    // Signals are caught from the start: as the first process of a container, one with no
    // handler yet would be ignored, and a stop during start-up (connecting, migrating, making
    // keys) would wait for the kill. Such a stop ends start-up where it is, as a process
    // without handlers would: what the database had not committed rolls back.
    let mut stopped = tokio::spawn(signal());
    let built = tokio::select! {
        built = Application::build(&config, migrate) => built,
        _ = &mut stopped => {
            tracing::info!("stopped during start-up");
            return ExitCode::SUCCESS;
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(e) => return fail(&e),
    };
    // The server keeps what it needs (the admin tokens as digests only): the configuration,
    // with their plain text, is not kept for the life of the process.
    drop(config);
    let shutdown = async move {
        let _ = stopped.await;
        shutdown_started();
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn migrate(config: Config) -> ExitCode {
    let store = match store::connect(&config.database).await {
        Ok(store) => store,
        Err(e) => return fail(&crate::startup::connect_failed(&config, e)),
    };
    let before = match store.migration_status().await {
        Ok(status) => status,
        Err(e) => return fail(&e),
    };
    if let Err(e) = prepare_schema(store.as_ref(), true).await {
        return fail(&e);
    }
    if before.pending.is_empty() {
        out!("the database is up to date");
    } else {
        // Said of the database, not of this run: on PostgreSQL another `tessera migrate` may
        // have applied some of them while this one waited for the lock.
        out!("{} pending migration(s) are now applied:", before.pending.len());
        for name in &before.pending {
            out!("  {name}");
        }
    }
    store.close().await;
    ExitCode::SUCCESS
}

async fn rotate_keys(config: Config, expect_active: Option<String>) -> ExitCode {
    let Some(keyring) = config.encryption.clone() else {
        err!("tessera: no key ring is configured: set {}=<id>:<base64 key>[,…]", crate::config::ENCRYPTION_KEYS_VAR);
        return ExitCode::from(2);
    };
    if let Some(expected) = expect_active.filter(|id| id != keyring.active_id()) {
        err!(
            "tessera: the active (first) key of {} is {:?}, not {expected:?}: nothing was re-encrypted; run this \
             with the ring the instances now have, the new key first",
            crate::config::ENCRYPTION_KEYS_VAR,
            keyring.active_id()
        );
        return ExitCode::from(2);
    }
    let store = match open_store(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    out!("re-encrypting stored secrets under key {:?}", keyring.active_id());
    let mut progress = |kind: crate::store::SecretKind, done: u64, total: i64| {
        out!("{}: {done}/{total} rows", kind.table());
    };
    let report = match service::keys::rotate(store.as_ref(), &keyring, &mut progress).await {
        Ok(report) => report,
        Err(e) => return fail(&e),
    };
    let signing = match service::keys::rotate_signing_keys(store.as_ref(), &keyring).await {
        Ok(rotation) => rotation,
        Err(e) => return fail(&e),
    };
    store.close().await;
    let (mut failed, mut left) = (0, 0);
    let report = report.into_iter().map(|(kind, rotation)| (kind.table(), rotation));
    for (table, rotation) in report.chain([("signing_keys", signing)]) {
        let retired = match rotation.retired {
            0 => String::new(),
            n => format!(" ({n} retired that do not decrypt: never used again, left as they are)"),
        };
        out!(
            "{table}: {} re-encrypted, {} current, {} changed meanwhile, {} do not decrypt, {} left under another key{retired}",
            rotation.rotated,
            rotation.current,
            rotation.raced,
            rotation.failed,
            rotation.left
        );
        failed += rotation.failed;
        left += rotation.left;
    }
    if failed > 0 {
        err!(
            "tessera: {failed} value(s) do not decrypt with the ring (under the active key's id, a key replaced \
             under the same id?); keep the old keys until they are fixed"
        );
    }
    if left > 0 {
        err!(
            "tessera: {left} value(s) were still being written under another key: give every instance the new \
             ring (new key first), then run this again; keep the old keys until it succeeds"
        );
    }
    if failed > 0 || left > 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn signing_keys(config: Config, action: SigningCommand) -> ExitCode {
    // Listing decrypts nothing; rotating encrypts the new private key.
    let keyring = match (&action, config.encryption.clone()) {
        (SigningCommand::List, keyring) => keyring,
        (SigningCommand::Rotate { .. }, Some(keyring)) => Some(keyring),
        (SigningCommand::Rotate { .. }, None) => {
            err!(
                "tessera: signing keys are stored encrypted, and no key ring is configured: set {}=<id>:<base64 key>[,…]",
                crate::config::ENCRYPTION_KEYS_VAR
            );
            return ExitCode::from(2);
        }
    };
    let store = match open_store(&config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let done = match (action, keyring) {
        (SigningCommand::Rotate { alg, now }, Some(keyring)) => {
            rotate_signing_key(store.clone(), keyring, &config, alg.unwrap_or(config.oidc.signing_alg), now).await
        }
        _ => list_signing_keys(store.as_ref()).await,
    };
    store.close().await;
    done
}

async fn list_signing_keys(store: &dyn store::Store) -> ExitCode {
    let list = match published_keys(store).await {
        Ok(list) => list,
        Err(e) => return fail(&e),
    };
    if list.is_empty() {
        out!(
            "no signing key yet: `tessera serve` makes the first key of its algorithm at start-up (or `tessera keys signing rotate` now)"
        );
        return ExitCode::SUCCESS;
    }
    out!(
        "{:<44} {:<6} {:<8} {:<20} {:<20} {:<20} unpublish_at",
        "kid",
        "alg",
        "status",
        "created_at",
        "signs_from",
        "retired_at"
    );
    for key in &list {
        print_key(key);
    }
    ExitCode::SUCCESS
}

async fn rotate_signing_key(
    store: Arc<dyn store::Store>,
    keyring: Arc<KeyRing>,
    config: &Config,
    alg: SigningAlg,
    at_once: bool,
) -> ExitCode {
    // Whether the algorithm has a key to rotate from, or gets its first.
    let had_key = match published_keys(store.as_ref()).await {
        Ok(list) => list.iter().any(|k| k.alg == alg && k.retired_at.is_none()),
        Err(e) => return fail(&e),
    };
    let ring_key = keyring.active_id().to_owned();
    // Also when a key does not decrypt with this ring: rotating is the way to retire it.
    let keys = match SigningKeys::open(store, keyring, SigningKeySettings::from_config(&config.oidc)).await {
        Ok(keys) => keys,
        Err(e) => return fail(&e),
    };
    // Judged by this command's key ring, which may not be the instances': retiring at once is
    // asked for, never inferred. Without it, a key this ring cannot read (of any algorithm) is
    // refused: most often the command runs with another ring than the servers', and a key it
    // made would be one that no server can read (every instance would then fail its readiness).
    // With it — a ring key lost for good, every key under it to retire — each algorithm's own
    // rotation goes ahead.
    let ring = crate::config::ENCRYPTION_KEYS_VAR;
    let (own, other) = (keys.unusable_key_of(|a| a == alg), keys.unusable_key_of(|a| a != alg));
    if at_once {
        // Retired at once all the same — but a ring other than the servers' would make a key
        // none of them can read: said, with the ring key that encrypts it.
        if let Some((_, unusable)) = own {
            out!(
                "note: {unusable}; the new key is encrypted under ring key {ring_key:?}, which every server's \
                 {ring} must hold"
            );
        }
        if let Some((of, unusable)) = other {
            out!("note: {unusable}: rotate it too, with --alg {} --now, if its ring key is lost", of.as_str());
        }
    } else if let Some((of, unusable)) = own.or(other) {
        err!(
            "tessera: {unusable}: run this with the servers' {ring} (a key made under another ring is one \
             no server can read); if its ring key is lost for good, retire it at once with `tessera keys \
             signing rotate --alg {} --now`",
            of.as_str()
        );
        return ExitCode::from(2);
    }
    let key = match keys.rotate(alg, at_once).await {
        Ok(key) => key,
        Err(e) => return fail(&e),
    };
    let published_for = keys.settings().published_after_retirement().as_secs();
    if !had_key {
        out!("made the first {} key, {}; it signs at once", alg.as_str(), key.kid);
    } else if key.signs_from <= key.created_at {
        out!(
            "new {} key {} signs at once; the current key is retired (a sound one stays published \
             {published_for} s, for the tokens it signed)",
            alg.as_str(),
            key.kid,
        );
    } else {
        out!(
            "new {} key {} is published now and signs from {}; the current key signs until then, \
             and stays published {published_for} s longer",
            alg.as_str(),
            key.kid,
            time(Some(key.signs_from)),
        );
    }
    ExitCode::SUCCESS
}

fn print_key(key: &SigningKeyInfo) {
    out!(
        "{:<44} {:<6} {:<8} {:<20} {:<20} {:<20} {}",
        key.kid,
        key.alg.as_str(),
        key.status.as_str(),
        time(Some(key.created_at)),
        time(Some(key.signs_from)),
        time(key.retired_at),
        time(key.unpublish_at)
    );
}

pub(crate) fn time(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    time.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Connects to the configured database and checks that its schema is current (never migrates:
/// that is `tessera migrate`'s, or `serve`'s with `database.auto_migrate`).
pub(crate) async fn open_store(config: &Config) -> Result<Arc<dyn crate::store::Store>, ExitCode> {
    // Reading commands (and `import --dry-run`) never create a database: a mistyped path would
    // otherwise leave an empty file behind and blame pending migrations.
    if store::sqlite_file_missing(&config.database.url).map_err(|e| fail(&e))? {
        err!(
            "tessera: the SQLite database {} does not exist; `tessera migrate` or `tessera serve` creates it",
            config.database.url
        );
        return Err(ExitCode::FAILURE);
    }
    let store = store::connect(&config.database).await.map_err(|e| fail(&crate::startup::connect_failed(config, e)))?;
    prepare_schema(store.as_ref(), false).await.map_err(|e| fail(&e))?;
    Ok(store)
}

/// Prints an error with its causes and returns a failing exit code.
pub(crate) fn fail(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    err!("tessera: {}", crate::error::Chain(error));
    ExitCode::FAILURE
}

/// After the first SIGTERM or Ctrl-C, which starts the drain: says so, and makes a second one
/// during the drain stop the process at once (exit 1), as an operator who presses Ctrl-C again
/// expects.
fn shutdown_started() {
    tracing::info!("shutting down; a second signal stops at once");
    tokio::spawn(async {
        signal().await;
        tracing::warn!("a second signal during the drain: stopping at once");
        std::process::exit(1);
    });
}

/// The next SIGTERM or Ctrl-C. The handlers are installed here, before the future is first
/// polled: one installed only when a spawned task first ran would leave a window at start-up
/// (the database connection already under way) in which a SIGTERM kills the process.
#[cfg(unix)]
fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn next(signal: Option<Signal>) {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let (terminate, interrupt) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    async move {
        tokio::select! {
            () = next(terminate) => {},
            () = next(interrupt) => {},
        }
    }
}

/// The next Ctrl-C.
#[cfg(not(unix))]
fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
