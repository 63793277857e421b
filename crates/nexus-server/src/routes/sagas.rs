//! Sagas over HTTP (contract §6): start one, read its status, list them for an operator.
//!
//! `POST /api/sagas` belongs to the command role (it appends `SagaStarted`; that role's
//! coordinator drives the saga); the status and the admin list read the `sagas` read model and
//! belong to the query role, like every other read.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use nexus_core::ports::{Filter, ListQuery, SortOrder};
use nexus_core::{FieldError, SagaDefinition, SagaMetadata, SagaStatus, SagaStep, StepCommand};
use nexus_runtime::SagaView;
use nexus_runtime::sagas::{SAGAS_RESOURCE, saga_view};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Subject;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};

/// `POST /api/sagas` → `202 {"sagaId"}`; the saga runs in the background. When a credential
/// authenticated the request, its subject is the `userId` of the saga's events and of those its
/// step commands append, whatever `metadata.userId` says (contract §3).
pub(crate) async fn start(
    State(state): State<AppState>,
    subject: Option<Extension<Subject>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut definition = parse_definition(body).map_err(ApiError::fields)?;
    if definition.metadata.correlation_id.is_none() {
        definition.metadata.correlation_id =
            headers.get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    }
    // The same bound as a command's metadata: it is copied into every event of the saga.
    let max = state.config.limits.max_metadata_value_bytes;
    let too_long: Vec<FieldError> = [
        ("metadata.correlationId", &definition.metadata.correlation_id),
        ("metadata.userId", &definition.metadata.user_id),
    ]
    .into_iter()
    .filter_map(|(field, value)| value.as_ref().filter(|v| v.len() > max).map(|v| (field, v.len())))
    .map(|(field, len)| FieldError::new(field, format!("must be at most {max} bytes (it has {len})")))
    .collect();
    if !too_long.is_empty() {
        return Err(ApiError::fields(too_long));
    }
    if let Some(Extension(Subject(subject))) = subject {
        definition.metadata.user_id = Some(subject);
    }
    let saga_id = definition.saga_id.clone();
    state.sagas.start(definition).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"sagaId": saga_id}))))
}

/// `GET /api/sagas/{sagaId}/status`: from the `sagas` read model; folded from the saga's events
/// when the read model has not seen the saga yet (right after its start). `uncompensatedSteps`
/// appears once a compensation kept failing, and is absent otherwise.
pub(crate) async fn status(
    State(state): State<AppState>,
    Path(saga_id): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    if let Some(doc) = state.read.get(SAGAS_RESOURCE, &saga_id).await? {
        return SagaView::from_document(&doc).map(Json).map_err(|e| ApiError::Internal(e.to_string()));
    }
    match saga_view(state.events.as_ref(), &saga_id).await? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::NotFound(format!("no saga '{saga_id}'"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    saga_type: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// `GET /api/admin/sagas?status=FAILED&sagaType=&limit=&nextToken=`: the sagas an operator must
/// look at (a `FAILED` saga has `uncompensatedSteps`, whose compensation kept failing), most
/// recent first.
pub(crate) async fn list(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limits = &state.config.limits;
    let mut errors = Vec::new();
    let mut filters = Vec::new();
    if let Some(status) = params.status {
        match SagaStatus::parse(&status) {
            Some(status) => filters.push(Filter { field: "status".into(), value: status.as_str().into() }),
            None => errors.push(FieldError::new(
                "status",
                "must be IN_PROGRESS, COMPENSATING, COMPLETED, COMPENSATED or FAILED",
            )),
        }
    }
    if let Some(saga_type) = params.saga_type {
        filters.push(Filter { field: "sagaType".into(), value: saga_type });
    }
    let limit = params.limit.unwrap_or(limits.default_page_size);
    if !(1..=limits.max_page_size).contains(&limit) {
        errors.push(FieldError::new("limit", format!("must be from 1 to {}", limits.max_page_size)));
    }
    let offset =
        match params.next_token.as_deref().map(|token| crate::extract::query_integer("nextToken", token)) {
            None => 0,
            Some(Ok(offset)) => offset as usize,
            Some(Err(_)) => {
                errors.push(FieldError::new("nextToken", "is not a token this endpoint returned"));
                0
            }
        };
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let query = ListQuery { filters, sort: Some(("lastUpdated".into(), SortOrder::Desc)), limit, offset };
    let page = state.read.list(SAGAS_RESOURCE, &query).await?;
    let next = offset + page.items.len();
    let next_token = (page.items.len() == limit && (next as u64) < page.total).then(|| next.to_string());
    let mut items = Vec::with_capacity(page.items.len());
    for doc in &page.items {
        let view = SagaView::from_document(doc).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut item = serde_json::to_value(view).map_err(|e| ApiError::Internal(e.to_string()))?;
        item["lastUpdated"] = json!(doc.last_updated);
        items.push(item);
    }
    Ok(Json(json!({"items": items, "total": page.total, "nextToken": next_token})))
}

/// The contract's body (`{"sagaId"?, "sagaType", "steps": [...], "metadata"?}`) as a definition,
/// every shape error named by its path (`steps[0].command.commandType`). What the shape cannot
/// tell (known command types, payload schemas, ids) the coordinator checks.
fn parse_definition(body: Value) -> Result<SagaDefinition, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Value::Object(mut body) = body else {
        return Err(vec![FieldError::new("body", "must be a JSON object")]);
    };
    let saga_id = optional_string(&mut body, "sagaId", "sagaId", &mut errors)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let saga_type = required_string(&mut body, "sagaType", "sagaType", &mut errors);
    let steps = match body.remove("steps") {
        Some(Value::Array(steps)) => {
            steps.into_iter().enumerate().filter_map(|(i, step)| parse_step(i, step, &mut errors)).collect()
        }
        None | Some(Value::Null) => {
            errors.push(FieldError::new("steps", "is required"));
            Vec::new()
        }
        Some(_) => {
            errors.push(FieldError::new("steps", "must be an array"));
            Vec::new()
        }
    };
    let metadata = match body.remove("metadata") {
        None | Some(Value::Null) => SagaMetadata::default(),
        Some(Value::Object(mut metadata)) => {
            let parsed = SagaMetadata {
                correlation_id: optional_string(
                    &mut metadata,
                    "correlationId",
                    "metadata.correlationId",
                    &mut errors,
                ),
                user_id: optional_string(&mut metadata, "userId", "metadata.userId", &mut errors),
            };
            unknown_fields(&metadata, "metadata.", &mut errors);
            parsed
        }
        Some(_) => {
            errors.push(FieldError::new("metadata", "must be an object"));
            SagaMetadata::default()
        }
    };
    unknown_fields(&body, "", &mut errors);
    if errors.is_empty() {
        Ok(SagaDefinition { saga_id, saga_type: saga_type.unwrap_or_default(), steps, metadata })
    } else {
        Err(errors)
    }
}

fn parse_step(index: usize, step: Value, errors: &mut Vec<FieldError>) -> Option<SagaStep> {
    let path = format!("steps[{index}]");
    let Value::Object(mut step) = step else {
        errors.push(FieldError::new(path, "must be an object"));
        return None;
    };
    let step_id = required_string(&mut step, "stepId", &format!("{path}.stepId"), errors);
    let command = match step.remove("command") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(format!("{path}.command"), "is required"));
            None
        }
        Some(command) => parse_command(&format!("{path}.command"), command, errors),
    };
    let compensating_command = match step.remove("compensatingCommand") {
        None | Some(Value::Null) => None,
        Some(command) => parse_command(&format!("{path}.compensatingCommand"), command, errors),
    };
    let timeout_ms = match step.remove("timeoutMs") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().filter(|ms| *ms >= 1) {
            Some(ms) => Some(ms),
            None => {
                errors.push(FieldError::new(format!("{path}.timeoutMs"), "must be a positive integer"));
                None
            }
        },
    };
    unknown_fields(&step, &format!("{path}."), errors);
    Some(SagaStep { step_id: step_id?, command: command?, compensating_command, timeout_ms })
}

fn parse_command(path: &str, command: Value, errors: &mut Vec<FieldError>) -> Option<StepCommand> {
    let Value::Object(mut command) = command else {
        errors.push(FieldError::new(path, "must be an object"));
        return None;
    };
    let command_type = required_string(&mut command, "commandType", &format!("{path}.commandType"), errors);
    let aggregate_id = required_string(&mut command, "aggregateId", &format!("{path}.aggregateId"), errors);
    let payload = match command.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(payload @ Value::Object(_)) => payload,
        Some(_) => {
            errors.push(FieldError::new(format!("{path}.payload"), "must be an object"));
            Value::Null
        }
    };
    unknown_fields(&command, &format!("{path}."), errors);
    Some(StepCommand { command_type: command_type?, aggregate_id: aggregate_id?, payload })
}

fn required_string(
    object: &mut Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let value = optional_string(object, key, path, errors);
    if value.is_none() && !errors.iter().any(|e| e.field == path) {
        errors.push(FieldError::new(path, "is required"));
    }
    value
}

fn optional_string(
    object: &mut Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match object.remove(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(_) => {
            errors.push(FieldError::new(path, "must be a string"));
            None
        }
    }
}

/// A misspelt key (`timeout` for `timeoutMs`) must not be silently ignored.
fn unknown_fields(object: &Map<String, Value>, prefix: &str, errors: &mut Vec<FieldError>) {
    for key in object.keys() {
        errors.push(FieldError::new(format!("{prefix}{key}"), "is not an allowed field"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: Value) -> Vec<String> {
        parse_definition(body).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn the_contract_body_parses_and_a_missing_saga_id_is_generated() {
        let definition = parse_definition(json!({
            "sagaType": "Transfer",
            "steps": [{
                "stepId": "a",
                "command": {"commandType": "Debit", "aggregateId": "p-1", "payload": {"amount": 1}},
                "compensatingCommand": {"commandType": "Credit", "aggregateId": "p-1", "payload": {"amount": 1}},
                "timeoutMs": 500
            }]
        }))
        .unwrap();
        assert!(!definition.saga_id.is_empty());
        assert_eq!(definition.steps[0].timeout_ms, Some(500));
        assert_eq!(definition.steps[0].compensating_command.as_ref().unwrap().command_type, "Credit");
    }

    #[test]
    fn every_shape_error_is_named_by_its_path() {
        assert_eq!(fields(json!([])), ["body"]);
        assert_eq!(fields(json!({"sagaType": 1})), ["sagaType", "steps"]);
        let errors = fields(json!({
            "sagaType": "T",
            "steps": [
                {"stepId": "a", "command": {"aggregateId": "x", "payload": []}, "timeout": 5},
                {"command": {"commandType": "Debit", "aggregateId": 3}, "compensatingCommand": "no", "timeoutMs": 0},
                7
            ],
            "extra": true
        }));
        for expected in [
            "steps[0].command.commandType",
            "steps[0].command.payload",
            "steps[0].timeout",
            "steps[1].stepId",
            "steps[1].command.aggregateId",
            "steps[1].compensatingCommand",
            "steps[1].timeoutMs",
            "steps[2]",
            "extra",
        ] {
            assert!(errors.contains(&expected.to_owned()), "{expected} missing from {errors:?}");
        }
    }
}
