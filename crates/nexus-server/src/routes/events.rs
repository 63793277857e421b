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
    if let Some(to) = params.to_version
        && to < from
    {
        return Err(ApiError::field("toVersion", "must not be below fromVersion"));
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAppend {
    expected_version: Option<u64>,
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEvent {
    event_type: String,
    payload: serde_json::Value,
    metadata: RawMetadata,
    event_id: Option<String>,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMetadata {
    schema_version: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    user_id: Option<String>,
}

/// `POST /api/events/{aggregateId}` (admin): appends events as given, for imports and
/// migrations. Each must validate against its registered schema version; they are stored at that
/// version and upcast when read, like any other.
pub(crate) async fn append(
    State(state): State<AppState>,
    Path(aggregate_id): Path<String>,
    crate::extract::JsonBody(body): crate::extract::JsonBody,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), ApiError> {
    use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
    use nexus_core::{EventMetadata, EventRejection, FieldError};

    let request: RawAppend =
        serde_json::from_value(body).map_err(|e| ApiError::field("body", e.to_string()))?;
    let mut errors = Vec::new();
    if !nexus_core::is_valid_aggregate_id(&aggregate_id) {
        errors.push(FieldError::new("aggregateId", "must be 1-128 characters of [A-Za-z0-9._:-]"));
    }
    if request.events.is_empty() {
        errors.push(FieldError::new("events", "must hold at least one event"));
    }
    let now = format_timestamp(Utc::now());
    let mut events = Vec::with_capacity(request.events.len());
    for (index, raw) in request.events.into_iter().enumerate() {
        match nexus_core::EventValidator::validate(
            state.registry.as_ref(),
            &raw.event_type,
            &raw.metadata.schema_version,
            &raw.payload,
        )
        .await
        {
            Ok(()) => {}
            Err(EventRejection::Unregistered { event_type, version }) => errors.push(FieldError::new(
                format!("events[{index}].eventType"),
                format!("{event_type} has no registered schema version {version}"),
            )),
            Err(EventRejection::Invalid { fields, .. }) => errors.extend(
                fields.into_iter().map(|f| FieldError::new(format!("events[{index}].{}", f.field), f.error)),
            ),
            Err(EventRejection::Unavailable(store)) => return Err(store.into()),
        }
        let timestamp = match raw.timestamp {
            None => now.clone(),
            Some(text) => match DateTime::parse_from_rfc3339(&text) {
                Ok(at) => format_timestamp(at.with_timezone(&Utc)),
                Err(e) => {
                    errors.push(FieldError::new(format!("events[{index}].timestamp"), e.to_string()));
                    continue;
                }
            },
        };
        events.push(NewEvent {
            event_id: raw.event_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            event_type: raw.event_type,
            timestamp,
            payload: raw.payload,
            metadata: EventMetadata {
                correlation_id: raw.metadata.correlation_id.unwrap_or_else(|| "import".into()),
                causation_id: raw.metadata.causation_id.unwrap_or_else(|| "import".into()),
                user_id: raw.metadata.user_id.unwrap_or_else(|| "import".into()),
                schema_version: raw.metadata.schema_version,
            },
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let current = match state.events.read_stream(&aggregate_id, 1, None).await?.last() {
        Some(last) => last.aggregate_version,
        None => 0,
    };
    let expected = request.expected_version.unwrap_or(current);
    let aggregate_type = state
        .domain
        .aggregate_of_event(&events[0].event_type)
        .map_or_else(|| "Imported".to_owned(), |handler| handler.kind().to_owned());
    let request = AppendRequest {
        aggregate_id: aggregate_id.clone(),
        aggregate_type,
        expected_version: expected,
        events,
        command: None,
    };
    match state.events.append(request).await? {
        AppendOutcome::Committed(stored) => {
            let version = stored.last().map_or(expected, |e| e.aggregate_version);
            let ids: Vec<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
            Ok((
                axum::http::StatusCode::CREATED,
                Json(serde_json::json!({"aggregateId": aggregate_id, "version": version, "eventIds": ids})),
            ))
        }
        AppendOutcome::Duplicate(_) => Err(ApiError::Internal("an import carries no command id".into())),
    }
}
