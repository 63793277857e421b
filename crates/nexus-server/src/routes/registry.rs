//! `/api/schema-registry`: the Confluent Schema Registry REST API for JSON Schema (contract §7),
//! so existing registry clients work against Nexus. Errors use that API's shape
//! `{"error_code", "message"}`, not the contract's `{"code", "message"}`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nexus_core::RegisteredSchema;
use nexus_registry::RegistryError;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;

/// A registry failure in Confluent's shape.
pub(crate) struct ConfluentError(RegistryError);

impl From<RegistryError> for ConfluentError {
    fn from(error: RegistryError) -> Self {
        Self(error)
    }
}

impl IntoResponse for ConfluentError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "schema registry request failed");
        }
        (status, Json(json!({"error_code": self.0.error_code(), "message": self.0.to_string()})))
            .into_response()
    }
}

type Reply = Result<Json<Value>, ConfluentError>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    // Confluent clients may send `references`, `metadata`, `ruleSet`: accepted, not used.
}

fn schema_body(bytes: &Bytes) -> Result<SchemaBody, ConfluentError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ConfluentError(RegistryError::InvalidSchema(format!("the request body is not a schema request: {e}")))
    })
}

fn full(schema: &RegisteredSchema) -> Value {
    json!({
        "subject": schema.subject,
        "version": schema.version,
        "id": schema.id,
        "schema": schema.schema,
        "schemaType": schema.schema_type,
    })
}

/// `GET /subjects`
pub(crate) async fn subjects(State(state): State<AppState>) -> Reply {
    Ok(Json(json!(state.registry.subjects().await?)))
}

/// `GET /subjects/{subject}/versions`
pub(crate) async fn versions(State(state): State<AppState>, Path(subject): Path<String>) -> Reply {
    Ok(Json(json!(state.registry.versions(&subject).await?)))
}

/// `POST /subjects/{subject}/versions`: register (idempotent), answering `{"id"}`.
pub(crate) async fn register(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Reply {
    let body = schema_body(&body)?;
    let registered = state.registry.register(&subject, &body.schema, body.schema_type.as_deref()).await?;
    // Confluent answers `{"id"}`; newer clients read the full record when present.
    Ok(Json(full(&registered)))
}

/// `GET /subjects/{subject}/versions/{version}` (a number or `latest`)
pub(crate) async fn version(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    Ok(Json(full(&state.registry.version(&subject, &version).await?)))
}

/// `GET /subjects/{subject}/versions/{version}/schema`: the schema text alone.
pub(crate) async fn version_schema(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ConfluentError> {
    let found = state.registry.version(&subject, &version).await?;
    let value: Value = serde_json::from_str(&found.schema).unwrap_or(Value::String(found.schema));
    Ok(Json(value).into_response())
}

/// `POST /subjects/{subject}`: which version of the subject holds this schema.
pub(crate) async fn lookup(State(state): State<AppState>, Path(subject): Path<String>, body: Bytes) -> Reply {
    let body = schema_body(&body)?;
    Ok(Json(full(&state.registry.lookup(&subject, &body.schema, body.schema_type.as_deref()).await?)))
}

/// `GET /schemas/ids/{id}`
pub(crate) async fn by_id(State(state): State<AppState>, Path(id): Path<String>) -> Reply {
    let id: u32 = id.parse().map_err(|_| ConfluentError(RegistryError::SchemaNotFound))?;
    let found = state.registry.by_id(id).await?;
    Ok(Json(json!({"schema": found.schema, "schemaType": found.schema_type})))
}

/// `POST /compatibility/subjects/{subject}/versions/{version}[?verbose=true]`
pub(crate) async fn compatibility(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Reply {
    let body = schema_body(&body)?;
    let violations = state
        .registry
        .check_compatibility(&subject, &version, &body.schema, body.schema_type.as_deref())
        .await?;
    let mut answer = json!({"is_compatible": violations.is_empty()});
    if params.get("verbose").is_some_and(|v| v == "true") {
        answer["messages"] = json!(
            violations.iter().map(|v| format!("{}: {} at {}", v.rule, v.message, v.path)).collect::<Vec<_>>()
        );
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(crate) struct ConfigBody {
    compatibility: String,
}

/// `GET /config`
pub(crate) async fn global_config(State(state): State<AppState>) -> Reply {
    Ok(Json(json!({"compatibilityLevel": state.registry.compatibility(None).await?.to_string()})))
}

/// `PUT /config`
pub(crate) async fn set_global_config(State(state): State<AppState>, body: Bytes) -> Reply {
    let body: ConfigBody = serde_json::from_slice(&body).map_err(|_| {
        ConfluentError(RegistryError::InvalidCompatibility(String::from_utf8_lossy(&body).into()))
    })?;
    Ok(Json(
        json!({"compatibility": state.registry.set_compatibility(None, &body.compatibility).await?.to_string()}),
    ))
}

/// `GET /config/{subject}` (`?defaultToGlobal=true` falls back to the global level)
pub(crate) async fn subject_config(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Reply {
    let level = match state.registry.compatibility(Some(&subject)).await {
        Err(RegistryError::SubjectConfigNotFound(_))
            if params.get("defaultToGlobal").is_some_and(|v| v == "true") =>
        {
            state.registry.compatibility(None).await?
        }
        other => other?,
    };
    Ok(Json(json!({"compatibilityLevel": level.to_string()})))
}

/// `PUT /config/{subject}`
pub(crate) async fn set_subject_config(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Reply {
    let body: ConfigBody = serde_json::from_slice(&body).map_err(|_| {
        ConfluentError(RegistryError::InvalidCompatibility(String::from_utf8_lossy(&body).into()))
    })?;
    let level = state.registry.set_compatibility(Some(&subject), &body.compatibility).await?;
    Ok(Json(json!({"compatibility": level.to_string()})))
}
