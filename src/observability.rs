//! Prometheus metrics: the process-wide recorder (installed once), the name of every metric, and
//! helpers that record them. README "Metrics" lists each name with its type and labels.
//!
//! Labels never hold a raw path, a token, an email or a subject: routes are templates
//! (`/admin/users/{user_id}`), issuers and providers come from the configuration, webhook endpoints
//! are named by id (their URL may hold a secret).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Label, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `route` (the matched template, `unmatched` for none), `method` and
/// `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "tessera_http_requests_total";
/// Time to answer a request (until the response headers), same labels.
pub const HTTP_REQUEST_DURATION: &str = "tessera_http_request_duration_seconds";
/// Identities provisioned or found, by `issuer` and `outcome` (`created`, `existing`, `race_lost`).
pub const PROVISIONING_TOTAL: &str = "tessera_provisioning_total";
/// Fetches of an issuer's keys, by `issuer` and `reason` (`initial`, `expired`, `unknown_kid`,
/// `bad_signature`).
pub const JWKS_FETCHES_TOTAL: &str = "tessera_jwks_fetches_total";
/// Fetches of an issuer's keys that failed, by `issuer`.
pub const JWKS_FETCH_FAILURES_TOTAL: &str = "tessera_jwks_fetch_failures_total";
/// Refetches not attempted, by `issuer` and `wait` (`cooldown`: a refetch for the same kind of
/// miss succeeded within `jwks.refetch_cooldown_seconds`; `backoff`: the last fetch failed).
pub const JWKS_REFETCHES_REFUSED_TOTAL: &str = "tessera_jwks_refetches_refused_total";
/// Cache lookups, by `cache` (`tokens`, `principals`, `sessions`, `clients`) and `result` (`hit`,
/// `miss`).
pub const CACHE_LOOKUPS_TOTAL: &str = "tessera_cache_lookups_total";
/// Token refreshes that waited for another one, by `scope` (`process`: a refresh of the same
/// profile in this process; `lease`: another instance's lease).
pub const TOKEN_REFRESH_WAITS_TOTAL: &str = "tessera_token_refresh_waits_total";
/// Refresh calls to a provider's token endpoint, by `provider` and `outcome` (`ok`,
/// `invalid_grant`, `error`, `timeout`).
pub const TOKEN_REFRESH_CALLS_TOTAL: &str = "tessera_token_refresh_calls_total";
/// Background loops started again after a panic, by `worker` (`sweeper`, `cache_sync`, `replica`,
/// `signing_keys`, `webhooks`, `audit`, `last_seen`).
pub const WORKER_RESTARTS_TOTAL: &str = "tessera_worker_restarts_total";
/// `tools/call` requests of the MCP endpoint answered with a tool error, by `code` (the error's
/// code) and `status` (the HTTP status the same error has on the REST API): the endpoint answers
/// HTTP 200 whatever the tool did.
pub const MCP_TOOL_ERRORS_TOTAL: &str = "tessera_mcp_tool_errors_total";
/// Webhook delivery attempts, by `endpoint` (its id) and `result` (`delivered`, `retry`, `failed`).
pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "tessera_webhook_attempts_total";
/// Pending deliveries of each endpoint, by `endpoint`; read at scrape time.
pub const WEBHOOK_QUEUE_DEPTH: &str = "tessera_webhook_queue_depth";
/// How long the oldest pending delivery of each endpoint has waited since it was scheduled, by
/// `endpoint`; read at scrape time.
pub const WEBHOOK_QUEUE_LAG: &str = "tessera_webhook_queue_lag_seconds";
/// Connections of each database pool, by `pool` and `state` (`in_use`, `idle`); read at scrape
/// time.
pub const DB_POOL_CONNECTIONS: &str = "tessera_db_pool_connections";
/// The most connections each pool opens, by `pool`.
pub const DB_POOL_MAX_CONNECTIONS: &str = "tessera_db_pool_max_connections";
/// Statements and transactions that found every connection of their pool busy and queued for one,
/// by `pool`.
pub const DB_POOL_WAITS_TOTAL: &str = "tessera_db_pool_waits_total";
/// How far the read replica was behind the primary at its last check (at most, when readable;
/// at least, when behind), to the check's resolution.
pub const DB_REPLICA_LAG: &str = "tessera_db_replica_lag_seconds";
/// 1 while reads that tolerate lag go to the read replica, 0 while they go to the primary
/// (behind by more than `database.replica_max_lag_ms`, unreachable, or not replaying).
pub const DB_REPLICA_READABLE: &str = "tessera_db_replica_readable";
/// Connections open on this process's listeners; read at scrape time.
pub const HTTP_CONNECTIONS_OPEN: &str = "tessera_http_connections_open";
/// Times a listener reached `server.max_connections` and stopped accepting until a connection
/// closed.
pub const HTTP_CONNECTION_LIMIT_REACHED_TOTAL: &str = "tessera_http_connection_limit_reached_total";
/// Seconds since this instance's last successful read of the cache-invalidation log began; read
/// at scrape time, absent before the first read.
pub const CACHE_SYNC_AGE: &str = "tessera_cache_sync_age_seconds";
/// Always 1, with the `version` of the binary.
pub const BUILD_INFO: &str = "tessera_build_info";

/// Histogram buckets, in seconds: half a millisecond to five seconds.
const BUCKETS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// How often histograms are compacted and idle series dropped, between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Gauges not set for this long leave the output (a deleted webhook endpoint's queue, say). Every
/// gauge Tessera keeps is set again at each scrape, or, for the replica's, at each of its checks
/// (every second or so).
const GAUGE_IDLE: Duration = Duration::from_secs(600);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the whole process, once; later calls return the same
/// handle. Metrics recorded before the first call are lost. When another recorder was installed
/// first (by an embedding program), the handle renders what it has: nothing.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("the buckets are not empty")
                .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics shows nothing");
            }
            describe();
            zero_mcp_server_errors();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("tessera-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread can be started");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS_TOTAL, "Requests answered, by route template, method and status.");
    describe_counter!(MCP_TOOL_ERRORS_TOTAL, "MCP tool calls answered with a tool error, by code and REST status.");
    describe_histogram!(HTTP_REQUEST_DURATION, Unit::Seconds, "Time to answer a request, until its headers.");
    describe_counter!(PROVISIONING_TOTAL, "Identities provisioned (created, existing, race_lost), by issuer.");
    describe_counter!(JWKS_FETCHES_TOTAL, "Fetches of an issuer's keys, by reason.");
    describe_counter!(JWKS_FETCH_FAILURES_TOTAL, "Fetches of an issuer's keys that failed.");
    describe_counter!(JWKS_REFETCHES_REFUSED_TOTAL, "Key refetches not attempted (cooldown or backoff).");
    describe_counter!(crate::upstream::tokens::ISSUER_UNAVAILABLE_TOTAL, "Tokens refused: issuer keys unknown.");
    describe_counter!(CACHE_LOOKUPS_TOTAL, "Cache lookups, by cache and result (hit, miss).");
    describe_counter!(TOKEN_REFRESH_WAITS_TOTAL, "Token refreshes that waited for another one.");
    describe_counter!(TOKEN_REFRESH_CALLS_TOTAL, "Refresh calls to a provider, by outcome.");
    describe_counter!(WEBHOOK_ATTEMPTS_TOTAL, "Webhook delivery attempts, by endpoint id and result.");
    describe_counter!(WORKER_RESTARTS_TOTAL, "Background loops started again after a panic, by worker.");
    describe_gauge!(WEBHOOK_QUEUE_DEPTH, "Pending webhook deliveries, by endpoint id.");
    describe_gauge!(WEBHOOK_QUEUE_LAG, Unit::Seconds, "Age of the oldest pending delivery, by endpoint id.");
    describe_gauge!(DB_POOL_CONNECTIONS, "Database connections, by pool and state (in_use, idle).");
    describe_gauge!(DB_POOL_MAX_CONNECTIONS, "The most connections a pool opens.");
    describe_counter!(DB_POOL_WAITS_TOTAL, "Statements that queued for a connection of a busy pool.");
    describe_gauge!(
        DB_REPLICA_LAG,
        Unit::Seconds,
        "How far the read replica was behind the primary at its last check."
    );
    describe_gauge!(DB_REPLICA_READABLE, "1 while reads go to the read replica, 0 while they go to the primary.");
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the version.");
    describe_gauge!(
        CACHE_SYNC_AGE,
        Unit::Seconds,
        "Time since this instance last read the cache-invalidation log (other instances' changes)."
    );
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "Connections open on this process's listeners.");
    describe_counter!(HTTP_CONNECTION_LIMIT_REACHED_TOTAL, "Times a listener reached server.max_connections.");
}

/// Connections open on every listener of the process.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Counts one open connection until it is dropped.
#[derive(Debug)]
pub struct OpenConnection(());

impl OpenConnection {
    /// Counts a connection just accepted.
    pub fn new() -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Publishes the number of open connections as a gauge.
pub fn record_connections() {
    metrics::gauge!(HTTP_CONNECTIONS_OPEN).set(OPEN_CONNECTIONS.load(Ordering::Relaxed) as f64);
}

/// Counts a listener reaching its connection cap.
pub fn record_connection_limit_reached() {
    metrics::counter!(HTTP_CONNECTION_LIMIT_REACHED_TOTAL).increment(1);
}

/// The hit and miss counters of the cache `name`.
pub fn cache_counters(name: &'static str) -> (Counter, Counter) {
    (
        metrics::counter!(CACHE_LOOKUPS_TOTAL, "cache" => name, "result" => "hit"),
        metrics::counter!(CACHE_LOOKUPS_TOTAL, "cache" => name, "result" => "miss"),
    )
}

/// A request's method as metrics and logs name it: one of the standard ones, else `other` —
/// any other token is a client's choice, of any length, so labels and log lines stay bounded.
pub fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records one answered request. `route` is a template, never a raw path.
pub fn record_request(route: String, method: &http::Method, status: u16, elapsed: Duration) {
    let method = method_name(method);
    let labels = vec![
        Label::new("route", route),
        Label::from_static_parts("method", method),
        Label::new("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS_TOTAL, labels.clone()).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, labels).record(elapsed.as_secs_f64());
}

/// Publishes pool samples as gauges.
pub fn record_pools(pools: &[crate::store::PoolStats]) {
    for stats in pools {
        let in_use = stats.size.saturating_sub(stats.idle);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => stats.pool, "state" => "in_use").set(in_use);
        metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => stats.pool, "state" => "idle").set(stats.idle);
        metrics::gauge!(DB_POOL_MAX_CONNECTIONS, "pool" => stats.pool).set(stats.max);
        // Each pool's count of waits shown from 0, before its first wait (see `record_pool_wait`).
        metrics::counter!(DB_POOL_WAITS_TOTAL, "pool" => stats.pool).increment(0);
    }
}

/// Counts a statement or transaction that queued for a connection of `pool`.
pub fn record_pool_wait(pool: &'static str) {
    metrics::counter!(DB_POOL_WAITS_TOTAL, "pool" => pool).increment(1);
}

/// Publishes how long ago this instance's last read of the cache-invalidation log began, when
/// it has read it.
pub fn record_cache_sync_age(last_read_at: Option<std::time::Instant>) {
    if let Some(at) = last_read_at {
        metrics::gauge!(CACHE_SYNC_AGE).set(at.elapsed().as_secs_f64());
    }
}

/// Publishes the build information (again: gauges not set for a while leave the output).
pub fn record_build_info() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Publishes each webhook endpoint's queue as gauges, its lag measured at `now`; and its attempt
/// counters from 0, so that the first `dropped` (or `failed`) shows as an increase to alert on.
pub fn record_webhook_queues(queues: &[crate::store::WebhookQueue], now: chrono::DateTime<chrono::Utc>) {
    for queue in queues {
        let endpoint = queue.endpoint.to_string();
        for result in WEBHOOK_RESULTS {
            webhook_attempts(endpoint.clone(), result).increment(0);
        }
        let lag = queue.oldest_scheduled_at.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
        metrics::gauge!(WEBHOOK_QUEUE_DEPTH, "endpoint" => endpoint.clone()).set(queue.pending as f64);
        metrics::gauge!(WEBHOOK_QUEUE_LAG, "endpoint" => endpoint).set(lag);
    }
}

/// Counts a tool error of the MCP endpoint: its `code`, and the status it has on the REST API.
pub fn record_mcp_tool_error(code: crate::error::ErrorCode) {
    mcp_tool_errors(code).increment(1);
}

/// Shows the MCP tool errors of a 5xx status from 0, before the first: a series first seen at 1
/// shows no increase to alert on.
fn zero_mcp_server_errors() {
    for code in crate::error::ErrorCode::ALL.iter().filter(|code| code.status().is_server_error()) {
        mcp_tool_errors(*code).increment(0);
    }
}

/// The series of `tessera_mcp_tool_errors_total` of `code`.
fn mcp_tool_errors(code: crate::error::ErrorCode) -> metrics::Counter {
    let status = code.status().as_u16().to_string();
    metrics::counter!(MCP_TOOL_ERRORS_TOTAL, "code" => code.as_str(), "status" => status)
}

/// The results a webhook delivery attempt is counted under (see [`record_webhook_attempt`]).
const WEBHOOK_RESULTS: [&str; 4] = ["delivered", "retry", "failed", "dropped"];

/// The series of `tessera_webhook_attempts_total` of `endpoint` and `result`.
fn webhook_attempts(endpoint: String, result: &'static str) -> metrics::Counter {
    metrics::counter!(WEBHOOK_ATTEMPTS_TOTAL, "endpoint" => endpoint, "result" => result)
}

/// Counts a webhook delivery attempt of `endpoint`: `delivered`, `retry` or `failed` (a request
/// sent), or `dropped` (failed for good without one).
pub fn record_webhook_attempt(endpoint: crate::domain::WebhookId, result: &'static str) {
    webhook_attempts(endpoint.to_string(), result).increment(1);
}

/// Counts a provisioning outcome for `issuer`: `created`, `existing` or `race_lost`.
pub fn record_provisioning(issuer: &crate::domain::Issuer, outcome: &'static str) {
    metrics::counter!(PROVISIONING_TOTAL, "issuer" => issuer.to_string(), "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_connection_is_counted_until_it_is_dropped() {
        // No other unit test opens connections: the count moves for this test's alone.
        let count = || OPEN_CONNECTIONS.load(Ordering::Relaxed);
        let before = count();
        let (first, second) = (OpenConnection::new(), OpenConnection::new());
        assert_eq!(count(), before + 2);
        drop(first);
        assert_eq!(count(), before + 1);
        drop(second);
        assert_eq!(count(), before);
    }

    #[test]
    fn a_method_of_a_clients_choosing_is_named_other() {
        assert_eq!(method_name(&http::Method::PATCH), "PATCH");
        let long = http::Method::from_bytes("A".repeat(100_000).as_bytes()).unwrap();
        assert_eq!(method_name(&long), "other");
        assert_eq!(method_name(&http::Method::from_bytes(b"PROPFIND").unwrap()), "other");
    }
}
