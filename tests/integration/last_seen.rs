//! Last-use bookkeeping never writes on the request path: token validation and session
//! resolution leave `last_seen_at` to the last-use worker, which writes it every
//! `server.last_seen_flush_ms` and once more at shutdown.

use std::time::Duration;

use sqlx::Connection;
use tessera::store::AuditQuery;
use tessera_testkit::local_issuer::LocalIssuer;

use crate::helpers::{AUDIENCE, Backend, TestApp, eventually, json as body, local_issuer_config, on_both_backends};
use crate::signin::{Browser, world_with};

on_both_backends!(
    validation_leaves_last_use_to_the_worker,
    the_worker_writes_last_use_on_its_interval,
    cached_sessions_and_identities_still_note_their_use,
    shutdown_does_not_wait_forever_for_a_locked_table,
    a_browser_sign_in_notes_its_identitys_use,
    a_disabled_users_refused_token_is_no_use,
    a_session_resumed_near_its_idle_limit_has_its_use_written_at_once,
    the_sweep_spares_a_session_whose_last_use_may_wait_to_be_written,
);

/// A long-ago time, as an SQL literal of the backend's encoding.
fn long_ago(backend: Backend) -> &'static str {
    if backend == Backend::Sqlite { "0" } else { "TIMESTAMPTZ '2000-01-01 00:00:00+00'" }
}

/// `at` as an SQL literal of the backend's encoding.
fn literal(backend: Backend, at: chrono::DateTime<chrono::Utc>) -> String {
    if backend == Backend::Sqlite {
        at.timestamp_micros().to_string()
    } else {
        format!("TIMESTAMPTZ '{}'", at.to_rfc3339())
    }
}

async fn app_with_identity(backend: Backend, flush: Duration) -> (TestApp, String, LocalIssuer) {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        config.issuers.push(local_issuer_config(&issuer));
        config.server.last_seen_flush = flush;
        config.audit.flush_interval = flush;
        // Every validation reads the identity from the database, so that it sees the old time.
        config.cache.principal_ttl = Duration::ZERO;
    })
    .await;
    let token = issuer.sign("rsa-1", &issuer.claims("seen-subject", AUDIENCE));
    body(app.validate(&token).await, 200).await;
    let sql = app.db.sql().await;
    sql.exec(&format!("UPDATE identities SET last_seen_at = {}", long_ago(backend))).await.unwrap();
    (app, token, issuer)
}

async fn validation_leaves_last_use_to_the_worker(backend: Backend) {
    let (app, token, _issuer) = app_with_identity(backend, Duration::from_secs(300)).await;
    for _ in 0..3 {
        body(app.validate(&token).await, 200).await;
    }
    let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
    let sql = app.db.sql().await;
    assert_eq!(sql.count(&old).await, 1, "no write on the request path");
    drop(sql);
    let db = app.stop_keeping_db().await;
    assert_eq!(db.sql().await.count(&old).await, 0, "written once at shutdown");
}

/// A token refused because its user is disabled was not a use of the identity: the admin's
/// view of when it was last used does not move.
async fn a_disabled_users_refused_token_is_no_use(backend: Backend) {
    let (app, token, _issuer) = app_with_identity(backend, Duration::from_secs(300)).await;
    let sql = app.db.sql().await;
    sql.exec("UPDATE users SET disabled = TRUE").await.unwrap();
    assert_eq!(body(app.validate(&token).await, 403).await["code"], "user_disabled");
    drop(sql);
    let db = app.stop_keeping_db().await;
    let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
    assert_eq!(db.sql().await.count(&old).await, 1, "nothing noted, so nothing written at shutdown");
}

async fn the_worker_writes_last_use_on_its_interval(backend: Backend) {
    let (app, token, _issuer) = app_with_identity(backend, Duration::from_millis(200)).await;
    body(app.validate(&token).await, 200).await;
    let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
    let sql = app.db.sql().await;
    eventually("the worker records the last use", || async { sql.count(&old).await == 0 }).await;
    app.stop().await;
}

/// A cache may answer for a session or an identity for up to an hour
/// (`cache.principal_ttl_seconds`), but its uses are still noted once a minute: else idle expiry
/// would end a session in daily use, read from the cache all along.
async fn cached_sessions_and_identities_still_note_their_use(backend: Backend) {
    let w = world_with(backend, |config, issuer| {
        config.cache.principal_ttl = Duration::from_secs(3600);
        config.server.last_seen_flush = Duration::from_millis(100);
        config.issuers.push(local_issuer_config(issuer));
    })
    .await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    let token = w.issuer.sign("rsa-1", &w.issuer.claims("token-subject", AUDIENCE));
    body(w.app.bootstrap(&serde_json::json!({ "issuer": w.issuer.issuer(), "subject": "token-subject", "email": "t@example.com" })).await, 201)
        .await;
    // Both last used 57 s ago: the first reads below find them under a minute old, note nothing,
    // and cache them as they are.
    let planted = chrono::Utc::now() - chrono::TimeDelta::seconds(57);
    let sql = w.app.db.sql().await;
    for table in ["sessions", "identities"] {
        sql.exec(&format!("UPDATE {table} SET last_seen_at = {}", literal(backend, planted))).await.unwrap();
    }
    assert_eq!(browser.me(&w.app).await.status(), 200);
    body(w.app.validate(&token).await, 200).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A minute has passed since the last noted use: these uses are noted, and written.
    assert_eq!(browser.me(&w.app).await.status(), 200);
    body(w.app.validate(&token).await, 200).await;
    let newer = literal(backend, planted + chrono::TimeDelta::seconds(3));
    eventually("the session's use is written", || async {
        sql.count(&format!("sessions WHERE last_seen_at > {newer}")).await == 1
    })
    .await;
    eventually("the identity's use is written", || async {
        sql.count(&format!("identities WHERE subject = 'token-subject' AND last_seen_at > {newer}")).await == 1
    })
    .await;
}

/// A browser sign-in is a use of its identity (the account page shows it as "last used"):
/// noted, not written on the sign-in's path, and written by the worker — here at shutdown.
async fn a_browser_sign_in_notes_its_identitys_use(backend: Backend) {
    let w = world_with(backend, |config, _| config.server.last_seen_flush = Duration::from_secs(300)).await;
    Browser::new().sign_in(&w.app, "").await;
    let sql = w.app.db.sql().await;
    sql.exec(&format!("UPDATE identities SET last_seen_at = {}", long_ago(backend))).await.unwrap();
    // A returning user's sign-in (the one-statement path), and one of a browser signed in already.
    let mut browser = Browser::new();
    assert_eq!(browser.sign_in(&w.app, "").await.status(), 303);
    assert_eq!(browser.sign_in(&w.app, "").await.status(), 303);
    let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
    assert_eq!(sql.count(&old).await, 1, "no write on the sign-in's path");
    drop(sql);
    let db = w.app.stop_keeping_db().await;
    assert_eq!(db.sql().await.count(&old).await, 0, "written at shutdown");
}

/// Shutdown is bounded: with `identities` locked by maintenance (a `VACUUM FULL`, say), the
/// last-use flush cannot finish, yet the server stops; on PostgreSQL the refusals counted in
/// memory are written beside it all the same (SQLite has one writer: the lock holds both back).
async fn shutdown_does_not_wait_forever_for_a_locked_table(backend: Backend) {
    let (app, token, _issuer) = app_with_identity(backend, Duration::from_secs(3600)).await;
    body(app.validate(&token).await, 200).await;
    assert_eq!(app.validate("not-a-jwt").await.status(), 401, "a refusal, counted in memory");
    let url = app.db.url.clone();
    let locker: Box<dyn std::any::Any + Send> = match backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("LOCK TABLE identities IN ACCESS EXCLUSIVE MODE").execute(&mut conn).await.unwrap();
            Box::new(conn)
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
            Box::new(conn)
        }
    };
    let stopping = tokio::time::timeout(Duration::from_secs(120), app.stop_keeping_db());
    let db = stopping.await.expect("the server stops although the table stays locked");
    drop(locker);
    if backend == Backend::Postgres {
        let store = db.store().await;
        let rows = store.audit_events(&AuditQuery { limit: 100, ..AuditQuery::default() }).await.unwrap();
        assert!(rows.iter().any(|r| r.event.actor_name.as_deref() == Some("refusal_counter")), "{rows:?}");
        let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
        assert_eq!(db.sql().await.count(&old).await, 1, "the locked write was given up");
    }
}

/// The default idle timeout (a day), in seconds.
const IDLE: i64 = 24 * 60 * 60;

/// A browser signed in, with the server's session cache off (every `/v1/me` reads the stored
/// last use) and last uses written every five minutes.
async fn signed_in_without_session_cache(backend: Backend) -> (crate::signin::World, Browser) {
    let w = world_with(backend, |config, _| {
        config.server.last_seen_flush = Duration::from_secs(300);
        config.cache.principal_ttl = Duration::ZERO;
    })
    .await;
    let mut browser = Browser::new();
    browser.sign_in(&w.app, "").await;
    (w, browser)
}

/// A session resumed two minutes before its idle limit has its use written at once, by the
/// worker (not at its next interval, five minutes on): meanwhile the sweep, other instances and
/// the grants bound to the session would read it as idle.
async fn a_session_resumed_near_its_idle_limit_has_its_use_written_at_once(backend: Backend) {
    let (w, mut browser) = signed_in_without_session_cache(backend).await;
    let planted = chrono::Utc::now() - chrono::TimeDelta::seconds(IDLE - 120);
    let sql = w.app.db.sql().await;
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {}", literal(backend, planted))).await.unwrap();
    assert_eq!(browser.me(&w.app).await.status(), 200);
    let lately = literal(backend, chrono::Utc::now() - chrono::TimeDelta::seconds(60));
    eventually("the session's use is written", || async {
        sql.count(&format!("sessions WHERE last_seen_at > {lately}")).await == 1
    })
    .await;
}

/// The sweep deletes a session once unused for the idle timeout plus two of the worker's
/// intervals, not at the timeout: a use noted on some instance may still wait to be written
/// (its write failed once). The session is refused from the timeout on all the same.
async fn the_sweep_spares_a_session_whose_last_use_may_wait_to_be_written(backend: Backend) {
    use std::sync::Arc;
    use tessera::service::principals::PrincipalCache;
    use tessera::service::sessions::Sessions;
    use tessera::worker::last_seen::LastSeen;
    let (w, mut browser) = signed_in_without_session_cache(backend).await;
    // The sweep of an instance whose worker writes every five minutes: a grace of ten.
    let (cache, _) = PrincipalCache::with_token_cache(&w.app.db.config().cache);
    let last_seen = Arc::new(LastSeen::new(Duration::from_secs(300)));
    let idle = Duration::from_secs(IDLE.unsigned_abs());
    let sessions = Sessions::new(w.app.db.store().await, idle * 30, idle, last_seen, cache);
    let sql = w.app.db.sql().await;
    let unused_for = |seconds: i64| literal(backend, chrono::Utc::now() - chrono::TimeDelta::seconds(seconds));
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {}", unused_for(IDLE + 5))).await.unwrap();
    assert_eq!(browser.me(&w.app).await.status(), 401, "idle: refused");
    sessions.delete_expired().await.unwrap();
    assert_eq!(sql.count("sessions").await, 1, "within the grace: kept");
    sql.exec(&format!("UPDATE sessions SET last_seen_at = {}", unused_for(IDLE + 700))).await.unwrap();
    sessions.delete_expired().await.unwrap();
    assert_eq!(sql.count("sessions").await, 0, "past it: swept");
}
