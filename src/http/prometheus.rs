//! `GET /metrics` (Prometheus text) and the middleware that counts and times every request.
//!
//! The endpoint is on the main listener behind an admin token, or alone on `metrics.listen`
//! without one (see [`router`](super::router) and [`metrics_router`](super::metrics_router)).
//! Gauges that need a look at the pools or the database (webhook queues) are sampled at scrape
//! time, by the instance scraped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use super::AppState;
use super::problem::ApiError;
use crate::error::ErrorChain as _;
use crate::error::ErrorCode;
use crate::observability;
use crate::store::WebhookQueue;

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the webhook queues before answering without fresh ones: a scrape
/// must answer while the database does not.
const QUEUE_READ_LIMIT: Duration = Duration::from_secs(2);

/// The metrics of a running server.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Renders the process's metrics.
    pub handle: PrometheusHandle,
    /// Whether `/metrics` has a listener of its own (`metrics.listen`) rather than the main one.
    pub own_listener: bool,
    /// The webhook queues as last read: set again by a scrape that cannot read them (see
    /// [`scrape`]).
    pub queues: Arc<std::sync::Mutex<Vec<WebhookQueue>>>,
}

/// The `/metrics` route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(scrape))
}

/// Samples the gauges read at scrape time, then renders every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    operation_id = "metrics",
    summary = "Prometheus metrics (text exposition format); on `metrics.listen` instead when that is set.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The metrics.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    let Some(metrics) = &state.metrics else {
        return ApiError::new(ErrorCode::NotFound, "metrics are off (metrics.enabled)").into_response();
    };
    observability::record_build_info();
    observability::record_connections();
    observability::record_cache_sync_age(state.cache_sync.last_read_at());
    observability::record_pools(&state.store.pool_stats());
    let read = match tokio::time::timeout(QUEUE_READ_LIMIT, state.webhooks.queues()).await {
        Ok(Ok(queues)) => Some(queues),
        Ok(Err(error)) => {
            tracing::warn!(error = %error.chain(), "cannot read the webhook queues for /metrics");
            None
        }
        Err(_) => {
            tracing::warn!(
                limit_ms = QUEUE_READ_LIMIT.as_millis() as u64,
                "reading the webhook queues for /metrics timed out"
            );
            None
        }
    };
    // Unread, the queues as last read are set again, their lag grown with the time since (no
    // delivery is recorded while the database cannot be read): an outage longer than a gauge's
    // idle time does not make them leave the output — and an alert on the lag look resolved.
    let mut kept = metrics.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(queues) = read {
        *kept = queues;
    }
    observability::record_webhook_queues(&kept, chrono::Utc::now());
    drop(kept);
    ([(CONTENT_TYPE, TEXT_FORMAT)], metrics.handle.render()).into_response()
}

/// Counts and times a request by its route template (never its path: paths hold ids and
/// tokens), method and status. The time runs until the response's headers.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    observability::record_request(route, &method, response.status().as_u16(), started.elapsed());
    response
}
