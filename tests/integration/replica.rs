//! The read replica, against real streaming replicas of the throwaway cluster (`scripts/test`
//! starts them with pg_basebackup; one replays with `recovery_min_apply_delay = 2s`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tessera::config::DatabaseUrl;
use tessera_testkit::local_issuer::LocalIssuer;

use crate::helpers::{
    AUDIENCE, Backend, Relay, TestApp, TestDb, eventually, identity, json as body, local_issuer_config,
};

pub(crate) fn replica_url(variable: &str, db: &TestDb) -> String {
    let base = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run the suite with `scripts/test`, which starts the replicas")
    });
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(db.url.rsplit('/').next().unwrap());
    url.to_string()
}

/// Waits until the replica has the test database with its migrated schema.
pub(crate) async fn caught_up(url: &str) -> PgPool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(pool) = PgPoolOptions::new().max_connections(2).connect(url).await {
            let ready: Option<bool> = sqlx::query_scalar("SELECT to_regclass('team_domains') IS NOT NULL")
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            if ready == Some(true) {
                return pool;
            }
            pool.close().await;
        }
        assert!(Instant::now() < deadline, "the replica did not catch up within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A migrated test database with a server reading from the replica `variable` names.
async fn app_on_replica(variable: &str) -> (TestApp, LocalIssuer, PgPool) {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await.close().await;
    let replica = replica_url(variable, &db);
    let replica_pool = caught_up(&replica).await;
    let issuer = LocalIssuer::start().await.unwrap();
    let mut config = db.config();
    config.database.replica_url = Some(DatabaseUrl::parse(&replica).unwrap());
    config.issuers.push(local_issuer_config(&issuer));
    (TestApp::start(db, &config).await, issuer, replica_pool)
}

async fn identity_on(pool: &PgPool, subject: &str) -> bool {
    sqlx::query("SELECT 1 FROM identities WHERE subject = $1")
        .bind(subject)
        .fetch_optional(pool)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_right_after_a_bootstrap_never_fails_on_a_lagging_replica() {
    let (app, issuer, delayed) = app_on_replica("TESSERA_TEST_PG_DELAYED_REPLICA_URL").await;
    // Whether the replica still lagged when each round was done (the rounds that ran past its
    // 2 s delay, on a loaded machine, checked the easy case only).
    let mut lagged = 0;
    for i in 0..5 {
        let subject = format!("fresh-{i}");
        let mut claim = identity(&subject, "fresh@example.com", None);
        claim["issuer"] = issuer.issuer().into();
        let booted = body(app.bootstrap(&claim).await, 201).await;
        let token = issuer.sign("rsa-1", &issuer.claims(&subject, AUDIENCE));
        let validated = body(app.validate(&token).await, 200).await;
        assert_eq!(validated["user_id"], booted["user_id"]);
        assert_eq!(validated["created"], false, "found on the primary, not provisioned twice");
        let me = app.client.get(app.url("/v1/me")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(body(me, 200).await["id"], booted["user_id"]);
        lagged += usize::from(!identity_on(&delayed, &subject).await);
    }
    assert!(lagged > 0, "the replica never lagged behind the primary: nothing was checked");
    assert_eq!(app.db.sql().await.count("users").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_tolerate_lag_go_to_the_replica() {
    let (app, issuer, replica) = app_on_replica("TESSERA_TEST_PG_REPLICA_URL").await;
    let token = issuer.sign("rsa-1", &issuer.claims("reader", AUDIENCE));
    let first = body(app.validate(&token).await, 200).await;
    assert_eq!(first["created"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !identity_on(&replica, "reader").await {
        assert!(Instant::now() < deadline, "the replica never received the identity");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Home-realm discovery reads the domain's claim on the replica: some connection of Tessera's
    // there ran that read (pg_stat_activity keeps each connection's last statement; another
    // read on the same connection may replace it, so it is asked again until seen).
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    eventually("a domain-claim read reaches the replica", || async {
        let discover = app.client.post(app.url("/v1/auth/discover"));
        let discover = discover.json(&serde_json::json!({"email": "reader@example.com"})).send().await.unwrap();
        body(discover, 200).await;
        let reads: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
             AND query LIKE '%FROM team_domains d WHERE d.domain%'",
        )
        .bind(&name)
        .fetch_one(&replica)
        .await
        .unwrap();
        reads > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_falls_back_to_the_primary() {
    let db = TestDb::new(Backend::Postgres).await;
    let issuer = LocalIssuer::start().await.unwrap();
    let mut config = db.config();
    config.database.replica_url = Some(DatabaseUrl::parse("postgres://postgres@127.0.0.1:9/nowhere").unwrap());
    config.issuers.push(local_issuer_config(&issuer));
    let app = TestApp::start(db, &config).await;
    let token = issuer.sign("rsa-1", &issuer.claims("fallback", AUDIENCE));
    assert_eq!(body(app.validate(&token).await, 200).await["created"], true);
    let me = app.client.get(app.url("/v1/me")).bearer_auth(&token).send().await.unwrap();
    body(me, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_refused_even_while_the_replica_lags() {
    let (app, issuer, delayed) = app_on_replica("TESSERA_TEST_PG_DELAYED_REPLICA_URL").await;
    let token = issuer.sign("rsa-1", &issuer.claims("to-disable", AUDIENCE));
    let user = body(app.validate(&token).await, 200).await;
    let user_id = user["user_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !identity_on(&delayed, "to-disable").await {
        assert!(Instant::now() < deadline, "the replica never received the identity");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/admin/users/{user_id}");
    let disabled = app.admin(reqwest::Method::PATCH, &path).json(&serde_json::json!({"disabled": true})).send();
    assert_eq!(disabled.await.unwrap().status(), 200);
    // The replica still says "enabled" for two seconds; the primary is asked instead.
    assert_eq!(body(app.validate(&token).await, 403).await["code"], "user_disabled");
    let on_replica: bool = sqlx::query_scalar("SELECT disabled FROM users WHERE id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&delayed)
        .await
        .unwrap();
    assert!(!on_replica, "the replica really lagged behind the primary");
}

/// A profile read right after a change to it reads the change, though the replica still lags:
/// for a minute after a change, that user is read from the primary (README, Caches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_read_right_after_a_change_shows_it_while_the_replica_lags() {
    let (app, issuer, delayed) = app_on_replica("TESSERA_TEST_PG_DELAYED_REPLICA_URL").await;
    let token = issuer.sign("rsa-1", &issuer.claims("renamed", AUDIENCE));
    let user_id = body(app.validate(&token).await, 200).await["user_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !identity_on(&delayed, "renamed").await {
        assert!(Instant::now() < deadline, "the replica never received the identity");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/admin/users/{user_id}");
    let renamed = app.admin(reqwest::Method::PATCH, &path).json(&serde_json::json!({"name": "Renamed"})).send();
    assert_eq!(renamed.await.unwrap().status(), 200);
    let me = body(app.client.get(app.url("/v1/me")).bearer_auth(&token).send().await.unwrap(), 200).await;
    assert_eq!(me["name"], "Renamed");
    let on_replica: Option<String> = sqlx::query_scalar("SELECT name FROM users WHERE id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&delayed)
        .await
        .unwrap();
    assert_ne!(on_replica.as_deref(), Some("Renamed"), "the replica really lagged behind the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_replica_is_left_alone_for_a_while() {
    // A "replica" that accepts connections and drops them at once, counting them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = db.config();
    config.database.replica_url = Some(DatabaseUrl::parse(&format!("postgres://postgres@{address}/nowhere")).unwrap());
    // Not much shorter: the primary's first connection, on a busy machine, must not time out.
    config.database.acquire_timeout = Duration::from_secs(2);
    // Checks every 50 ms (a quarter of the bound): without the back-off after a failure, the
    // watch below would see a dozen.
    config.database.replica_max_lag = Duration::from_millis(200);
    let app = TestApp::start(db, &config).await;
    let discover = || {
        app.client.post(app.url("/v1/auth/discover")).json(&serde_json::json!({"email": "someone@example.com"})).send()
    };
    // Until a check of its lag succeeds, reads go to the primary: the replica costs no request
    // a connection attempt, let alone a timeout.
    body(discover().await.unwrap(), 200).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the replica's lag was never checked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failed check's connection attempts end within the acquire timeout.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let after_check = attempts.load(Ordering::SeqCst);
    for _ in 0..5 {
        body(discover().await.unwrap(), 200).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), after_check, "neither reads nor checks went to the failed replica");
}

/// A replica further behind the primary than `database.replica_max_lag_ms` is not read: a
/// change no instance knows of (written straight to the primary, as one another instance made
/// more than a minute ago would be, past its read-your-writes window) reads back as made once
/// the bound has passed, though the replica still lacks it. An instance with a bound of 5 s reads
/// the same replica, 2 s behind, and does not see the change yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_further_behind_than_its_bound_is_not_read() {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await.close().await;
    let replica = replica_url("TESSERA_TEST_PG_DELAYED_REPLICA_URL", &db);
    let delayed = caught_up(&replica).await;
    let issuer = LocalIssuer::start().await.unwrap();
    let mut config = db.config();
    config.issuers.push(local_issuer_config(&issuer));
    let writer = TestApp::start(db.share(), &config).await;
    config.database.replica_url = Some(DatabaseUrl::parse(&replica).unwrap());
    // A bound the replica, 2 s behind, keeps within. An instance reads no user from the replica
    // for that long after it starts (what changed before is unknown to it): the reads below wait.
    config.database.replica_max_lag = Duration::from_secs(5);
    let lenient = TestApp::start(db.share(), &config).await;
    let lenient_readable = Instant::now() + Duration::from_millis(5_500);
    config.database.replica_max_lag = Duration::from_millis(500);
    let strict = TestApp::start(db.share(), &config).await;

    let token = issuer.sign("rsa-1", &issuer.claims("far-behind", AUDIENCE));
    let user_id = body(writer.validate(&token).await, 200).await["user_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !identity_on(&delayed, "far-behind").await {
        assert!(Instant::now() < deadline, "the replica never received the identity");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let name_on = |app: &TestApp| {
        let me = app.client.get(app.url("/v1/me")).bearer_auth(&token).send();
        async move { body(me.await.unwrap(), 200).await["name"].clone() }
    };
    tokio::time::sleep_until(lenient_readable.into()).await;
    let before = name_on(&lenient).await;
    assert_eq!(name_on(&strict).await, before);

    let sql = format!("UPDATE users SET name = 'Renamed far away' WHERE id = '{user_id}'");
    assert_eq!(writer.db.sql().await.exec(&sql).await.unwrap(), 1);
    let written = Instant::now();
    assert_eq!(name_on(&lenient).await, before, "the lenient instance reads the replica, which lags");
    tokio::time::sleep(Duration::from_millis(800).saturating_sub(written.elapsed())).await;
    assert_eq!(name_on(&strict).await, "Renamed far away", "the replica is behind the strict bound: the primary");
    let on_replica: Option<String> = sqlx::query_scalar("SELECT name FROM users WHERE id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&delayed)
        .await
        .unwrap();
    assert_ne!(on_replica.as_deref(), Some("Renamed far away"), "the replica really lagged behind the primary");
    for app in [writer, lenient, strict] {
        app.stop().await;
    }
}

/// A replica gone silent (a host gone without a reset, a failover behind a proxy) holds the
/// reads under way for a second, not for `database.statement_timeout_ms`, before they go to the
/// primary: a token's first validation still answers at once, and the replica is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_holds_reads_for_a_second_not_the_statement_timeout() {
    let db = TestDb::new(Backend::Postgres).await;
    db.store().await.close().await;
    let replica = replica_url("TESSERA_TEST_PG_REPLICA_URL", &db);
    let replica_pool = caught_up(&replica).await;
    let relay = Relay::start(&replica).await;
    let issuer = LocalIssuer::start().await.unwrap();
    let mut config = db.config();
    config.database.replica_url = Some(DatabaseUrl::parse(&relay.url).unwrap());
    // Checked every 125 ms: readable soon after start-up.
    config.database.replica_max_lag = Duration::from_millis(500);
    let statement_timeout = Duration::from_secs(20);
    config.database.statement_timeout = statement_timeout;
    config.issuers.push(local_issuer_config(&issuer));
    let app = TestApp::start(db, &config).await;
    let name = app.db.url.rsplit('/').next().unwrap().to_owned();
    // Until a token's identity is looked up on the replica (each new subject is, first).
    let subjects = AtomicUsize::new(0);
    eventually("a principal read reaches the replica", || async {
        let subject = format!("before-{}", subjects.fetch_add(1, Ordering::SeqCst));
        let token = issuer.sign("rsa-1", &issuer.claims(&subject, AUDIENCE));
        body(app.validate(&token).await, 200).await;
        let reads: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
             AND query LIKE '%AS identity_issuer%'",
        )
        .bind(&name)
        .fetch_one(&replica_pool)
        .await
        .unwrap();
        reads > 0
    })
    .await;

    relay.silence();
    let token = issuer.sign("rsa-1", &issuer.claims("while-silent", AUDIENCE));
    let started = Instant::now();
    let validated = body(app.validate(&token).await, 200).await;
    let elapsed = started.elapsed();
    assert_eq!(validated["created"], true, "the primary answered");
    // Not a timing test of the bound (a loaded machine may take longer): whether the read waited
    // for the statement timeout.
    assert!(elapsed < statement_timeout / 2, "the read waited {elapsed:?}, as for the statement timeout");
    app.stop().await;
}
