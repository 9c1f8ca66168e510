//! `/metrics`: behind the admin token on the main listener, alone and open on `metrics.listen`;
//! the text parses as Prometheus' format; requests, provisioning, key fetches, pools and webhook
//! queues show up after the traffic that makes them.
//!
//! The recorder is one per process and tests run side by side, so assertions use labels only
//! one test produces (its own issuer, its own webhook endpoint) or check for increases.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine;
use reqwest::Method;
use serde_json::json;
use tessera::config::{Config, IssuerConfig};
use tessera::crypto::keyring::KeyRing;
use tessera::domain::Issuer;
use tessera::startup::{Application, prepare_schema};
use tessera::store;

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb, eventually, json, on_both_backends};

on_both_backends!(
    metrics_need_the_admin_token_and_parse_as_prometheus_text,
    requests_are_counted_by_route_template_method_and_status,
    provisioning_outcomes_and_key_fetches_are_counted_per_issuer,
    webhook_failures_and_queues_are_reported_per_endpoint,
);

/// One sample: its name, labels and value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format strictly enough to fail on anything malformed: comment lines
/// are `# HELP name …` or `# TYPE name counter|gauge|histogram|summary|untyped`; every other line is
/// `name{label="value",…} value`.
fn parse(text: &str) -> Vec<Sample> {
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name, rest) = (parts.next().unwrap(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(is_name(name), "bad name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest),
                    "bad type in {line:?}"
                ),
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(is_name(key), "bad label name in {line:?}");
                    // Values escape `\`, `"` and newlines; none of ours holds a quote.
                    let end = after.find('"').unwrap_or_else(|| panic!("unclosed label value in {line:?}"));
                    labels.insert(key.to_owned(), after[..end].to_owned());
                    rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
                }
                (name, labels)
            }
        };
        assert!(is_name(name), "bad name in {line:?}");
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> bool {
    samples
        .iter()
        .any(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
}

/// Scrapes the main listener with the admin token.
pub(crate) async fn scrape(app: &TestApp) -> (String, Vec<Sample>) {
    let response = app.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

async fn metrics_need_the_admin_token_and_parse_as_prometheus_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let missing = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(json(missing, 401).await["code"], "missing_credentials");
    let wrong = app.client.get(app.url("/metrics")).bearer_auth("not-the-admin-token-at-all").send().await.unwrap();
    assert_eq!(json(wrong, 401).await["code"], "invalid_credentials");

    // Once the instance has read the cache-invalidation log, the scrape says how long ago.
    crate::helpers::eventually("the log has been read", || async { app.cache_sync.last_read_at().is_some() }).await;
    let response = app.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    assert!(text.contains("# TYPE tessera_http_requests_total counter\n"), "{text}");
    assert!(text.contains("# TYPE tessera_http_request_duration_seconds histogram\n"), "{text}");
    assert!(text.contains("# TYPE tessera_db_pool_connections gauge\n"), "{text}");
    assert_eq!(value(&samples, "tessera_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(text.contains("# TYPE tessera_cache_sync_age_seconds gauge\n"), "{text}");
    assert!(has(&samples, "tessera_cache_sync_age_seconds", &[]), "{text}");
    // Pools of this backend, sampled by this scrape.
    let pools: &[&str] = match backend {
        Backend::Sqlite => &["writer", "reader", "background"],
        Backend::Postgres => &["primary", "background"],
    };
    for pool in pools {
        for state in ["in_use", "idle"] {
            assert!(
                has(&samples, "tessera_db_pool_connections", &[("pool", pool), ("state", state)]),
                "{pool} {state}"
            );
        }
        assert!(value(&samples, "tessera_db_pool_max_connections", &[("pool", pool)]) >= 1.0, "{pool}");
        // Counted from 0, before any wait: a series first seen at 1 shows no increase to alert on.
        assert!(has(&samples, "tessera_db_pool_waits_total", &[("pool", pool)]), "{pool}");
    }
    for worker in ["sweeper", "cache_sync", "audit", "last_seen", "webhooks"] {
        assert!(has(&samples, "tessera_worker_restarts_total", &[("worker", worker)]), "{worker}: {text}");
    }
    // So are the MCP tool errors to alert on, before the first.
    let unavailable = [("code", "store_unavailable"), ("status", "503")];
    assert!(has(&samples, "tessera_mcp_tool_errors_total", &unavailable), "{text}");
    // The refused scrapes were counted, under the route's template.
    assert!(
        value(&samples, "tessera_http_requests_total", &[("route", "/metrics"), ("method", "GET"), ("status", "401")])
            >= 2.0
    );
    app.stop().await;
}

async fn requests_are_counted_by_route_template_method_and_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, before) = scrape(&app).await;
    let labels_405 = [("route", "/healthz"), ("method", "DELETE"), ("status", "405")];
    let labels_404 = [("route", "/admin/users/{user_id}"), ("method", "GET"), ("status", "404")];
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let user = uuid::Uuid::new_v4();
    for _ in 0..3 {
        let refused = app.client.delete(app.url("/healthz")).send().await.unwrap();
        assert_eq!(refused.status(), 405);
        let missing = app.admin(Method::GET, &format!("/admin/users/{user}")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        let unmatched = app.client.get(app.url(&format!("/connect/x/{secret}/y"))).send().await.unwrap();
        assert_eq!(unmatched.status(), 404);
    }
    let (text, after) = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert!(grew("tessera_http_requests_total", &labels_405) >= 3.0, "{text}");
    assert!(grew("tessera_http_requests_total", &labels_404) >= 3.0, "{text}");
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert!(grew("tessera_http_requests_total", &unmatched) >= 3.0, "{text}");
    // Histograms: every request in the +Inf bucket and the count, its time in the sum.
    let inf = [labels_405.as_slice(), &[("le", "+Inf")]].concat();
    assert!(grew("tessera_http_request_duration_seconds_bucket", &inf) >= 3.0, "{text}");
    assert!(grew("tessera_http_request_duration_seconds_count", &labels_405) >= 3.0, "{text}");
    assert!(value(&after, "tessera_http_request_duration_seconds_sum", &labels_405) > 0.0);
    assert!(has(&after, "tessera_http_request_duration_seconds_bucket", &[("le", "0.0005")]), "{text}");
    assert!(has(&after, "tessera_http_request_duration_seconds_bucket", &[("le", "5")]), "{text}");
    // Paths never become labels: neither the id nor the secret appears.
    assert!(!text.contains(&secret), "{text}");
    assert!(!text.contains(&user.to_string()), "{text}");
    app.stop().await;
}

/// An allowed issuer only this test uses; nothing listens at its keys.
fn own_issuer() -> IssuerConfig {
    let name = format!("https://metrics-{}.example.com", uuid::Uuid::new_v4().simple());
    let mut issuer = IssuerConfig::new(Issuer::parse(&name).unwrap());
    issuer.jwks_uri = Some(url::Url::parse("http://127.0.0.1:9/jwks").unwrap());
    // With an audience its keys are fetched at start-up.
    issuer.audiences = vec!["api".into()];
    issuer
}

async fn provisioning_outcomes_and_key_fetches_are_counted_per_issuer(backend: Backend) {
    let issuer = own_issuer();
    let name = issuer.issuer.as_str().to_owned();
    let app = TestApp::spawn_with(backend, |config| config.issuers.push(issuer)).await;
    let body = |subject: &str| json!({ "issuer": name, "subject": subject, "email": format!("{subject}@example.com") });
    json(app.bootstrap(&body("first")).await, 201).await;
    json(app.bootstrap(&body("first")).await, 200).await;
    // Eight at once for one new subject: one creates it, the others find it (some perhaps after
    // losing the race to create it).
    let racing: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, body) = (app.client.clone(), app.url("/admin/users/bootstrap"), body("second"));
            tokio::spawn(async move { client.post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap() })
        })
        .collect();
    for request in racing {
        assert!(request.await.unwrap().status().is_success());
    }
    let (text, samples) = scrape(&app).await;
    let outcome =
        |outcome: &str| value(&samples, "tessera_provisioning_total", &[("issuer", &name), ("outcome", outcome)]);
    assert_eq!(outcome("created"), 2.0, "{text}");
    assert_eq!(outcome("existing"), 8.0, "{text}");
    assert!((0.0..=7.0).contains(&outcome("race_lost")), "{text}");
    // The start-up prefetch of its keys failed (nothing listens there).
    eventually("the failed key fetch is counted", || async {
        let (_, samples) = scrape(&app).await;
        value(&samples, "tessera_jwks_fetch_failures_total", &[("issuer", &name)]) >= 1.0
            && value(&samples, "tessera_jwks_fetches_total", &[("issuer", &name), ("reason", "initial")]) >= 1.0
    })
    .await;
    app.stop().await;
}

async fn webhook_failures_and_queues_are_reported_per_endpoint(backend: Backend) {
    let app = TestApp::spawn_with(backend, |config| {
        let ring = format!("k1:{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        config.encryption = Some(Arc::new(KeyRing::parse(&ring).unwrap()));
    })
    .await;
    // A receiver that always answers 503, on a path holding a secret.
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let receiver = Router::new().route(
        "/hook/{secret}",
        post(move || {
            let flag = flag.clone();
            async move { if flag.load(Ordering::SeqCst) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK } }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook/url-secret-{}", listener.local_addr().unwrap(), uuid::Uuid::new_v4().simple());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let created = app.admin(Method::POST, "/admin/webhooks").json(&json!({ "url": hook })).send().await.unwrap();
    let endpoint = json(created, 201).await["id"].as_str().unwrap().to_owned();
    // Its counters are shown from 0 before any attempt: a first drop shows as an increase.
    let (text, samples) = scrape(&app).await;
    for result in ["delivered", "retry", "failed", "dropped"] {
        let this = [("endpoint", endpoint.as_str()), ("result", result)];
        assert!(has(&samples, "tessera_webhook_attempts_total", &this), "{result}: {text}");
        assert_eq!(value(&samples, "tessera_webhook_attempts_total", &this), 0.0, "{result}");
    }
    json(app.bootstrap(&crate::helpers::identity("hooked", "hooked@example.com", None)).await, 201).await;

    eventually("failed attempts and the waiting delivery are reported", || async {
        let (_, samples) = scrape(&app).await;
        value(&samples, "tessera_webhook_attempts_total", &[("endpoint", &endpoint), ("result", "retry")]) >= 1.0
            && value(&samples, "tessera_webhook_queue_depth", &[("endpoint", &endpoint)]) >= 1.0
            && has(&samples, "tessera_webhook_queue_lag_seconds", &[("endpoint", &endpoint)])
    })
    .await;
    let (text, _) = scrape(&app).await;
    assert!(!text.contains("url-secret-"), "the endpoint's URL is never a label: {text}");
    // While the queues cannot be read, a scrape sets them again as last read, their lag grown
    // with the time since: they stay in the output, and an alert on the lag keeps firing.
    let sql = app.db.sql().await;
    sql.exec("ALTER TABLE webhook_deliveries RENAME TO deliveries_away").await.unwrap();
    let (_, before) = scrape(&app).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, unread) = scrape(&app).await;
    sql.exec("ALTER TABLE deliveries_away RENAME TO webhook_deliveries").await.unwrap();
    let lag = |samples: &_| value(samples, "tessera_webhook_queue_lag_seconds", &[("endpoint", &endpoint)]);
    assert!(lag(&unread) >= lag(&before) + 1.0, "{} after {}", lag(&unread), lag(&before));
    assert!(value(&unread, "tessera_webhook_queue_depth", &[("endpoint", &endpoint)]) >= 1.0);
    // Disabled, its deliveries wait untried: still counted, but no lag an alert would fire on
    // for as long as it stays disabled.
    let path = format!("/admin/webhooks/{endpoint}");
    let disabled = app.admin(Method::PATCH, &path).json(&json!({ "enabled": false })).send().await.unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    let (_, samples) = scrape(&app).await;
    assert!(value(&samples, "tessera_webhook_queue_depth", &[("endpoint", &endpoint)]) >= 1.0);
    assert!(has(&samples, "tessera_webhook_queue_lag_seconds", &[("endpoint", &endpoint)]), "reported, as 0");
    assert_eq!(value(&samples, "tessera_webhook_queue_lag_seconds", &[("endpoint", &endpoint)]), 0.0);
    let enabled = app.admin(Method::PATCH, &path).json(&json!({ "enabled": true })).send().await.unwrap();
    assert_eq!(enabled.status(), StatusCode::OK);
    // Once the receiver recovers, the queue drains and the deliveries are counted.
    failing.store(false, Ordering::SeqCst);
    eventually("the queue drains", || async {
        let (_, samples) = scrape(&app).await;
        let this = &[("endpoint", endpoint.as_str())];
        has(&samples, "tessera_webhook_queue_depth", this)
            && value(&samples, "tessera_webhook_queue_depth", this) == 0.0
            && has(&samples, "tessera_webhook_queue_lag_seconds", this)
            && value(&samples, "tessera_webhook_queue_lag_seconds", this) == 0.0
            && value(&samples, "tessera_webhook_attempts_total", &[("endpoint", &endpoint), ("result", "delivered")])
                >= 1.0
    })
    .await;
    app.stop().await;
}

/// A server with `metrics.listen` on port 0; returns the main and the metrics addresses.
async fn start_with_metrics_listener(db: &TestDb) -> (SocketAddr, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut config: Config = db.config();
    config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let store = store::connect(&config.database).await.unwrap();
    prepare_schema(store.as_ref(), true).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::build_on(&config, store, listener).await.unwrap();
    let (main, metrics) = (app.local_addr(), app.metrics_addr().expect("metrics.listen is set"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (main, metrics, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_of_its_own_serves_metrics_without_a_token_and_the_main_one_does_not() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (main, metrics, stop) = start_with_metrics_listener(&db).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let open = client.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.headers().contains_key("x-request-id"), "every answer carries a request id");
    let samples = parse(&open.text().await.unwrap());
    assert!(has(&samples, "tessera_db_pool_connections", &[("pool", "writer")]));
    // Only /metrics there.
    let other = client.get(format!("http://{metrics}/healthz")).send().await.unwrap();
    assert_eq!(json(other, 404).await["code"], "not_found");
    let posted = client.post(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(json(posted, 405).await["code"], "method_not_allowed");
    // Not on the main listener, even with the admin token.
    let main_metrics = client.get(format!("http://{main}/metrics")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(json(main_metrics, 404).await["code"], "not_found");
    assert_eq!(client.get(format!("http://{main}/healthz")).send().await.unwrap().status(), 200);
    // Both listeners stop with the server.
    stop.send(()).unwrap();
    eventually("the metrics listener closes", || async {
        client.get(format!("http://{metrics}/metrics")).send().await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| config.metrics.enabled = false).await;
    let response = app.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(json(response, 404).await["code"], "not_found");
    app.stop().await;
}
