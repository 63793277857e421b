//! `ApiError`: the only place where failures become HTTP statuses and the contract's codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nexus_core::{FieldError, StoreError};
use nexus_runtime::{CommandError, SagaError};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { message: String, fields: Vec<FieldError> },
    #[error("{0}")]
    BusinessRule(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no handler for command type '{0}'")]
    UnknownCommand(String),
    #[error("expected version {expected}, but the aggregate is at version {actual}")]
    Concurrency { expected: u64, actual: u64 },
    #[error("commandId '{0}' was already used for a different command")]
    IdempotencyConflict(String),
    #[error("sagaId '{0}' is already used by a different saga or aggregate")]
    SagaIdConflict(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the read model did not reach version {wanted} within {timeout_ms} ms (it is at {current})")]
    ProjectionTimeout { wanted: u64, current: u64, timeout_ms: u64 },
    #[error(
        "the {resource} read model did not apply the events up to position {wanted} within {timeout_ms} ms \
         (it is at {current})"
    )]
    PositionTimeout { resource: String, wanted: u64, current: u64, timeout_ms: u64 },
    #[error("temporal queries reach at most {max_days} days back")]
    TimeRangeExceeded { max_days: u64 },
    #[error("rate limit of {limit} requests reached; retry in {retry_after} s")]
    RateLimited { limit: u32, retry_after: u64 },
    #[error("at most {limit} WebSocket connections per client are open; close one first")]
    TooManyConnections { limit: u32 },
    #[error("a backend is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// One bad field.
    pub fn field(field: &str, error: impl Into<String>) -> Self {
        Self::fields(vec![FieldError::new(field, error)])
    }

    pub fn fields(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("{}: {}", one.field, one.error),
            many => format!("{} fields are invalid", many.len()),
        };
        Self::Validation { message, fields }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation { .. } => (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            Self::BusinessRule(_) => (StatusCode::BAD_REQUEST, "BUSINESS_RULE_VIOLATION"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Self::UnknownCommand(_) => (StatusCode::NOT_FOUND, "UNKNOWN_COMMAND"),
            Self::Concurrency { .. } => (StatusCode::CONFLICT, "CONCURRENCY_CONFLICT"),
            // A saga id is the idempotency key of a saga: reused with another definition.
            Self::IdempotencyConflict(_) | Self::SagaIdConflict(_) => {
                (StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT")
            }
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::ProjectionTimeout { .. } | Self::PositionTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "PROJECTION_TIMEOUT")
            }
            Self::RateLimited { .. } | Self::TooManyConnections { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
            }
            Self::TimeRangeExceeded { .. } => (StatusCode::BAD_REQUEST, "TIME_RANGE_EXCEEDED"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = json!({"code": code, "message": self.to_string()});
        match &self {
            Self::Validation { fields, .. } => body["fields"] = json!(fields),
            Self::Concurrency { expected, actual } => {
                body["expectedVersion"] = json!(expected);
                body["actualVersion"] = json!(actual);
            }
            Self::ProjectionTimeout { wanted, current, .. } => {
                body["minVersion"] = json!(wanted);
                body["currentVersion"] = json!(current);
            }
            Self::PositionTimeout { wanted, current, .. } => {
                body["minPosition"] = json!(wanted);
                body["currentPosition"] = json!(current);
            }
            Self::Unavailable(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "request failed");
            }
            _ => {}
        }
        let mut response = (status, axum::Json::<Value>(body)).into_response();
        match &self {
            Self::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimited { retry_after, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::TooManyConnections { .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthenticated(_) => {
                let challenge = HeaderValue::from_static("Bearer realm=\"nexus\"");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidRequest(message) => Self::Validation { message, fields: Vec::new() },
            StoreError::WrongExpectedVersion { expected, actual, .. } => {
                Self::Concurrency { expected, actual }
            }
            StoreError::Unavailable(_) => Self::Unavailable(error.to_string()),
            StoreError::Corrupt(_) => Self::Internal(error.to_string()),
        }
    }
}

impl From<SagaError> for ApiError {
    fn from(error: SagaError) -> Self {
        match error {
            SagaError::Invalid(fields) => Self::fields(fields),
            SagaError::Conflict(saga_id) => Self::SagaIdConflict(saga_id),
            SagaError::Store(store) => store.into(),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::UnknownCommand(name) => Self::UnknownCommand(name),
            CommandError::Invalid(fields) => Self::fields(fields),
            CommandError::Rejected(rule) => Self::BusinessRule(rule.message),
            CommandError::Concurrency { expected, actual } => Self::Concurrency { expected, actual },
            CommandError::IdempotencyConflict { command_id } => Self::IdempotencyConflict(command_id),
            CommandError::Store(store) => store.into(),
            CommandError::Internal(message) => Self::Internal(message),
            CommandError::EventRejected(nexus_core::EventRejection::Unavailable(store)) => store.into(),
            CommandError::EventRejected(rejection) => Self::Internal(match &rejection {
                nexus_core::EventRejection::Invalid { fields, .. } => format!(
                    "{rejection}: {}",
                    fields.iter().map(|f| format!("{} {}", f.field, f.error)).collect::<Vec<_>>().join("; ")
                ),
                _ => rejection.to_string(),
            }),
        }
    }
}
