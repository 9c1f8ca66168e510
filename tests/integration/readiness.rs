//! Readiness answers within `database.ready_timeout_ms` while the database is down, not after
//! the pool's acquire timeout: probes usually give up after one second.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tessera::config::DatabaseUrl;

use crate::helpers::{Backend, Relay, TestApp, TestDb, eventually, json as body, send_at_once};
use crate::metrics::{Sample, scrape, value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_its_bound_while_postgres_is_down() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(&db.url).await;
    let mut config = db.config();
    config.database.url = DatabaseUrl::parse(&relay.url).unwrap();
    // Readiness must not wait for the pool's acquire timeout: made 20 s here, so that a
    // loaded machine's slowness cannot pass for that wait, nor that wait for slowness.
    let bound = config.database.ready_timeout;
    config.database.acquire_timeout = Duration::from_secs(20);
    let pool = config.database.acquire_timeout;
    assert!(bound < Duration::from_secs(1));
    let app = TestApp::start(db, &config).await;
    let ready = body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await;
    assert_eq!(ready["status"], "ready");

    relay.cut().await;
    for attempt in 0..3 {
        let started = Instant::now();
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(body(response, 503).await["code"], "store_unavailable", "attempt {attempt}");
        // Not a timing test of the bound itself (a loaded machine may take longer): whether it
        // waited for the pool.
        assert!(
            elapsed < pool / 2,
            "attempt {attempt}: /readyz answered after {elapsed:?}: it waited for the pool ({pool:?}), not its bound of {bound:?}"
        );
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness does not depend on the database");
    app.stop().await;
}

/// Every request connection busy is load, not an unready instance: taking it out of rotation
/// would move its load onto the others until none is ready. Readiness pings on the connection of
/// the background loops, so it answers while the request pool (one connection here) waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_holds_while_every_request_connection_is_busy() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = db.config();
    config.database.max_connections = 1;
    let app = TestApp::start(db, &config).await;
    let mut locker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    let blocked = app.admin(reqwest::Method::GET, "/admin/users").send();
    let blocked = tokio::spawn(blocked);
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    // Watched from outside the locker's transaction, which would read one snapshot of the
    // backends' activity until it ends: a first look before the request arrived, for good.
    let mut watcher = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    // Up to 30 s for the request to reach the lock: the whole suite on two cores may hold it up
    // for seconds before it is served at all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (count,): (i64,) = sqlx::query_as(waiting).fetch_one(&mut watcher).await.unwrap();
        if count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (count,): (i64,) = sqlx::query_as(waiting).fetch_one(&mut watcher).await.unwrap();
    assert_eq!(count, 1, "the request holds the pool's one connection, waiting on the lock");
    for attempt in 0..3 {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(body(response, 200).await["status"], "ready", "attempt {attempt}");
    }
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(blocked.await.unwrap().unwrap().status(), 200, "the request goes on once the lock is gone");
    app.stop().await;
}

/// With `server.drain_delay_seconds`, a stopping server first answers `/readyz` 503 while it
/// still accepts connections and serves requests, so that a load balancer takes it out of
/// rotation before it stops listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_is_not_ready_but_still_serves() {
    let mut app =
        TestApp::spawn_with(Backend::Sqlite, |config| config.server.drain_delay = Duration::from_secs(8)).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.headers().get("connection").is_none(), "kept alive until the drain");
    app.begin_stop();
    let deadline = Instant::now() + Duration::from_secs(2);
    let answer = loop {
        let answer = app.client.get(app.url("/readyz")).send().await.unwrap();
        if answer.status() == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body(answer, 503).await["code"], "shutting_down");
    // A new connection is still accepted and served meanwhile, and told to leave: a keep-alive
    // connection would otherwise carry its next request into the listener's close.
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let served = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["connection"], "close");
    app.stop().await;
}

/// Probes that arrive together share one ping: a burst of them (`/readyz` needs no credential)
/// must not queue one ping each on the background loops' one connection, where they would hold
/// up the loops' own statements. Here the connection goes silent under the first probe's ping, so
/// that the others would all queue behind it for the pool; they wait for that ping's answer
/// instead, and the pool counts no waits of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_that_arrive_together_share_one_ping() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(&db.url).await;
    let mut config = db.config();
    config.database.url = DatabaseUrl::parse(&relay.url).unwrap();
    // A background loop caught on the silent connection gives it up soon.
    config.database.statement_timeout = Duration::from_secs(2);
    let app = TestApp::start(db, &config).await;
    assert_eq!(body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await["status"], "ready");
    let waits = |samples: &[Sample]| value(samples, "tessera_db_pool_waits_total", &[("pool", "background")]);
    let (_, before) = scrape(&app).await;

    relay.silence();
    let probes: Vec<_> = (0..30).map(|_| app.client.get(app.url("/readyz"))).collect();
    for answer in send_at_once(&probes).await {
        assert_eq!(body(answer, 503).await["code"], "store_unavailable");
    }
    let (_, after) = scrape(&app).await;
    // The count is the process's: a background loop's statement, here or in a test running
    // beside this one, may have queued a few times meanwhile; 29 probes did not.
    let queued = waits(&after) - waits(&before);
    assert!(queued < 12.0, "{queued} statements queued for the background connection");

    // The silent connection was given up; the next ping opens another.
    eventually("ready again", || async { app.client.get(app.url("/readyz")).send().await.unwrap().status() == 200 })
        .await;
    app.stop().await;
}

/// A database that is slow, not down (here: its server processes stopped for a moment): the
/// probes that give up at their bound leave their ping to finish, so that no connection is
/// closed for a statement dropped half-way — the background loops' one connection least of all,
/// which they would have to open again while the database struggles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_gives_up_on_a_slow_database_closes_no_connection() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = db.config();
    config.database.ready_timeout = Duration::from_millis(200);
    let app = TestApp::start(db, &config).await;
    assert_eq!(body(app.client.get(app.url("/readyz")).send().await.unwrap(), 200).await["status"], "ready");
    let sql = app.db.sql().await;
    let backends = async || {
        let mut pids = sql
            .texts(
                "SELECT CAST(pid AS TEXT) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await;
        pids.sort();
        pids
    };
    let before = backends().await;
    assert!(!before.is_empty());
    let signal = |signal: &str| {
        for pid in &before {
            let sent = std::process::Command::new("kill").args([signal, pid]).status().unwrap();
            assert!(sent.success(), "kill {signal} {pid}");
        }
    };
    signal("-STOP");
    for _ in 0..3 {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(body(response, 503).await["code"], "store_unavailable");
    }
    signal("-CONT");
    eventually("ready again", async || app.client.get(app.url("/readyz")).send().await.unwrap().status() == 200).await;
    // A connection closed by the pool ends its server process once it reads the close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = backends().await;
    assert!(before.iter().all(|pid| after.contains(pid)), "connections closed: {before:?} -> {after:?}");
    app.stop().await;
}
