//! Last-use bookkeeping never writes on the request path: token validation and session
//! resolution leave `last_seen_at` to the last-use worker, which writes it every
//! `server.last_seen_flush_ms` and once more at shutdown.

use std::time::Duration;

use tessera_testkit::local_issuer::LocalIssuer;

use crate::helpers::{AUDIENCE, Backend, TestApp, eventually, json as body, local_issuer_config, on_both_backends};

on_both_backends!(validation_leaves_last_use_to_the_worker, the_worker_writes_last_use_on_its_interval);

/// A long-ago time, as an SQL literal of the backend's encoding.
fn long_ago(backend: Backend) -> &'static str {
    if backend == Backend::Sqlite { "0" } else { "TIMESTAMPTZ '2000-01-01 00:00:00+00'" }
}

async fn app_with_identity(backend: Backend, flush: Duration) -> (TestApp, String, LocalIssuer) {
    let issuer = LocalIssuer::start().await.unwrap();
    let app = TestApp::spawn_with(backend, |config| {
        config.issuers.push(local_issuer_config(&issuer));
        config.server.last_seen_flush = flush;
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

async fn the_worker_writes_last_use_on_its_interval(backend: Backend) {
    let (app, token, _issuer) = app_with_identity(backend, Duration::from_millis(200)).await;
    body(app.validate(&token).await, 200).await;
    let old = format!("identities WHERE last_seen_at = {}", long_ago(backend));
    let sql = app.db.sql().await;
    eventually("the worker records the last use", || async { sql.count(&old).await == 0 }).await;
    app.stop().await;
}
