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

/// `GET /api/admin/projections`: each projection's checkpoint and lag. A projection tailing the
/// change feed lags the store's head by `head - checkpoint`; one the core path feeds lags by the
/// events its partitions have not applied (`partitions[].backlog`), and its checkpoint is the
/// highest position any partition has applied.
pub(crate) async fn projections(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let head = state.events.head().await?;
    let mut items = Vec::new();
    for (name, status) in &state.projections {
        let error = status.last_error();
        let rebuild = status.rebuild();
        let state = match (&rebuild, &error) {
            (Some(_), _) => "REBUILDING",
            (None, Some(_)) => "STALLED",
            (None, None) => "RUNNING",
        };
        let (lag, backlog) = status.lag_by_partition(name, head).await?;
        let mut item = json!({
            "name": name,
            "feed": status.feed(),
            "checkpoint": status.checkpoint(),
            "head": head,
            "lag": lag,
            "state": state,
            "lastError": error,
            "rebuild": rebuild.map(|r| json!({"position": r.position, "target": r.target})),
            "rebuildsCompleted": status.rebuilds_completed(),
        });
        if !backlog.is_empty() {
            item["partitions"] = backlog
                .iter()
                .enumerate()
                .map(|(partition, backlog)| json!({"partition": partition, "backlog": backlog}))
                .collect();
        }
        items.push(item);
    }
    Ok(Json(json!({"items": items})))
}

/// `POST /api/admin/projections/{name}/rebuild`: replays the projection from the first event
/// beside the live read model, which keeps answering, then swaps the new one in.
pub(crate) async fn rebuild(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let Some((name, status)) = state.projections.iter().find(|(n, _)| *n == name) else {
        return Err(ApiError::NotFound(format!("no projection '{name}'")));
    };
    status.request_rebuild();
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({"name": name, "state": "REBUILDING"}))))
}
