//! Liveness (`GET /healthz`) and readiness (`GET /readyz`, the database answers within
//! `database.ready_timeout_ms`).

use std::sync::Arc;

use super::AppState;
use super::problem::ApiError;
use super::responses::{HealthResponse, HealthStatus};
use crate::error::ErrorCode;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

/// The health routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    operation_id = "healthz",
    summary = "Liveness: the process answers.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Alive.", body = HealthResponse)),
    security(()),
)]
async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: HealthStatus::Ok })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    operation_id = "readyz",
    summary = "Readiness: the process and its database answer.",
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "Ready.", body = HealthResponse)),
    security(()),
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<HealthResponse>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        let code = ErrorCode::ShuttingDown;
        return Err(ApiError::new(code, code.fixed_detail().unwrap_or_default()));
    }
    state
        .store
        .ready()
        .await
        .map_err(|e| ApiError::new(ErrorCode::StoreUnavailable, "the database does not answer").with_source(e))?;
    let unusable = match &state.signing_keys {
        Some(keys) => keys.unusable_key(),
        None => None,
    };
    if let Some(unusable) = unusable {
        let code = ErrorCode::SigningKeyUnusable;
        return Err(ApiError::new(code, code.fixed_detail().unwrap_or_default()).with_source(unusable));
    }
    Ok(Json(HealthResponse { status: HealthStatus::Ready }))
}
