//! `POST /api/commands/{commandType}`: the write side's only door.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use nexus_core::{CommandResult, FieldError};
use nexus_runtime::CommandRequest;
use serde_json::{Map, Value};

use crate::AppState;
use crate::auth::Subject;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// Accepts a command. The body is the payload plus the envelope keys (`aggregateId`, `commandId`,
/// `expectedVersion`, `metadata`), or the seed's full `Command` envelope when it has a `payload`
/// object. Answers 202 only once the events are durable.
///
/// When a credential authenticated the request, its subject is the `userId` of the events,
/// whatever `metadata.userId` says (contract §3); the body's is still checked, as any field is.
pub(crate) async fn handle(
    State(state): State<AppState>,
    Path(command_type): Path<String>,
    subject: Option<Extension<Subject>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CommandResult>), ApiError> {
    let max_metadata_bytes = state.config.limits.max_metadata_value_bytes;
    let mut request = parse_request(command_type, body, &headers, max_metadata_bytes)?;
    if let Some(Extension(Subject(subject))) = subject {
        request.user_id = Some(subject);
    }
    let result = state.bus.handle(request).await?;
    Ok((StatusCode::ACCEPTED, Json(result)))
}

fn parse_request(
    command_type: String,
    body: Value,
    headers: &HeaderMap,
    max_metadata_bytes: usize,
) -> Result<CommandRequest, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    let mut errors = Vec::new();
    let full_envelope = matches!(body.get("payload"), Some(Value::Object(_)));
    let payload = if full_envelope {
        let payload = body.remove("payload").expect("checked above");
        // The seed's envelope names the type too; it must agree with the path.
        if let Some(named) = body.remove("commandType")
            && named.as_str() != Some(command_type.as_str())
        {
            errors.push(FieldError::new("commandType", format!("must match the path ({command_type})")));
        }
        body.remove("timestamp");
        payload
    } else {
        Value::Null
    };
    let aggregate_id = take_string(&mut body, "aggregateId", &mut errors);
    let command_id =
        take_string(&mut body, "commandId", &mut errors).or_else(|| header(headers, "idempotency-key"));
    let expected_version = match body.remove("expectedVersion") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(version) => Some(version),
            None => {
                errors.push(FieldError::new("expectedVersion", "must be a non-negative integer"));
                None
            }
        },
    };
    let mut metadata = match body.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => {
            errors.push(FieldError::new("metadata", "must be an object"));
            Map::new()
        }
    };
    let mut meta = |key: &str| match metadata.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(format!("metadata.{key}"), "must be a string"));
            None
        }
    };
    let user_id = meta("userId");
    let correlation_id = meta("correlationId");
    let causation_id = meta("causationId");
    // Each is copied into every event the command appends: bounded, the header too.
    let correlation_id = match correlation_id {
        Some(id) => Some(("metadata.correlationId", id)),
        None => header(headers, "x-correlation-id").map(|id| ("X-Correlation-Id", id)),
    };
    let mut bounded = |name: &str, value: Option<String>| {
        value.filter(|value| {
            let fits = value.len() <= max_metadata_bytes;
            if !fits {
                errors.push(FieldError::new(
                    name,
                    format!("must be at most {max_metadata_bytes} bytes (it has {})", value.len()),
                ));
            }
            fits
        })
    };
    let user_id = bounded("metadata.userId", user_id);
    let causation_id = bounded("metadata.causationId", causation_id);
    let correlation_id = match correlation_id {
        Some((name, id)) => bounded(name, Some(id)),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let payload = if full_envelope { payload } else { Value::Object(body) };
    Ok(CommandRequest {
        command_type,
        aggregate_id,
        command_id,
        expected_version,
        payload,
        user_id,
        correlation_id,
        causation_id,
    })
}

fn take_string(body: &mut Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::new(key, "must be a string"));
            None
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}
