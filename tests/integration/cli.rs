//! The `tessera` binary itself: `serve`, `migrate`, `check`, `keys signing` and the operators'
//! `users`, `teams`, `clients` and `backup` commands, run as child processes.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{Backend, TestDb, on_both_backends};

on_both_backends!(
    check_reports_pending_migrations_and_broken_invariants,
    keys_signing_rotate_makes_and_rotates_keys_that_keys_signing_list_shows,
    users_and_teams_commands_work_on_the_configured_database,
    clients_commands_list_and_show_registered_clients,
    concurrent_migrate_runs_apply_each_migration_once,
);

fn tessera(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TESSERA_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(command: &mut Command) -> Output {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command finished in time")
        .expect("the command ran");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Spawns a prepared `tessera … serve` command and waits for its "listening" log line; returns the child and address.
async fn serve(command: &mut Command) -> Result<(Child, String), Output> {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && value["fields"]["message"] == "listening"
            {
                return Some(value["fields"]["addr"].as_str().unwrap().to_owned());
            }
        }
        None
    })
    .await
    .expect("serve printed something in time");
    match found {
        Some(addr) => {
            // Keep draining the log, so the server never writes into a closed pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((child, addr))
        }
        None => {
            let status = child.wait().await.unwrap();
            Err(Output { code: status.code().unwrap_or(-1), stdout: String::new(), stderr: seen })
        }
    }
}

async fn stop(mut child: Child) -> i32 {
    let pid = child.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stopped in time").unwrap();
    status.code().unwrap_or(-1)
}

async fn get(addr: &str, path: &str) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(format!("http://{addr}{path}")).send().await.unwrap().status().as_u16()
}

/// A reader that went away (`tessera check | head -1`, or a closed stderr) is no error: the
/// command finishes and exits with its own status (`println!` would panic, exit 101).
#[tokio::test]
async fn output_to_a_closed_pipe_ends_with_the_commands_own_status() {
    let dir = tempfile::tempdir().unwrap();
    for args in [["migrate"], ["check"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status =
            tokio::time::timeout(Duration::from_secs(30), tessera(dir.path()).args(args).stdout(writer).status())
                .await
                .expect("the command finished in time")
                .unwrap();
        assert_eq!(status.code(), Some(0), "tessera {args:?}");
    }
    assert!(dir.path().join("tessera.db").exists(), "migrated, although nobody read what it said");
    // The same for a refusal whose message goes to a closed stderr: its own status, 2.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tessera(dir.path()).args(["teams", "create", "acme", " "]).stderr(writer).status(),
    )
    .await
    .expect("the command finished in time")
    .unwrap();
    assert_eq!(status.code(), Some(2), "a blank team name is refused, although nobody read why");
}

/// A stop during start-up (here: connecting to a database that never answers) ends the process
/// at once with status 0, handled — not left to the signal's default, which the first process
/// of a container does not get: it would wait for the kill.
#[tokio::test]
async fn a_sigterm_during_start_up_stops_it() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Takes connections and says nothing; says when the first came (the server is connecting).
    let (connected, mut connecting) = tokio::sync::mpsc::channel::<()>(1);
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
            let _ = connected.try_send(());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut child = tessera(dir.path())
        .env("TESSERA_DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/tessera"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), connecting.recv()).await.expect("it connects to the database");
    let pid = child.id().expect("still starting").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stopped at once").unwrap();
    assert_eq!(status.code(), Some(0), "handled, not killed by the signal: {status:?}");
    let mut log = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        log.push_str(&line);
    }
    assert!(log.contains("stopped during start-up"), "{log}");
    held.abort();
}

#[tokio::test]
async fn serve_with_no_configuration_creates_and_migrates_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // A reading command does not create the database it would read.
    let listed = run(tessera(dir.path()).args(["users", "list"])).await;
    assert_eq!(listed.code, 1, "{}", listed.stderr);
    assert!(listed.stderr.contains("does not exist"), "{}", listed.stderr);
    assert!(!dir.path().join("tessera.db").exists(), "nothing was created");
    // Nor does `serve` when it may not migrate: it says so, naming the database.
    let mut kept = tessera(dir.path());
    kept.env("TESSERA_LISTEN", "127.0.0.1:0").env("TESSERA_AUTO_MIGRATE", "false").arg("serve");
    let refused = serve(&mut kept).await.expect_err("no database to serve");
    assert!(refused.stderr.contains("tessera.db does not exist"), "{}", refused.stderr);
    assert!(refused.stderr.contains("tessera migrate"), "{}", refused.stderr);
    assert!(!dir.path().join("tessera.db").exists(), "nothing was created");
    // A database that cannot be reached is named (its password not).
    let unreachable = "postgres://tessera:hunter2@127.0.0.1:1/tessera?connect_timeout=2";
    for command in [vec!["migrate"], vec!["users", "list"]] {
        let failed = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", unreachable).args(&command)).await;
        assert_eq!(failed.code, 1, "{command:?}: {}", failed.stderr);
        assert!(failed.stderr.contains("127.0.0.1:1/tessera"), "{command:?}: {}", failed.stderr);
        assert!(!failed.stderr.contains("hunter2"), "{command:?}: {}", failed.stderr);
    }
    // A database file whose directory is missing cannot be created: `check` says so, and fails,
    // rather than promise that `serve` creates it; `serve` names the file and what to fix.
    let nowhere = format!("sqlite://{}/missing/tessera.db", dir.path().display());
    let checked = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", &nowhere).arg("check")).await;
    assert_eq!(checked.code, 1, "{}{}", checked.stdout, checked.stderr);
    let problem = format!("its directory {}/missing does not exist", dir.path().display());
    assert!(checked.stdout.contains(&problem), "{}", checked.stdout);
    let failed = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", &nowhere).arg("migrate")).await;
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("cannot create the SQLite database file"), "{}", failed.stderr);
    assert_eq!(failed.stderr.matches("No such file or directory").count(), 1, "said once: {}", failed.stderr);
    // `check` lists what is doubtful in the URL among its findings, not only in its log.
    let checked = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", unreachable).arg("check")).await;
    let ignored = checked.stdout.lines().find(|line| line.starts_with("warning") && line.contains("connect_timeout"));
    assert!(ignored.is_some(), "{}", checked.stdout);
    let (child, addr) =
        serve(tessera(dir.path()).env("TESSERA_LISTEN", "127.0.0.1:0").arg("serve")).await.unwrap_or_else(|o| {
            panic!("serve failed ({}): {}", o.code, o.stderr);
        });
    assert_eq!(get(&addr, "/readyz").await, 200);
    assert!(dir.path().join("tessera.db").exists(), "the default database is ./tessera.db");
    for file in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is its owner's only");
    }
    assert_eq!(stop(child).await, 0, "SIGTERM shuts down cleanly");

    let check = run(tessera(dir.path()).arg("check")).await;
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains(" applied, none pending"), "{}", check.stdout);
}

/// SIGTERM drains: a request in flight holds the process up to the shutdown timeout; a second
/// signal stops it at once.
#[tokio::test]
async fn a_second_signal_stops_a_draining_server_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // An issuer whose keys never come: a token of it is in flight until the fetch times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys = format!("http://{}/jwks", silent.local_addr().unwrap());
    let (reached, mut fetching) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
            reached.send_replace(true);
        }
    });
    let issuers = format!("[{{issuer = \"https://slow.example.com\", audiences = [\"api\"], jwks_uri = \"{keys}\"}}]");
    let mut command = tessera(dir.path());
    // A fetch that waits a minute: the request stays in flight whatever the machine's speed.
    command
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .env("TESSERA_ISSUERS", issuers)
        .env("TESSERA_JWKS__FETCH_TIMEOUT_MS", "60000")
        .arg("serve");
    let (mut child, addr) =
        serve(&mut command).await.unwrap_or_else(|o| panic!("serve failed ({}): {}", o.code, o.stderr));
    let part =
        |value: Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, value.to_string());
    let token = format!(
        "{}.{}.c2ln",
        part(serde_json::json!({"alg": "RS256", "kid": "k"})),
        part(serde_json::json!({"iss": "https://slow.example.com", "sub": "s", "aud": "api"}))
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let in_flight = tokio::spawn(client.post(format!("http://{addr}/v1/validate")).bearer_auth(token).send());
    // The server's own key fetch (at start-up) hangs at the silent issuer, and the request waits
    // behind it; nothing outside the server shows that the request got there, so a generous pause.
    tokio::time::timeout(Duration::from_secs(30), fetching.wait_for(|reached| *reached))
        .await
        .expect("a key fetch reached the issuer")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = child.id().expect("running").to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = child.try_wait().unwrap();
    assert!(early.is_none(), "the first signal drains: the request in flight holds it ({early:?})");
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait()).await.expect("stopped at once").unwrap();
    assert_eq!(status.code(), Some(1));
    in_flight.abort();
}

/// Outbound TLS trusts the roots the system provides (here `SSL_CERT_FILE`), read at the first
/// handshake: a server with no usable roots still starts, and refuses an issuer whose certificate
/// no root vouches for; with the issuer's CA among the roots it fetches the issuer's keys.
#[tokio::test]
async fn outbound_tls_reads_the_trust_roots_at_the_first_handshake() {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tls/");
    let no_cert_dir = tempfile::tempdir().unwrap();
    for (roots, trusted) in [("missing.pem", false), ("other-ca.pem", false), ("ca.pem", true)] {
        let mut issuer = TlsIssuer::start(certs).await;
        let dir = tempfile::tempdir().unwrap();
        let mut command = tessera(dir.path());
        command
            .env("TESSERA_LISTEN", "127.0.0.1:0")
            .env("TESSERA_ALLOWED_ISSUERS", &issuer.url)
            .env("TESSERA_AUDIENCES", "api")
            .env("SSL_CERT_FILE", format!("{certs}{roots}"))
            .env("SSL_CERT_DIR", no_cert_dir.path())
            .arg("serve");
        let (child, addr) = serve(&mut command).await.unwrap_or_else(|o| panic!("{roots}: {}", o.stderr));
        assert_eq!(get(&addr, "/readyz").await, 200, "{roots}: serving does not need trust roots");
        // The keys are fetched in the background at start-up: wait for the handshake.
        let seen = issuer.first_connection().await;
        if trusted {
            assert!(seen.starts_with("GET /"), "{roots}: the issuer answered a request, got {seen}");
        } else {
            assert_eq!(seen, "handshake refused", "{roots}: no request reaches an untrusted issuer");
        }
        assert_eq!(stop(child).await, 0);
    }
}

/// An issuer served over TLS with `server.pem` (signed by `ca.pem`), answering discovery and an
/// empty key set, and reporting what happened on each connection.
struct TlsIssuer {
    url: String,
    connections: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl TlsIssuer {
    async fn start(certs: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let chain = CertificateDer::pem_file_iter(format!("{certs}server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{certs}server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (report, connections) = tokio::sync::mpsc::unbounded_channel();
        let base = url.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, report, base) = (acceptor.clone(), report.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        let _ = report.send("handshake refused".to_owned());
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
                    let body = if line.contains("/.well-known/openid-configuration") {
                        serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string()
                    } else {
                        r#"{"keys":[]}"#.to_owned()
                    };
                    let _ = report.send(line);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { url, connections }
    }

    /// What happened on the first connection: `handshake refused`, or the request line.
    async fn first_connection(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(20), self.connections.recv())
            .await
            .expect("tessera connected to the issuer in time")
            .expect("the issuer is running")
    }
}

#[tokio::test]
async fn a_closed_log_pipe_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tessera(dir.path())
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("serve logs that it listens");
        let value: Value = serde_json::from_str(&line).unwrap();
        if value["fields"]["message"] == "listening" {
            break value["fields"]["addr"].as_str().unwrap().to_owned();
        }
    };
    drop(lines);
    for _ in 0..3 {
        assert_eq!(get(&addr, "/healthz").await, 200, "the server outlives its log reader");
    }
    assert_eq!(stop(child).await, 0);
}

/// A binary older than the schema (an instance of the previous release during a roll-out, say)
/// refuses to start, naming the migrations it does not know, and an edited one; `tessera check`
/// says the same in the same words.
#[tokio::test]
async fn serve_and_check_name_the_migrations_newer_than_the_binary_or_edited() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.store().await.close().await;
    let sql = db.sql().await;
    let future = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                  VALUES (9999, 'from a newer release', TRUE, X'00', 0)";
    sql.exec(future).await.unwrap();
    sql.exec("UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = 2").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut refused = tessera(dir.path());
    refused.env("TESSERA_DATABASE_URL", &db.url).env("TESSERA_LISTEN", "127.0.0.1:0");
    let output = serve(refused.arg("serve")).await.expect_err("serve refuses to start");
    assert_ne!(output.code, 0);
    let unknown = "migration(s) 9999 are not known to this binary";
    let edited = "migration(s) 2 differ from this binary's";
    assert!(output.stderr.contains(unknown) && output.stderr.contains(edited), "{}", output.stderr);
    let checked = run(&mut check(dir.path(), &db)).await;
    assert_eq!(checked.code, 1, "{}", checked.stdout);
    assert!(checked.stdout.contains(unknown) && checked.stdout.contains(edited), "{}", checked.stdout);
}

#[tokio::test]
async fn serve_refuses_pending_migrations_on_postgres_until_migrated() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let with_db = |command: &mut Command| {
        command.env("TESSERA_DATABASE_URL", &db.url).env("TESSERA_LISTEN", "127.0.0.1:0");
    };

    let mut refused = tessera(dir.path());
    with_db(&mut refused);
    let output = serve(refused.arg("serve")).await.expect_err("serve refuses to start");
    assert_ne!(output.code, 0);
    assert!(output.stderr.contains("pending migration"), "{}", output.stderr);
    assert!(output.stderr.contains("tessera migrate"), "{}", output.stderr);

    let mut migrate = tessera(dir.path());
    with_db(&mut migrate);
    let migrated = run(migrate.arg("migrate")).await;
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    assert!(migrated.stdout.contains("are now applied:\n  1_people_identities_teams\n"), "{}", migrated.stdout);
    let mut again = tessera(dir.path());
    with_db(&mut again);
    assert!(run(again.arg("migrate")).await.stdout.contains("up to date"));

    let mut started = tessera(dir.path());
    with_db(&mut started);
    let (child, addr) = serve(started.arg("serve")).await.unwrap_or_else(|o| panic!("{}", o.stderr));
    assert_eq!(get(&addr, "/readyz").await, 200);
    assert_eq!(stop(child).await, 0);
}

#[tokio::test]
async fn serve_migrates_postgres_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    for told in [&["serve", "--migrate"][..], &["serve"][..]] {
        let db = TestDb::new(Backend::Postgres).await;
        let mut command = tessera(dir.path());
        command.env("TESSERA_DATABASE_URL", &db.url).env("TESSERA_LISTEN", "127.0.0.1:0").args(told);
        if told.len() == 1 {
            command.env("TESSERA_AUTO_MIGRATE", "true");
        }
        let (child, addr) = serve(&mut command).await.unwrap_or_else(|o| panic!("{}", o.stderr));
        assert_eq!(get(&addr, "/readyz").await, 200);
        assert_eq!(stop(child).await, 0);
    }
}

/// Four `tessera migrate` runs at once on a new database (a deployment's job started twice, or
/// several instances with `--migrate`): every run succeeds, each migration is recorded once, and
/// the schema checks out.
async fn concurrent_migrate_runs_apply_each_migration_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut command = tessera(dir.path());
        command.env("TESSERA_DATABASE_URL", &db.url).arg("migrate");
        runs.spawn(async move { run(&mut command).await });
    }
    while let Some(output) = runs.join_next().await {
        let output = output.unwrap();
        assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    }
    let sql = db.sql().await;
    let folder = match backend {
        Backend::Sqlite => concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"),
        Backend::Postgres => concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"),
    };
    let migrations = std::fs::read_dir(folder).unwrap().count();
    assert_eq!(sql.count("_sqlx_migrations").await, migrations as i64);
    assert_eq!(sql.count("(SELECT DISTINCT version FROM _sqlx_migrations) AS applied").await, migrations as i64);
    let checked = run(&mut check(dir.path(), &db)).await;
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
}

/// A `tessera migrate` that finds the SQLite file's write lock held past the busy timeout (by
/// another process's long migration of it, say) waits for it to be let go, rather than exiting.
#[tokio::test]
async fn migrate_waits_for_another_process_holding_the_sqlite_file() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let migrate = || {
        let mut command = tessera(dir.path());
        command.env("TESSERA_DATABASE_URL", &db.url).arg("migrate");
        command
    };
    // A new file, in WAL mode as Tessera makes it, whose write lock another process holds.
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url).unwrap();
    let mut holder = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true)).await.unwrap();
    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut holder).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let mut second = migrate();
    let waiting = tokio::spawn(async move { run(&mut second).await });
    // Longer than the busy timeout (5 s), after which a statement gives up.
    tokio::time::sleep(Duration::from_secs(7)).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let second = waiting.await.unwrap();
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    assert!(second.stderr.contains("waiting for it to finish"), "OUT {} ERR {}", second.stdout, second.stderr);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap().count();
    assert_eq!(db.sql().await.count("_sqlx_migrations").await, migrations as i64);
}

/// A command other than `serve` stops at SIGTERM, saying so (exit 130), rather than being left to
/// the default action — which a container's first process does not get, so that it would run on
/// until killed. Here a `migrate` waiting for another process's hold of the SQLite file.
#[tokio::test]
async fn a_command_stops_at_sigterm_saying_so() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url).unwrap();
    let mut holder = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true)).await.unwrap();
    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut holder).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut holder).await.unwrap();
    let mut command = tessera(dir.path());
    command.env("TESSERA_DATABASE_URL", &db.url).arg("migrate").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Until it waits (its handlers installed long before).
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap() {
        let waiting = line.contains("waiting for it to finish");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("waiting for it to finish")), "{seen:?}");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stopped").unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push(line);
    }
    assert_eq!(status.code(), Some(130), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("tessera: interrupted")), "{seen:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

/// `tessera check` on `db`, with the least configuration it needs.
fn check(dir: &std::path::Path, db: &TestDb) -> Command {
    let mut command = tessera(dir);
    command
        .env("TESSERA_DATABASE_URL", &db.url)
        .env("TESSERA_ALLOWED_ISSUERS", "https://issuer.example.com")
        .env("TESSERA_ADMIN_TOKEN", "an-admin-token-for-the-check-test")
        .arg("check");
    command
}

async fn check_reports_pending_migrations_and_broken_invariants(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let check = || check(dir.path(), &db);
    let expected = match backend {
        Backend::Postgres => "pending migration(s): 1_people_identities_teams, 2_team_domains",
        Backend::Sqlite => "does not exist yet",
    };
    // A problem where `serve` would refuse to start (auto-migration off: PostgreSQL's default);
    // a warning where it would migrate, or make the database, itself (SQLite's).
    for auto_migrate in [false, true] {
        let fresh = run(check().env("TESSERA_AUTO_MIGRATE", auto_migrate.to_string())).await;
        assert_eq!(fresh.code, i32::from(!auto_migrate), "{}", fresh.stdout);
        let line = fresh.stdout.lines().find(|l| l.contains(expected)).unwrap_or_else(|| panic!("{}", fresh.stdout));
        assert_eq!(line.starts_with("warning"), auto_migrate, "{line}");
    }
    let defaults = run(&mut check()).await;
    assert_eq!(defaults.code, i32::from(backend == Backend::Postgres), "{}", defaults.stdout);
    let store = db.store().await;
    let clean = run(&mut check()).await;
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("data invariants hold"), "{}", clean.stdout);

    let new = tessera::store::NewAccount {
        user_id: tessera::domain::UserId::generate(),
        identity_id: tessera::domain::IdentityId::generate(),
        issuer: tessera::domain::Issuer::parse("https://issuer.example.com").unwrap(),
        subject: tessera::domain::Subject::parse("two-defaults").unwrap(),
        provider: "test".into(),
        email: Some(tessera::domain::Email::parse("two@example.com").unwrap()),
        email_verified: false,
        name: None,
        team: tessera::service::provisioning::team_plan(None),
        now: chrono::Utc::now(),
        email_holders: None,
    };
    store.create_account(&new).await.unwrap();
    let sql = db.sql().await;
    sql.exec("DROP INDEX memberships_one_default_per_user").await.unwrap();
    let team = tessera::domain::TeamId::generate().to_string();
    let time = if backend == Backend::Sqlite { "0" } else { "now()" };
    sql.exec(&format!(
        "INSERT INTO teams (id, slug, name, created_at, updated_at) VALUES ({}, 'second', 'Second', {time}, {time})",
        sql.uuid(&team)
    ))
    .await
    .unwrap();
    sql.exec(&format!(
        "INSERT INTO memberships (team_id, user_id, role, is_default, created_at) VALUES ({}, {}, 'owner', TRUE, {time})",
        sql.uuid(&team),
        sql.uuid(&new.user_id.to_string())
    ))
    .await
    .unwrap();
    let broken = run(&mut check()).await;
    assert_eq!(broken.code, 1, "{}", broken.stdout);
    assert!(broken.stdout.contains("1 user(s) with more than one default team"), "{}", broken.stdout);

    // A client of the file whose id one registered through the API holds: `serve` would refuse
    // to start, and `check` says so first.
    let app = "[[oidc.clients]]\nid = \"grafana\"\nname = \"Grafana\"\nkind = \"public\"\n\
               redirect_uris = [\"http://127.0.0.1/callback\"]\n";
    std::fs::write(dir.path().join("tessera.toml"), app).unwrap();
    let with_file = || {
        let mut command = check();
        command.env("TESSERA_CONFIG", "tessera.toml");
        command
    };
    let free = run(&mut with_file()).await;
    assert!(free.stderr.contains("[[oidc.clients]]"), "the file is read (its warning): {}", free.stderr);
    let warned = free.stdout.lines().find(|l| l.contains("[[oidc.clients]] are configured"));
    assert!(warned.is_some_and(|l| l.starts_with("warning")), "a finding of check's own: {}", free.stdout);
    assert!(!free.stdout.contains("[[oidc.clients]] is taken"), "{}", free.stdout);
    let clients = tessera::service::op::clients::Clients::new(store.clone(), None);
    let fields = serde_json::from_value(serde_json::json!({
        "id": "grafana", "name": "Registered", "kind": "public", "redirect_uris": ["http://127.0.0.1/callback"]
    }))
    .unwrap();
    clients.create(fields).await.unwrap();
    let taken = run(&mut with_file()).await;
    assert_eq!(taken.code, 1, "{}", taken.stdout);
    // A problem (the data above is broken too: the line's severity is what this shows).
    let line = taken.stdout.lines().find(|l| l.contains("the client id grafana of [[oidc.clients]] is taken"));
    assert!(line.is_some_and(|l| l.starts_with("problem")), "{}", taken.stdout);
}

#[tokio::test]
async fn configuration_mistakes_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad_listen = run(tessera(dir.path()).env("TESSERA_LISTEN", "everywhere").arg("serve")).await;
    assert_eq!(bad_listen.code, 2);
    assert!(bad_listen.stderr.contains("`listen (TESSERA_LISTEN)`"), "{}", bad_listen.stderr);

    std::fs::write(dir.path().join("tessera.toml"), "[database]\nurll = \"sqlite://x.db\"\n").unwrap();
    let typo = run(tessera(dir.path()).args(["--config", "tessera.toml", "check"])).await;
    assert_eq!(typo.code, 2);
    assert!(typo.stderr.contains("`urll`"), "{}", typo.stderr);

    let weak = run(tessera(dir.path()).env("TESSERA_ADMIN_TOKEN", "admin").arg("serve")).await;
    assert_eq!(weak.code, 2);
    assert!(weak.stderr.contains("TESSERA_ADMIN_TOKEN"), "{}", weak.stderr);
    assert!(!weak.stderr.contains("admin\""), "the token itself is not echoed: {}", weak.stderr);
    assert!(!dir.path().join("tessera.db").exists(), "nothing was created");
}

#[tokio::test]
async fn the_shipped_binary_has_no_bench_command_and_no_test_kit() {
    let dir = tempfile::tempdir().unwrap();
    let bench = run(tessera(dir.path()).args(["bench", "validate"])).await;
    assert_eq!(bench.code, 2, "benchmarks are the separate tessera-bench binary: {}", bench.stderr);
    assert!(bench.stderr.contains("unrecognized subcommand"), "{}", bench.stderr);
    // The test kit signs tokens for any subject: if it were linked into the product, its crate
    // would be in the binary's (mangled) symbols, as the product's own modules are.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_tessera")).unwrap();
    let contains = |needle: &[u8]| binary.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"7tessera7startup"), "the product's symbols are there to read");
    assert!(!contains(b"15tessera_testkit"), "no test-kit code in the shipped binary");
}

#[tokio::test]
async fn nested_environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tessera.toml"), "[database]\nurl = \"sqlite://file.db\"\n").unwrap();
    let check = run(tessera(dir.path())
        .env("TESSERA_DATABASE__URL", "sqlite://nested.db")
        .env("TESSERA_ADMIN_TOKENS", "[an-admin-token-from-the-environment]")
        .args(["--config", "tessera.toml", "check"]))
    .await;
    // The database does not exist yet, which `serve` makes (SQLite's auto-migration): a warning.
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("database sqlite://nested.db, 0 issuer(s), 1 admin token(s)"), "{}", check.stdout);
    assert!(check.stdout.contains("the SQLite database sqlite://nested.db does not exist yet"), "{}", check.stdout);

    // A blank one (as a deployment template may leave it) counts as unset, as the former names do.
    let blank = run(tessera(dir.path()).env("TESSERA_DATABASE__URL", " ").env("TESSERA_LOG__FILTER", "").args([
        "--config",
        "tessera.toml",
        "check",
    ]))
    .await;
    assert_eq!(blank.code, 0, "{}{}", blank.stdout, blank.stderr);
    assert!(blank.stdout.contains("database sqlite://file.db"), "the file's value: {}", blank.stdout);
    // `TESSERA_CONFIG` names the file as `--config` does; blank, it is unset too.
    let named = run(tessera(dir.path()).env("TESSERA_CONFIG", "tessera.toml").arg("check")).await;
    assert!(named.stdout.contains("database sqlite://file.db"), "{}{}", named.stdout, named.stderr);
    let unnamed = run(tessera(dir.path()).env("TESSERA_CONFIG", "").arg("check")).await;
    assert_eq!(unnamed.code, 0, "{}{}", unnamed.stdout, unnamed.stderr);
    assert!(!unnamed.stdout.contains("file.db"), "no file read: {}", unnamed.stdout);

    // Secrets from files (Docker and Kubernetes secrets), named by `<VAR>_FILE`.
    std::fs::write(dir.path().join("database-url"), "sqlite://from-a-file.db\n").unwrap();
    std::fs::write(dir.path().join("admin-token"), "an-admin-token-from-a-file\n").unwrap();
    let from_files = run(tessera(dir.path())
        .env("TESSERA_DATABASE_URL_FILE", dir.path().join("database-url"))
        .env("TESSERA_ADMIN_TOKEN_FILE", dir.path().join("admin-token"))
        .arg("check"))
    .await;
    assert_eq!(from_files.code, 0, "{}{}", from_files.stdout, from_files.stderr);
    assert!(
        from_files.stdout.contains("database sqlite://from-a-file.db, 0 issuer(s), 1 admin token(s)"),
        "{}",
        from_files.stdout
    );

    // Set twice, through a file and the current spelling: the refusal names the variables set.
    let twice = run(tessera(dir.path())
        .env("TESSERA_DATABASE_URL_FILE", dir.path().join("database-url"))
        .env("TESSERA_DATABASE__URL", "sqlite://nested.db")
        .arg("check"))
    .await;
    assert_eq!(twice.code, 2, "{}", twice.stderr);
    assert!(twice.stderr.contains("(TESSERA_DATABASE_URL_FILE, TESSERA_DATABASE__URL)"), "{}", twice.stderr);

    let no_such_form =
        run(tessera(dir.path()).env("TESSERA_ADMIN_TOKENS_FILE", dir.path().join("admin-token")).arg("check")).await;
    assert_eq!(no_such_form.code, 2, "{}", no_such_form.stderr);
    assert!(
        no_such_form.stderr.contains("`TESSERA_ADMIN_TOKENS_FILE`: this variable is not read"),
        "{}",
        no_such_form.stderr
    );

    // The `_FILE` habit where no file is read: the configuration file, a setting that is no secret.
    for (var, says) in [
        ("TESSERA_CONFIG_FILE", "TESSERA_CONFIG names the configuration file"),
        ("TESSERA_PUBLIC_URL_FILE", "only TESSERA_ADMIN_TOKEN_FILE"),
        ("TESSERA_ALLOWED_ISSUERS_FILE", "only TESSERA_ADMIN_TOKEN_FILE"),
        ("TESSERA_ISSUERS_FILE", "only TESSERA_ADMIN_TOKEN_FILE"),
    ] {
        let ignored = run(tessera(dir.path()).env(var, dir.path().join("tessera.toml")).arg("check")).await;
        assert_eq!(ignored.code, 2, "{var}: {}", ignored.stderr);
        assert!(ignored.stderr.contains(&format!("`{var}`: this variable is not read")), "{}", ignored.stderr);
        assert!(ignored.stderr.contains(says), "{}", ignored.stderr);
    }
    // A wrapper's own variable is none of Tessera's business.
    for var in ["TESSERA_LOG_FILE", "TESSERA_DATABASE_FILE"] {
        let wrapper = run(tessera(dir.path()).env(var, dir.path().join("wrapper.log")).arg("check")).await;
        assert!(!wrapper.stderr.contains(var), "{}", wrapper.stderr);
    }
    let wrong = run(tessera(dir.path()).env("TESSERA_CACHE__MAX_ENTRIES", "plenty").arg("check")).await;
    assert_eq!(wrong.code, 2);
    assert!(wrong.stderr.contains("`cache.max_entries (TESSERA_CACHE__MAX_ENTRIES)`"), "{}", wrong.stderr);

    std::fs::write(dir.path().join("tessera.toml"), "listen = 8080\n").unwrap();
    let typed = run(tessera(dir.path()).args(["--config", "tessera.toml", "check"])).await;
    assert_eq!(typed.code, 2);
    assert!(typed.stderr.contains("`listen`: expected a string"), "{}", typed.stderr);

    std::fs::write(dir.path().join("tessera.toml"), "[database\n").unwrap();
    let syntax = run(tessera(dir.path()).args(["--config", "tessera.toml", "check"])).await;
    assert_eq!(syntax.code, 2);
    assert!(syntax.stderr.contains("`tessera.toml`: TOML syntax error at line 1, column 10"), "{}", syntax.stderr);
}

async fn keys_signing_rotate_makes_and_rotates_keys_that_keys_signing_list_shows(backend: Backend) {
    use base64::Engine;
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let key = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let ring = format!("k1:{}", key(1));
    let keys = |ring: &str, args: &[&str]| {
        let mut command = tessera(dir.path());
        command
            .env("TESSERA_DATABASE_URL", &db.url)
            .env("TESSERA_ENCRYPTION_KEYS", ring)
            .env("TESSERA_OIDC__SIGNING_ALG", "EdDSA")
            .arg("keys")
            .args(args);
        command
    };
    let empty = run(&mut keys(&ring, &["signing", "list"])).await;
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(empty.stdout.contains("no signing key yet"), "{}", empty.stdout);

    let first = run(&mut keys(&ring, &["signing", "rotate", "--alg", "ES256"])).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("made the first ES256 key"), "{}", first.stdout);
    // Without --alg, oidc.signing_alg (EdDSA here) is rotated: its first key, then a next one.
    for expected in ["made the first EdDSA key", "new EdDSA key"] {
        let rotated = run(&mut keys(&ring, &["signing", "rotate"])).await;
        assert_eq!(rotated.code, 0, "{}", rotated.stderr);
        assert!(rotated.stdout.contains(expected), "{}", rotated.stdout);
    }
    let list = run(&mut keys(&ring, &["signing", "list"])).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let rows: Vec<Vec<&str>> = list.stdout.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r[1], r[2])).collect();
    assert_eq!(states, [("ES256", "signing"), ("EdDSA", "signing"), ("EdDSA", "next")], "{}", list.stdout);
    let stored = store.all_signing_keys().await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        stored.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>()
    );
    assert!(!list.stdout.contains(&key(1)), "no key material");

    // Listing needs no key ring (nothing is decrypted); rotating does.
    let without_ring = |args: &[&str]| {
        let mut command = tessera(dir.path());
        command.env("TESSERA_DATABASE_URL", &db.url).arg("keys").args(args);
        command
    };
    let listed = run(&mut without_ring(&["signing", "list"])).await;
    assert_eq!((listed.code, listed.stdout.lines().count()), (0, 4), "{}{}", listed.stdout, listed.stderr);
    let no_ring = run(&mut without_ring(&["signing", "rotate"])).await;
    assert_eq!(no_ring.code, 2);
    assert!(no_ring.stderr.contains("TESSERA_ENCRYPTION_KEYS"), "{}", no_ring.stderr);
    let bad = run(&mut keys(&ring, &["signing", "rotate", "--alg", "HS256"])).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    // `keys rotate` with the ring of before (its new key not first yet) re-encrypts nothing when
    // told which key should be first.
    let stale = run(&mut keys(&format!("k1:{},k2:{}", key(1), key(2)), &["rotate", "--expect-active", "k2"])).await;
    assert_eq!(stale.code, 2, "{}{}", stale.stdout, stale.stderr);
    assert!(stale.stderr.contains("is \"k1\", not \"k2\""), "{}", stale.stderr);
    assert!(!stale.stdout.contains("re-encrypted"), "{}", stale.stdout);
    // `keys rotate` re-encrypts the signing keys' private keys under the new ring key.
    let ring2 = format!("k2:{},k1:{}", key(2), key(1));
    let rotated = run(&mut keys(&ring2, &["rotate", "--expect-active", "k2"])).await;
    assert_eq!(rotated.code, 0, "{}{}", rotated.stdout, rotated.stderr);
    assert!(rotated.stdout.contains("signing_keys: 3 re-encrypted"), "{}", rotated.stdout);
    let after = store.all_signing_keys().await.unwrap();
    assert!(after.iter().all(|k| tessera::crypto::keyring::KeyRing::key_id_of(&k.private_key) == Some("k2")));
    let only_new = run(&mut keys(&format!("k2:{}", key(2)), &["signing", "list"])).await;
    assert_eq!(only_new.code, 0, "the old ring key is no longer needed: {}", only_new.stderr);
    // Another key under the same id is not "current": every value is checked under it.
    let replaced = run(&mut keys(&format!("k2:{}", key(3)), &["rotate"])).await;
    assert_eq!(replaced.code, 1, "{}{}", replaced.stdout, replaced.stderr);
    assert!(
        replaced.stdout.contains("signing_keys: 0 re-encrypted, 0 current, 0 changed meanwhile, 3 do not decrypt"),
        "{}",
        replaced.stdout
    );
    assert!(replaced.stderr.contains("do not decrypt"), "{}", replaced.stderr);
    // A ring that cannot read the current key — most often not the servers' ring — makes no key
    // with the lead, which no server could read either; one whose ring key is lost for good
    // rotates it away at once.
    let before = store.all_signing_keys().await.unwrap().len();
    let lost = run(&mut keys(&format!("k4:{}", key(4)), &["signing", "rotate", "--alg", "ES256"])).await;
    assert_eq!(lost.code, 2, "{}{}", lost.stdout, lost.stderr);
    assert!(lost.stderr.contains("TESSERA_ENCRYPTION_KEYS") && lost.stderr.contains("--now"), "{}", lost.stderr);
    assert_eq!(store.all_signing_keys().await.unwrap().len(), before, "no key made");
    // So is another algorithm's key it cannot read, which that algorithm's own rotation retires
    // — here the first key of an algorithm without one.
    let other = run(&mut keys(&format!("k4:{}", key(4)), &["signing", "rotate", "--alg", "RS256"])).await;
    assert_eq!(other.code, 2, "{}{}", other.stdout, other.stderr);
    assert!(other.stderr.contains("--alg ES256 --now"), "{}", other.stderr);
    assert_eq!(store.all_signing_keys().await.unwrap().len(), before, "no key made");
    let now = run(&mut keys(&format!("k4:{}", key(4)), &["signing", "rotate", "--alg", "ES256", "--now"])).await;
    assert_eq!(now.code, 0, "{}{}", now.stdout, now.stderr);
    assert!(now.stdout.contains("signs at once"), "{}", now.stdout);
    assert!(now.stdout.contains("--alg EdDSA --now"), "EdDSA's key is lost too: {}", now.stdout);
    assert!(now.stdout.contains("encrypted under ring key \"k4\""), "which the servers must hold: {}", now.stdout);

    // `tessera check`, with the OpenID Provider on, says what `serve` would refuse: a ring that
    // cannot decrypt a key that signs or will (the new ES256 key is k4's).
    let check = |ring: &str| {
        let mut command = tessera(dir.path());
        command
            .env("TESSERA_DATABASE_URL", &db.url)
            .env("TESSERA_ENCRYPTION_KEYS", ring)
            .env("TESSERA_PUBLIC_URL", "http://127.0.0.1:8080")
            .arg("check");
        command
    };
    // A problem found before (a user without identity) does not hide it.
    let sql = db.sql().await;
    let time = if backend == Backend::Sqlite { "0" } else { "now()" };
    let orphan = sql.uuid(&uuid::Uuid::new_v4().to_string());
    sql.exec(&format!("INSERT INTO users (id, created_at, updated_at) VALUES ({orphan}, {time}, {time})"))
        .await
        .unwrap();
    let short = run(&mut check(&format!("k2:{}", key(2)))).await;
    assert_eq!(short.code, 1, "{}{}", short.stdout, short.stderr);
    assert!(short.stdout.contains("1 user(s) without any identity"), "{}", short.stdout);
    assert!(short.stdout.contains("cannot be used") && short.stdout.contains("rotate --alg"), "{}", short.stdout);
    assert!(short.stdout.contains("--now"), "the way out of a lost ring key: {}", short.stdout);
    sql.exec(&format!("DELETE FROM users WHERE id = {orphan}")).await.unwrap();
    let whole = run(&mut check(&format!("k4:{},k2:{}", key(4), key(2)))).await;
    assert_eq!(whole.code, 0, "{}{}", whole.stdout, whole.stderr);
    assert!(whole.stdout.contains("the signing keys decrypt with this key ring"), "{}", whole.stdout);
}

/// A `tessera` command on the test database.
fn on_db(dir: &std::path::Path, db: &TestDb, args: &[&str]) -> Command {
    let mut command = tessera(dir);
    command.env("TESSERA_DATABASE_URL", &db.url).args(args);
    command
}

async fn json_of(dir: &std::path::Path, db: &TestDb, args: &[&str]) -> Value {
    let output = run(&mut on_db(dir, db, args)).await;
    assert_eq!(output.code, 0, "{args:?}: {}{}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|_| panic!("{args:?} printed no JSON: {}", output.stdout))
}

/// `tessera backup` while a server runs on the same SQLite file and the database is written: a
/// copy that holds what was still only in the `-wal` file, that the other commands read as the
/// database it was, owner-only, never over an existing file, never a URI; in-memory databases and
/// PostgreSQL are refused.
#[tokio::test]
async fn backup_copies_a_live_sqlite_database_into_a_new_file() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let account = |subject: &str| tessera::store::NewAccount {
        user_id: tessera::domain::UserId::generate(),
        identity_id: tessera::domain::IdentityId::generate(),
        issuer: tessera::domain::Issuer::parse("https://issuer.example.com").unwrap(),
        subject: tessera::domain::Subject::parse(subject).unwrap(),
        provider: "test".into(),
        email: None,
        email_verified: false,
        name: None,
        team: tessera::service::provisioning::team_plan(None),
        now: chrono::Utc::now(),
        email_holders: None,
    };
    let mut ids = Vec::new();
    for subject in ["backup-ada", "backup-bob"] {
        let new = account(subject);
        store.create_account(&new).await.unwrap();
        ids.push(new.user_id.to_string());
    }
    // The rows are still in the -wal file only: a copy of the database file would miss them.
    let source = tessera::store::sqlite_file(&db.url).unwrap().unwrap();
    let main_file_only =
        sqlx::SqlitePool::connect(&format!("sqlite://{}?immutable=1", source.display())).await.unwrap();
    let in_main_file: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&main_file_only).await;
    assert!(in_main_file.is_err() || in_main_file.as_ref().is_ok_and(|n| *n < 2), "{in_main_file:?}");
    main_file_only.close().await;
    let (server, addr) = serve(on_db(dir.path(), &db, &["serve"]).env("TESSERA_LISTEN", "127.0.0.1:0"))
        .await
        .unwrap_or_else(|o| panic!("serve failed ({}): {}", o.code, o.stderr));

    // Written to all along, through another connection.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, writing) = (store.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                store.create_account(&account(&format!("backup-writer-{n}"))).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let copy = dir.path().join("copy.db");
    let done = run(&mut on_db(dir.path(), &db, &["backup", "copy.db"])).await;
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("wrote a consistent copy"), "{}", done.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600, "owner only");
    }
    store.create_account(&account("backup-cy")).await.unwrap();
    assert_eq!(get(&addr, "/readyz").await, 200, "the server kept serving");
    assert_eq!(stop(server).await, 0);

    // The copy is whole, and a database the other commands read.
    let copy_url = format!("sqlite://{}", copy.display());
    let check = sqlx::SqlitePool::connect(&format!("{copy_url}?mode=ro")).await.unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&check).await.unwrap();
    assert_eq!(integrity, "ok");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&check).await.unwrap();
    assert!((2..=2 + written as i64).contains(&users), "{users} users of {} written", 2 + written);
    check.close().await;
    let listed =
        run(tessera(dir.path()).env("TESSERA_DATABASE_URL", &copy_url).args(["users", "list", "--json"])).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let users: Value = serde_json::from_str(&listed.stdout).unwrap();
    let copied: Vec<&str> = users["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(copied[..2], ids, "the first two users, from the -wal file");
    assert!(!users.to_string().contains("backup-cy"), "not the one written after");

    // Never over a file, never a URI, never from nothing, never PostgreSQL.
    let before = std::fs::read(&copy).unwrap();
    let again = run(&mut on_db(dir.path(), &db, &["backup", copy.to_str().unwrap()])).await;
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("exists; name a new file"), "{}", again.stderr);
    assert_eq!(std::fs::read(&copy).unwrap(), before, "the existing file is untouched");
    let uri = run(&mut on_db(dir.path(), &db, &["backup", "file:uri.db"])).await;
    assert_eq!(uri.code, 0, "{}", uri.stderr);
    assert!(dir.path().join("file:uri.db").metadata().unwrap().len() > 0, "a file of that very name");
    assert!(!dir.path().join("uri.db").exists(), "not a URI");
    let missing = format!("sqlite://{}", dir.path().join("missing.db").display());
    let none = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", &missing).args(["backup", "x.db"])).await;
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("there is no database"), "{}", none.stderr);
    assert!(!dir.path().join("x.db").exists() && !dir.path().join("missing.db").exists());
    let memory = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", "sqlite::memory:").args(["backup", "m.db"])).await;
    assert_eq!(memory.code, 2);
    assert!(memory.stderr.contains("in-memory"), "{}", memory.stderr);
    let pg = "postgres://tessera@127.0.0.1:1/tessera";
    let refused = run(tessera(dir.path()).env("TESSERA_DATABASE_URL", pg).args(["backup", "y.db"])).await;
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("pg_dump"), "{}", refused.stderr);
    let partial = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial"));
    assert!(!partial, "no partial file is left behind");
}

async fn users_and_teams_commands_work_on_the_configured_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for (subject, email) in
        [("cli-ada", "ada@example.com"), ("cli-bob", "bob@example.com"), ("cli-cy", "cy@example.com")]
    {
        let new = tessera::store::NewAccount {
            user_id: tessera::domain::UserId::generate(),
            identity_id: tessera::domain::IdentityId::generate(),
            issuer: tessera::domain::Issuer::parse("https://issuer.example.com").unwrap(),
            subject: tessera::domain::Subject::parse(subject).unwrap(),
            provider: "test".into(),
            email: Some(tessera::domain::Email::parse(email).unwrap()),
            email_verified: false,
            name: Some("Cli Person".into()),
            team: tessera::service::provisioning::team_plan(None),
            now: chrono::Utc::now(),
            email_holders: None,
        };
        store.create_account(&new).await.unwrap();
        ids.push(new.user_id.to_string());
    }

    // Listing: JSON in the admin API's shape, pages with a cursor, a table for people.
    let all = json_of(dir.path(), &db, &["users", "list", "--json"]).await;
    let listed: Vec<&str> = all["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids);
    assert!(all["next_cursor"].is_null());
    let first = json_of(dir.path(), &db, &["users", "list", "--limit", "2", "--json"]).await;
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let second = json_of(dir.path(), &db, &["users", "list", "--limit", "2", "--cursor", &cursor, "--json"]).await;
    assert_eq!(second["users"][0]["id"], ids[2].as_str());
    let table = run(&mut on_db(dir.path(), &db, &["users", "list", "--email", "BOB@example.com"])).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "a header and Bob: {}", table.stdout);
    assert!(rows[0].starts_with("id") && rows[1].starts_with(&ids[1]) && rows[1].contains("bob@example.com"));
    // A malformed argument is a usage mistake: exit 2.
    for bad in [&["users", "list", "--limit", "500"][..], &["teams", "list", "--cursor", "not-a-cursor"][..]] {
        let refused = run(&mut on_db(dir.path(), &db, bad)).await;
        assert_eq!(refused.code, 2, "{bad:?}: {}", refused.stderr);
    }

    // Show, disable, enable: the same answers as the admin API, the same event.
    let shown = json_of(dir.path(), &db, &["users", "show", &ids[0], "--json"]).await;
    assert_eq!(
        (shown["id"].as_str(), shown["identities"][0]["subject"].as_str()),
        (Some(ids[0].as_str()), Some("cli-ada"))
    );
    let text = run(&mut on_db(dir.path(), &db, &["users", "show", &ids[0]])).await;
    assert!(text.stdout.contains("ada@example.com") && text.stdout.contains("(default)"), "{}", text.stdout);
    let disabled = json_of(dir.path(), &db, &["users", "disable", &ids[0], "--json"]).await;
    assert_eq!(disabled["disabled"], true);
    let only_disabled = json_of(dir.path(), &db, &["users", "list", "--disabled", "--json"]).await;
    assert_eq!(only_disabled["users"].as_array().unwrap().len(), 1);
    assert_eq!(
        json_of(dir.path(), &db, &["users", "list", "--enabled", "--json"]).await["users"].as_array().unwrap().len(),
        2
    );
    let enabled = run(&mut on_db(dir.path(), &db, &["users", "enable", &ids[0]])).await;
    assert_eq!(enabled.code, 0, "{}", enabled.stderr);
    assert!(enabled.stdout.contains("is enabled"), "{}", enabled.stdout);
    // Enabling an enabled user answers the same and changes nothing: no event, no audit row.
    let again = run(&mut on_db(dir.path(), &db, &["users", "enable", &ids[0]])).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("is enabled"), "{}", again.stdout);
    let sql = db.sql().await;
    assert_eq!(sql.count("outbox_events WHERE topic IN ('user.disabled', 'user.enabled')").await, 2);
    let audited = |action: &'static str| {
        let store = store.clone();
        async move {
            let query = tessera::store::AuditQuery { action: Some(action.into()), limit: 10, ..Default::default() };
            store.audit_events(&query).await.unwrap()
        }
    };
    for action in ["user.disabled", "user.enabled"] {
        let rows = audited(action).await;
        assert_eq!(rows.len(), 1, "{action}: {rows:?}");
        let row = &rows[0].event;
        assert_eq!((row.actor_kind, row.actor_name.as_deref()), (tessera::store::ActorKind::System, Some("cli")));
        assert_eq!((row.target_kind.as_deref(), row.target_id.as_deref()), (Some("user"), Some(ids[0].as_str())));
        assert_eq!(row.details, Some(serde_json::json!({ "fields": ["disabled"] })), "as the admin API's");
    }
    // Disabling a disabled user ends a session left to them (one written meanwhile, say): a row
    // that names no field, as the admin API's.
    assert_eq!(json_of(dir.path(), &db, &["users", "disable", &ids[0], "--json"]).await["disabled"], true);
    let at = tessera::domain::now();
    let session = tessera::store::NewSession {
        token_hash: tessera::crypto::sha256(b"a session left"),
        user_id: ids[0].parse().unwrap(),
        identity_id: None,
        device: None,
        authenticated_at: None,
        now: at,
        expires_at: at + chrono::TimeDelta::hours(1),
    };
    // Left by a sign-in of an earlier release that raced the disable (made here behind the
    // store's back: a sign-in now writes no session for a disabled user).
    let flag = |on: bool| format!("UPDATE users SET disabled = {on} WHERE id = {}", sql.uuid(&ids[0]));
    sql.exec(&flag(false)).await.unwrap();
    store.start_session(&session, None, &[]).await.unwrap();
    sql.exec(&flag(true)).await.unwrap();
    assert_eq!(json_of(dir.path(), &db, &["users", "disable", &ids[0], "--json"]).await["disabled"], true);
    assert_eq!(sql.count("sessions").await, 0, "the session left was ended");
    let details: Vec<_> = audited("user.disabled").await.into_iter().map(|row| row.event.details).collect();
    assert_eq!(details.len(), 3, "{details:?}");
    assert!(details.contains(&Some(serde_json::json!({ "fields": [] }))), "{details:?}");

    // Refusals name their code; bad arguments are usage errors.
    let unknown =
        run(&mut on_db(dir.path(), &db, &["users", "show", &tessera::domain::UserId::generate().to_string()])).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("user_not_found"), "{}", unknown.stderr);
    let bad_id = run(&mut on_db(dir.path(), &db, &["users", "disable", "someone"])).await;
    assert_eq!(bad_id.code, 2, "{}", bad_id.stderr);
    let bad_cursor = run(&mut on_db(dir.path(), &db, &["users", "list", "--cursor", "nope"])).await;
    assert_eq!(bad_cursor.code, 2, "a malformed argument");
    assert!(bad_cursor.stderr.contains("invalid_cursor"), "{}", bad_cursor.stderr);
    let no_team = run(&mut on_db(dir.path(), &db, &["users", "list", "--team", "nowhere"])).await;
    assert!(no_team.code == 1 && no_team.stderr.contains("team_not_found"), "{}", no_team.stderr);

    // Teams: create (with an owner), list, refuse a taken slug.
    let acme = json_of(dir.path(), &db, &["teams", "create", "acme", "Acme Inc", "--owner", &ids[1], "--json"]).await;
    assert_eq!((acme["slug"].as_str(), acme["name"].as_str()), (Some("acme"), Some("Acme Inc")));
    let members = json_of(dir.path(), &db, &["users", "list", "--team", "acme", "--json"]).await;
    assert_eq!(members["users"].as_array().unwrap().len(), 1);
    assert_eq!(members["users"][0]["id"], ids[1].as_str());
    let taken = run(&mut on_db(dir.path(), &db, &["teams", "create", "acme", "Again"])).await;
    assert_eq!(taken.code, 1);
    assert!(taken.stderr.contains("slug_taken"), "{}", taken.stderr);
    let created = audited("team.created").await;
    assert_eq!(created.len(), 1, "a refused create writes no row: {created:?}");
    assert_eq!(created[0].event.target_id.as_deref(), acme["id"].as_str());
    assert_eq!(created[0].event.details, Some(serde_json::json!({ "slug": "acme", "owner": ids[1] })));
    let bad_slug = run(&mut on_db(dir.path(), &db, &["teams", "create", "Not A Slug", "x"])).await;
    assert_eq!(bad_slug.code, 2, "{}", bad_slug.stderr);
    let teams = json_of(dir.path(), &db, &["teams", "list", "--json"]).await;
    assert_eq!(teams["teams"].as_array().unwrap().len(), 4, "three default teams and acme");
    let prefixed = run(&mut on_db(dir.path(), &db, &["teams", "list", "--slug-prefix", "ac"])).await;
    assert_eq!(prefixed.stdout.lines().count(), 2, "{}", prefixed.stdout);
    assert!(prefixed.stdout.lines().nth(1).unwrap().contains("Acme Inc"), "{}", prefixed.stdout);
    // A prefix no slug can begin with is a usage error, as the API's 400, not an empty list.
    let capital = run(&mut on_db(dir.path(), &db, &["teams", "list", "--slug-prefix", "Ac"])).await;
    assert_eq!(capital.code, 2, "{}", capital.stdout);
    assert!(capital.stderr.contains("a-z, 0-9 and -"), "{}", capital.stderr);
}

async fn clients_commands_list_and_show_registered_clients(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let empty = json_of(dir.path(), &db, &["clients", "list", "--json"]).await;
    assert_eq!(empty, serde_json::json!({"clients": []}));
    let clients = tessera::service::op::clients::Clients::new(store.clone(), None);
    for id in ["grafana", "spa"] {
        let fields = serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("App {id}"), "kind": "public", "redirect_uris": ["http://127.0.0.1/callback"]
        }))
        .unwrap();
        clients.create(fields).await.unwrap();
    }
    let listed = json_of(dir.path(), &db, &["clients", "list", "--json"]).await;
    let ids: Vec<&str> =
        listed["clients"].as_array().unwrap().iter().map(|c| c["client_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["grafana", "spa"]);
    let table = run(&mut on_db(dir.path(), &db, &["clients", "list"])).await;
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);
    assert!(table.stdout.contains("public") && table.stdout.contains("App spa"), "{}", table.stdout);
    let shown = json_of(dir.path(), &db, &["clients", "show", "spa", "--json"]).await;
    assert_eq!((shown["client_id"].as_str(), shown["kind"].as_str()), (Some("spa"), Some("public")));
    let missing = run(&mut on_db(dir.path(), &db, &["clients", "show", "nope"])).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("client_not_found"), "{}", missing.stderr);
}

/// The soft and hard limits on open files of process `pid`, from `/proc` (`None`: unlimited).
fn open_file_limits(pid: u32) -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let number = |s: &str| s.parse::<u64>().ok();
    (number(fields[3]), number(fields[4]))
}

/// A service manager's usual soft limit of 1024 open files (here 256) would run out before the
/// default cap of 4096 connections: `serve` raises it as far as the hard limit allows.
#[tokio::test]
async fn serve_raises_a_low_open_file_limit_to_fit_its_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_tessera");
    let mut shell = Command::new("sh");
    shell
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve", binary])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TESSERA_LOG_FORMAT", "json")
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let (child, addr) = serve(&mut shell).await.unwrap_or_else(|o| panic!("serve failed ({}): {}", o.code, o.stderr));
    assert_eq!(get(&addr, "/readyz").await, 200);
    let (soft, hard) = open_file_limits(child.id().unwrap());
    // 4096 connections and 1024 descriptors for the rest, within the hard limit.
    let wanted = hard.map_or(5120, |hard| hard.min(5120));
    assert_eq!(soft, Some(wanted), "hard limit {hard:?}");
    assert_eq!(stop(child).await, 0);
}
