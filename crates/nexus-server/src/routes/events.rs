//! The audit store, read-only over HTTP.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use nexus_core::{DomainEvent, format_timestamp};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::QueryParams;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StreamParams {
    from_version: Option<u64>,
    to_version: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamBody {
    aggregate_id: String,
    events: Vec<DomainEvent>,
}

/// `GET /api/events/{aggregateId}?fromVersion=&toVersion=`: one aggregate's events in order.
pub(crate) async fn stream(
    State(state): State<AppState>,
    Path(aggregate_id): Path<String>,
    QueryParams(params): QueryParams<StreamParams>,
) -> Result<Json<StreamBody>, ApiError> {
    let from = params.from_version.unwrap_or(1).max(1);
    if let Some(to) = params.to_version {
        if to < from {
            return Err(ApiError::field("toVersion", "must not be below fromVersion"));
        }
    }
    let events = state.events.read_stream(&aggregate_id, from, params.to_version).await?;
    if events.is_empty() && from == 1 {
        return Err(ApiError::NotFound(format!("aggregate '{aggregate_id}' has no events")));
    }
    Ok(Json(StreamBody { aggregate_id, events }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TypeParams {
    event_type: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
pub(crate) struct EventsBody {
    events: Vec<DomainEvent>,
}

/// Most events one time-range query returns.
const MAX_RANGE_LIMIT: usize = 1000;

/// `GET /api/events?eventType=&startTime=&endTime=&limit=`: events of one type in time order.
pub(crate) async fn by_type(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<TypeParams>,
) -> Result<Json<EventsBody>, ApiError> {
    let mut errors = Vec::new();
    let event_type = params.event_type.unwrap_or_default();
    if event_type.is_empty() {
        errors.push(nexus_core::FieldError::new("eventType", "is required"));
    }
    let mut time = |name: &str, value: Option<String>, default: &str| match value {
        None => Some(default.to_owned()),
        Some(text) => match DateTime::parse_from_rfc3339(&text) {
            Ok(at) => Some(format_timestamp(at.with_timezone(&Utc))),
            Err(e) => {
                errors.push(nexus_core::FieldError::new(name, format!("must be an ISO 8601 timestamp: {e}")));
                None
            }
        },
    };
    // Stored timestamps are fixed-width ISO strings, so string order is time order.
    let start = time("startTime", params.start_time, "0000-01-01T00:00:00.000Z");
    let end = time("endTime", params.end_time, "9999-12-31T23:59:59.999Z");
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_RANGE_LIMIT {
        errors.push(nexus_core::FieldError::new("limit", format!("must be between 1 and {MAX_RANGE_LIMIT}")));
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let (start, end) = (start.expect("no errors"), end.expect("no errors"));
    let events = state.events.read_by_type(&event_type, &start, &end, limit).await?;
    Ok(Json(EventsBody { events }))
}
