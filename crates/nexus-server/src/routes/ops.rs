//! Health, metrics and the projections' admin view.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

pub(crate) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready only when every configured backend answers: each is asked at once, given at most
/// [`READY_TIMEOUT`], and named in `checks` with `ok` or why not; `503` when any is not.
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let registry = state.registry.clone();
    let (event_store, read_store, registry, stream, queue) = tokio::join!(
        check(state.events.head()),
        check(state.read.ping()),
        check(async move { registry.compatibility(None).await.map_err(|e| e.to_string()) }),
        async {
            match &state.stream {
                Some(stream) => Some(check(stream.ping()).await),
                None => None,
            }
        },
        check(state.queue.ping()),
    );
    let mut checks =
        json!({"eventStore": event_store, "readStore": read_store, "registry": registry, "queue": queue});
    if let Some(stream) = stream {
        checks["stream"] = json!(stream);
    }
    let ready = checks.as_object().is_some_and(|all| all.values().all(|v| v == "ok"));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ready { "ready" } else { "unavailable" }, "checks": checks})))
}

/// How long readiness waits for one backend.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `ok`, or why the backend did not answer.
async fn check<T, E: std::fmt::Display>(probe: impl Future<Output = Result<T, E>>) -> String {
    match tokio::time::timeout(READY_TIMEOUT, probe).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no answer within {} s", READY_TIMEOUT.as_secs()),
    }
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
