//! Liveness (`GET /healthz`) and readiness (`GET /readyz`, the database answers within
//! `database.ready_timeout_ms`).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::problem::ApiError;
use crate::error::ErrorCode;

/// The health routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .ready()
        .await
        .map_err(|e| ApiError::new(ErrorCode::StoreUnavailable, "the database does not answer").with_source(e))?;
    Ok(Json(json!({ "status": "ready" })))
}
