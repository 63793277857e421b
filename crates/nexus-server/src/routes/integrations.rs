//! Contract §9: webhooks and the dead-letter queue's admin API. Served by the router role, which
//! runs the queue-path consumers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nexus_core::FieldError;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::{AppState, webhooks};

/// `POST /api/admin/webhooks {"url", "eventTypes", "secret"?}` → `201 {"id"}`.
///
/// `eventTypes` names event types of the domain, core or queue path alike, or `"*"` for all of
/// them (an empty list, as before `"*"` existed: every event type on the queue path). While the server listens beyond loopback, a `url` whose host resolves to a non-public
/// address is refused unless `[webhooks] allow-private-targets` (see
/// [`webhooks::private_targets_allowed`]).
pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut errors = Vec::new();
    let Some(object) = body.as_object() else { return Err(ApiError::field("body", "must be a JSON object")) };
    for key in object.keys() {
        if !matches!(key.as_str(), "url" | "eventTypes" | "secret") {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }
    let url = match object.get("url").and_then(Value::as_str) {
        Some(url) => match webhooks::parse_target(url) {
            Ok(parsed) => Some((url.to_owned(), parsed)),
            Err(error) => {
                errors.push(FieldError::new("url", error.to_string()));
                None
            }
        },
        None => {
            errors.push(FieldError::new("url", "required string"));
            None
        }
    };
    let mut event_types = Vec::new();
    match object.get("eventTypes") {
        None => errors.push(FieldError::new("eventTypes", "required array of event types")),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let field = format!("eventTypes[{index}]");
                match item.as_str() {
                    None => errors.push(FieldError::new(field, "must be a string")),
                    Some(name) if name != webhooks::ALL_EVENT_TYPES && state.domain.event(name).is_none() => {
                        errors.push(FieldError::new(
                            field,
                            format!(
                                "unknown event type '{name}' (an event type of the domain, or \"{}\" for all)",
                                webhooks::ALL_EVENT_TYPES
                            ),
                        ))
                    }
                    Some(name) if !event_types.iter().any(|t| t == name) => event_types.push(name.to_owned()),
                    Some(_) => {} // named twice
                }
            }
        }
        Some(_) => errors.push(FieldError::new("eventTypes", "must be an array of event types")),
    }
    let secret = match object.get("secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(secret)) if !secret.is_empty() => Some(secret.clone()),
        Some(_) => {
            errors.push(FieldError::new("secret", "must be a non-empty string"));
            None
        }
    };
    // Resolving the host is the last check, and only for an otherwise valid request.
    let url = match url {
        Some((url, parsed)) if errors.is_empty() && !webhooks::private_targets_allowed(&state.config) => {
            match webhooks::check_public(&parsed).await {
                Ok(()) => url,
                Err(error) => return Err(ApiError::fields(vec![FieldError::new("url", error.to_string())])),
            }
        }
        Some((url, _)) => url,
        None => String::new(),
    };
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let hook = state.webhooks.create(url, event_types, secret).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": hook.id}))))
}

/// `GET /api/admin/webhooks`.
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let hooks = state.webhooks.list().await?;
    Ok(Json(json!({"items": hooks.iter().map(|h| h.view()).collect::<Vec<_>>()})))
}

/// `DELETE /api/admin/webhooks/{id}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.webhooks.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no webhook '{id}'")))
    }
}

/// `GET /api/admin/dlq`.
pub(crate) async fn dead_letters(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let letters = state.queue.dead_letters(1000).await?;
    metrics::gauge!("nexus_dlq_depth").set(letters.len() as f64);
    let items: Vec<Value> = letters
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "eventId": d.event.event_id,
                "eventType": d.event.event_type,
                "aggregateId": d.event.aggregate_id,
                "consumer": d.consumer,
                "failureReason": d.failure_reason,
                "retryCount": d.retry_count,
                "firstFailureTime": d.first_failure_time,
                "lastFailureTime": d.last_failure_time,
            })
        })
        .collect();
    Ok(Json(json!({"items": items})))
}

/// `POST /api/admin/dlq/{id}/retry`: a queue consumer's dead letter is republished to its queue;
/// a projection's (`projection:{name}`) is applied to that projection's documents, once (see
/// `nexus_runtime::reapply_parked`), and archived. While the projection still fails on the event,
/// the dead letter stays waiting and the answer says why.
pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let missing = || ApiError::NotFound(format!("no waiting dead letter '{id}'"));
    let letters = state.queue.dead_letters(DEAD_LETTERS_SEARCHED).await?;
    let letter = letters.into_iter().find(|letter| letter.id == id).ok_or_else(missing)?;
    let Some(name) = nexus_runtime::parked_projection(&letter.consumer) else {
        return match state.queue.retry(&id).await? {
            true => Ok(Json(json!({"id": id, "state": "RETRIED"}))),
            false => Err(missing()),
        };
    };
    let projection = state.domain.projections().iter().find(|p| p.name() == name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "dead letter '{id}' names projection '{name}', which this service does not have"
        ))
    })?;
    // This process's runner of the projection, if it runs one here, so the two take turns.
    let status =
        state.projections.iter().find(|(n, _)| *n == name).map(|(_, s)| s.clone()).unwrap_or_default();
    match nexus_runtime::reapply_parked(projection.as_ref(), state.read.as_ref(), &status, &letter.event)
        .await
    {
        Ok(reapplied) => {
            state.queue.skip(&id).await?;
            let again = reapplied == nexus_runtime::Reapplied::AlreadyApplied;
            Ok(Json(json!({"id": id, "state": "RETRIED", "alreadyApplied": again})))
        }
        Err(nexus_runtime::StepError::Poison { error, .. }) => Err(ApiError::BusinessRule(format!(
            "projection {name} still fails on event {}: {error}; the dead letter stays waiting (fix the \
             projection and retry, or skip it)",
            letter.event.event_id
        ))),
        Err(nexus_runtime::StepError::Store(error)) => Err(error.into()),
        Err(other) => Err(ApiError::Internal(other.to_string())),
    }
}

/// How many waiting dead letters a retry looks through for its id.
const DEAD_LETTERS_SEARCHED: usize = 100_000;

/// `POST /api/admin/dlq/{id}/skip`: archives it.
pub(crate) async fn skip(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.queue.skip(&id).await? {
        Ok(Json(json!({"id": id, "state": "ARCHIVED"})))
    } else {
        Err(ApiError::NotFound(format!("no waiting dead letter '{id}'")))
    }
}
