//! Health, metrics and the projections' admin view.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

pub(crate) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only when every configured backend answers.
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.events.head().await.map_err(|e| ApiError::Unavailable(format!("event store: {e}")))?;
    state.read.ping().await.map_err(|e| ApiError::Unavailable(format!("read store: {e}")))?;
    Ok(Json(json!({"status": "ready", "checks": {"eventStore": "ok", "readStore": "ok"}})))
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// `GET /api/admin/projections`: each projection's checkpoint and lag behind the store's head.
pub(crate) async fn projections(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let head = state.events.head().await?;
    let items: Vec<Value> = state
        .projections
        .iter()
        .map(|(name, status)| {
            let checkpoint = status.checkpoint();
            let error = status.last_error();
            json!({
                "name": name,
                "checkpoint": checkpoint,
                "head": head,
                "lag": head.saturating_sub(checkpoint),
                "state": if error.is_some() { "STALLED" } else { "RUNNING" },
                "lastError": error,
            })
        })
        .collect();
    for (name, status) in &state.projections {
        metrics::gauge!("nexus_projection_lag_events", "projection" => *name)
            .set(head.saturating_sub(status.checkpoint()) as f64);
    }
    Ok(Json(json!({"items": items})))
}
