//! The audit store, read-only over HTTP.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use nexus_core::{DomainEvent, FieldError, format_timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBody, MAX_QUERY_INTEGER, PathParam, QueryParams};

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
/// Both versions are at most `MAX_QUERY_INTEGER` (checked by [`QueryParams`]): the stores keep
/// versions as signed 64-bit integers.
pub(crate) async fn stream(
    State(state): State<AppState>,
    PathParam(aggregate_id): PathParam<String>,
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
        errors.push(FieldError::new("eventType", "is required"));
    }
    let mut time = |name: &str, value: Option<String>, default: DateTime<Utc>| match value {
        None => Some(default),
        Some(text) => match DateTime::parse_from_rfc3339(&text) {
            Ok(at) => Some(at.with_timezone(&Utc)),
            Err(e) => {
                errors.push(FieldError::new(name, format!("must be an ISO 8601 timestamp: {e}")));
                None
            }
        },
    };
    // Like a temporal query, a time range reaches at most `temporal-max-days` back: that is
    // where it starts when `startTime` is left out, and an earlier one is refused.
    let max_days = state.config.limits.temporal_max_days;
    let earliest = i64::try_from(max_days)
        .ok()
        .and_then(chrono::TimeDelta::try_days)
        .and_then(|days| Utc::now().checked_sub_signed(days))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let start = time("startTime", params.start_time, earliest);
    let end = time("endTime", params.end_time, latest());
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_RANGE_LIMIT {
        errors.push(FieldError::new("limit", format!("must be between 1 and {MAX_RANGE_LIMIT}")));
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let (start, end) = (start.expect("no errors"), end.expect("no errors"));
    if start < earliest {
        return Err(ApiError::TimeRangeExceeded { max_days });
    }
    // Stored timestamps are fixed-width ISO strings, so string order is time order.
    let (start, end) = (format_timestamp(start), format_timestamp(end));
    let events = state.events.read_by_type(&event_type, &start, &end, limit).await?;
    Ok(Json(EventsBody { events }))
}

/// The latest time a stored timestamp can hold (its year has four digits).
fn latest() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z").expect("a valid timestamp").with_timezone(&Utc)
}

struct RawAppend {
    expected_version: Option<u64>,
    events: Vec<RawEvent>,
}

struct RawEvent {
    event_type: String,
    payload: Value,
    metadata: RawMetadata,
    event_id: Option<String>,
    timestamp: Option<String>,
}

struct RawMetadata {
    schema_version: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    user_id: Option<String>,
}

/// The keys of one JSON object, read one by one so that every bad one is named by its path
/// (`events[0].metadata.schemaVersion`); what is left at the end is unknown.
struct Keys<'a> {
    path: String,
    fields: Map<String, Value>,
    errors: &'a mut Vec<FieldError>,
}

impl<'a> Keys<'a> {
    /// `value` as an object at `path`, or `None` (and an error) when it is not one.
    fn of(path: String, value: Value, errors: &'a mut Vec<FieldError>) -> Option<Self> {
        match value {
            Value::Object(fields) => Some(Self { path, fields, errors }),
            _ => {
                errors.push(FieldError::new(
                    if path.is_empty() { "body" } else { &path },
                    "must be a JSON object",
                ));
                None
            }
        }
    }

    fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    fn error(&mut self, key: &str, error: impl Into<String>) {
        let path = self.path_of(key);
        self.errors.push(FieldError::new(path, error));
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.fields.remove(key).filter(|value| !value.is_null())
    }

    fn required(&mut self, key: &str) -> Option<Value> {
        let value = self.take(key);
        if value.is_none() {
            self.error(key, "is required");
        }
        value
    }

    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match if required { self.required(key) } else { self.take(key) } {
            None => None,
            Some(Value::String(text)) => Some(text),
            Some(_) => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    /// Refuses the keys nobody took.
    fn done(self, known: &str) {
        for key in self.fields.keys() {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            self.errors.push(FieldError::new(path, format!("is not a key here (known: {known})")));
        }
    }
}

/// Reads an import's body, naming every bad field; `None` when any is bad.
fn parse_import(body: Value, errors: &mut Vec<FieldError>) -> Option<RawAppend> {
    let mut top = Keys::of(String::new(), body, errors)?;
    let expected_version = match top.take("expectedVersion") {
        None => None,
        // An integral float (`2.0`) is already an integer here (see `JsonBody`).
        Some(value) => match value.as_u64().filter(|v| *v <= MAX_QUERY_INTEGER) {
            Some(version) => Some(version),
            None => {
                top.error("expectedVersion", format!("must be an integer from 0 to {MAX_QUERY_INTEGER}"));
                None
            }
        },
    };
    let raw_events = match top.required("events") {
        None => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            top.error("events", "must be an array of events");
            Vec::new()
        }
    };
    top.done("expectedVersion, events");
    let mut events = Vec::with_capacity(raw_events.len());
    for (index, raw) in raw_events.into_iter().enumerate() {
        let Some(mut event) = Keys::of(format!("events[{index}]"), raw, errors) else { continue };
        let event_type = event.string("eventType", true);
        let payload = event.required("payload");
        let event_id = event.string("eventId", false);
        let timestamp = event.string("timestamp", false);
        let metadata = event.required("metadata");
        event.done("eventType, payload, metadata, eventId, timestamp");
        let metadata = metadata.and_then(|value| {
            let mut metadata = Keys::of(format!("events[{index}].metadata"), value, errors)?;
            let schema_version = metadata.string("schemaVersion", true);
            let correlation_id = metadata.string("correlationId", false);
            let causation_id = metadata.string("causationId", false);
            let user_id = metadata.string("userId", false);
            metadata.done("schemaVersion, correlationId, causationId, userId");
            Some(RawMetadata { schema_version: schema_version?, correlation_id, causation_id, user_id })
        });
        if let (Some(event_type), Some(payload), Some(metadata)) = (event_type, payload, metadata) {
            events.push(RawEvent { event_type, payload, metadata, event_id, timestamp });
        }
    }
    errors.is_empty().then_some(RawAppend { expected_version, events })
}

/// `POST /api/events/{aggregateId}` (admin): appends events as given, for imports and
/// migrations. Each must validate against its registered schema version; they are stored at that
/// version and upcast when read, like any other. When a credential authenticated the request,
/// every event's `userId` is its subject, whatever the body says (contract §3).
pub(crate) async fn append(
    State(state): State<AppState>,
    PathParam(aggregate_id): PathParam<String>,
    subject: Option<axum::Extension<crate::auth::Subject>>,
    JsonBody(body): JsonBody,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    use nexus_core::EventMetadata;
    use nexus_core::EventRejection;
    use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};

    let mut errors = Vec::new();
    if !nexus_core::is_valid_aggregate_id(&aggregate_id) {
        errors.push(FieldError::new("aggregateId", "must be 1-128 characters of [A-Za-z0-9._:-]"));
    }
    let Some(request) = parse_import(body, &mut errors) else {
        return Err(ApiError::fields(errors));
    };
    if request.events.is_empty() {
        errors.push(FieldError::new("events", "must hold at least one event"));
    }
    // The same bound as a command's metadata.
    let max = state.config.limits.max_metadata_value_bytes;
    for (index, raw) in request.events.iter().enumerate() {
        let metadata = &raw.metadata;
        for (key, value) in [
            ("correlationId", &metadata.correlation_id),
            ("causationId", &metadata.causation_id),
            ("userId", &metadata.user_id),
        ] {
            if let Some(value) = value.as_ref().filter(|v| v.len() > max) {
                let field = format!("events[{index}].metadata.{key}");
                errors.push(FieldError::new(
                    field,
                    format!("must be at most {max} bytes (it has {})", value.len()),
                ));
            }
        }
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
                    let error = format!("must be an ISO 8601 timestamp: {e}");
                    errors.push(FieldError::new(format!("events[{index}].timestamp"), error));
                    continue;
                }
            },
        };
        events.push(NewEvent {
            event_id: raw.event_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            event_type: raw.event_type,
            timestamp,
            payload: raw.payload.into(),
            metadata: EventMetadata {
                correlation_id: raw.metadata.correlation_id.unwrap_or_else(|| "import".into()),
                causation_id: raw.metadata.causation_id.unwrap_or_else(|| "import".into()),
                // The importing credential's subject when auth is on (contract §3).
                user_id: match &subject {
                    Some(axum::Extension(crate::auth::Subject(subject))) => subject.clone(),
                    None => raw.metadata.user_id.unwrap_or_else(|| "import".into()),
                },
                schema_version: raw.metadata.schema_version,
            },
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let stored = state.events.read_stream(&aggregate_id, 1, None).await?;
    let current = stored.last().map_or(0, |last| last.aggregate_version);
    // One aggregate, one kind: an event its kind cannot apply would make every later command on
    // it, and every replay of it, fail.
    let kind_of =
        |event_type: &str| state.domain.aggregate_of_event(event_type).map(|handler| handler.kind());
    let kind = kind_of(stored.first().map_or(&events[0].event_type, |first| &first.event_type));
    let named =
        |kind: Option<&str>| kind.map_or_else(|| "none (no aggregate applies it)".to_owned(), str::to_owned);
    for (index, event) in events.iter().enumerate() {
        let of = kind_of(&event.event_type);
        if of != kind {
            errors.push(FieldError::new(
                format!("events[{index}].eventType"),
                format!(
                    "{} is an event of aggregate kind {}, but aggregate '{aggregate_id}' is of kind {}",
                    event.event_type,
                    named(of),
                    named(kind)
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
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
