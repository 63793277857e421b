//! `/api/schema-registry`: the Confluent Schema Registry REST API for JSON Schema (contract §7),
//! so existing registry clients work against Nexus. Errors use that API's shape
//! `{"error_code", "message"}`, not the contract's `{"code", "message"}`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use nexus_core::RegisteredSchema;
use nexus_registry::RegistryError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::BodyLimit;

/// Where the registry is served; everything under it answers errors in Confluent's shape.
const PREFIX: &str = "/api/schema-registry";

/// Whether `path` is the registry's, so that its errors take Confluent's shape.
pub(crate) fn is_registry_path(path: &str) -> bool {
    path.strip_prefix(PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A registry failure in Confluent's shape: the registry's own, or a plain HTTP failure (no
/// such endpoint, a body over the limit, a malformed path), which Confluent's server answers
/// with the HTTP status as `error_code`.
pub(crate) enum ConfluentError {
    Registry(RegistryError),
    Http { status: StatusCode, message: String },
}

impl From<RegistryError> for ConfluentError {
    fn from(error: RegistryError) -> Self {
        Self::Registry(error)
    }
}

impl IntoResponse for ConfluentError {
    fn into_response(self) -> Response {
        let (status, error_code, message) = match self {
            Self::Registry(error) => {
                let status =
                    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if status.is_server_error() {
                    tracing::error!(%error, "schema registry request failed");
                }
                (status, error.error_code(), error.to_string())
            }
            Self::Http { status, message } => {
                if status.is_server_error() {
                    tracing::error!(error = message, "schema registry request failed");
                }
                let message = if status.is_server_error() {
                    "internal error: the server logged the details".to_owned()
                } else {
                    message
                };
                (status, u32::from(status.as_u16()), format!("HTTP {status}: {message}"))
            }
        };
        (status, Json(json!({"error_code": error_code, "message": message}))).into_response()
    }
}

/// A plain HTTP failure under the registry, in Confluent's shape.
pub(crate) fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    ConfluentError::Http { status, message: message.into() }.into_response()
}

/// An error that came back as text from under the registry (see `routes::errors_as_json`), in
/// Confluent's shape: the same status, and the same words the contract's shape would use.
pub(crate) fn rejection(status: StatusCode, text: &str, body_limit: usize) -> Response {
    let error = crate::error::ApiError::rejection(status, text, body_limit);
    http_error(status, error.to_string())
}

/// A request body, read whole (the registry reads any body as JSON, whatever its content type):
/// over the body limit is a 413 in Confluent's shape.
pub(crate) struct RegistryBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RegistryBody {
    type Rejection = ConfluentError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request.extensions().get::<BodyLimit>().map_or(0, |limit| limit.0);
        Bytes::from_request(request, state).await.map(RegistryBody).map_err(|rejection| {
            let message = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => format!("the request body is larger than {limit} bytes"),
                _ => "the request body could not be read to its end".to_owned(),
            };
            ConfluentError::Http { status: rejection.status(), message }
        })
    }
}

/// Path parameters, a segment that does not decode (not UTF-8) being a 400 in Confluent's shape.
pub(crate) struct Path<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ConfluentError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(path) => Ok(Path(path.0)),
            Err(rejection) => {
                let error = crate::extract::path_error(&rejection);
                Err(ConfluentError::Http { status: rejection.status(), message: error.to_string() })
            }
        }
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
        ConfluentError::Registry(RegistryError::InvalidSchema(format!(
            "the request body is not a schema request: {e}"
        )))
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
    RegistryBody(body): RegistryBody,
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
pub(crate) async fn lookup(
    State(state): State<AppState>,
    Path(subject): Path<String>,
    RegistryBody(body): RegistryBody,
) -> Reply {
    let body = schema_body(&body)?;
    Ok(Json(full(&state.registry.lookup(&subject, &body.schema, body.schema_type.as_deref()).await?)))
}

/// `GET /schemas/ids/{id}`
pub(crate) async fn by_id(State(state): State<AppState>, Path(id): Path<String>) -> Reply {
    let id: u32 = id.parse().map_err(|_| ConfluentError::Registry(RegistryError::SchemaNotFound))?;
    let found = state.registry.by_id(id).await?;
    Ok(Json(json!({"schema": found.schema, "schemaType": found.schema_type})))
}

/// `POST /compatibility/subjects/{subject}/versions/{version}[?verbose=true]`
pub(crate) async fn compatibility(
    State(state): State<AppState>,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    RegistryBody(body): RegistryBody,
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
pub(crate) async fn set_global_config(
    State(state): State<AppState>,
    RegistryBody(body): RegistryBody,
) -> Reply {
    let body: ConfigBody = serde_json::from_slice(&body).map_err(|_| {
        ConfluentError::Registry(RegistryError::InvalidCompatibility(String::from_utf8_lossy(&body).into()))
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
    RegistryBody(body): RegistryBody,
) -> Reply {
    let body: ConfigBody = serde_json::from_slice(&body).map_err(|_| {
        ConfluentError::Registry(RegistryError::InvalidCompatibility(String::from_utf8_lossy(&body).into()))
    })?;
    let level = state.registry.set_compatibility(Some(&subject), &body.compatibility).await?;
    Ok(Json(json!({"compatibility": level.to_string()})))
}
