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
    /// A store failed: the client hears that a backend is unavailable, the log gets the store's
    /// own words (driver text, host names) and nobody else.
    #[error("a backend is unavailable: {0}")]
    StoreUnavailable(StoreError),
    /// A command's store stayed unavailable: the client is told the command id to send it again
    /// with, which makes the retry safe whatever became of this one.
    #[error("the event store is unavailable for command {command_id}: {source}")]
    CommandUnavailable { command_id: String, source: StoreError },
    /// A bug or corrupt data: the client hears only that, the log gets the details.
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

    /// An error axum or a layer answered before (or instead of) a handler, as plain text with
    /// `status`: the same failure in the contract's shape. `text` is axum's own explanation
    /// (such as "Invalid URL: …"), kept for 400s, where it describes the client's mistake.
    pub fn rejection(status: StatusCode, text: &str, body_limit: usize) -> Self {
        let text = text.trim();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(body_limit),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::NOT_FOUND => Self::NotFound("no such endpoint".into()),
            status if status.is_server_error() => {
                Self::Internal(format!("{status} answered as text: {text}"))
            }
            _ => {
                let message = if text.is_empty() {
                    format!("the request is malformed ({status})")
                } else {
                    format!("the request is malformed: {}", text.chars().take(300).collect::<String>())
                };
                Self::Validation { message, fields: Vec::new() }
            }
        }
    }

    /// What the client is told: the error's own words, except where those are the server's
    /// internals (a bug's details, a driver's text), which only the log gets.
    fn client_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error: the server logged the details".into(),
            Self::StoreUnavailable(_) => {
                "a backend is unavailable or stayed busy; nothing acknowledged was lost, and the request may be sent again".into()
            }
            Self::CommandUnavailable { command_id, .. } => format!(
                "the event store is unavailable; nothing acknowledged was lost. Send the command again with \
                 commandId '{command_id}' (or the Idempotency-Key header): it is then appended once, or \
                 answered as before if it was appended after all"
            ),
            _ => self.to_string(),
        }
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
            Self::Unavailable(_) | Self::StoreUnavailable(_) | Self::CommandUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = json!({"code": code, "message": self.client_message()});
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
            Self::CommandUnavailable { command_id, .. } => {
                body["commandId"] = json!(command_id);
                tracing::error!(error = %self, "request failed");
            }
            Self::Unavailable(_) | Self::StoreUnavailable(_) | Self::Internal(_) => {
                tracing::error!(error = %self, "request failed");
            }
            _ => {}
        }
        let mut response = (status, axum::Json::<Value>(body)).into_response();
        match &self {
            Self::Unavailable(_) | Self::StoreUnavailable(_) | Self::CommandUnavailable { .. } => {
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
            StoreError::Unavailable(_) => Self::StoreUnavailable(error),
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
            CommandError::Unavailable { command_id, source } => {
                Self::CommandUnavailable { command_id, source }
            }
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

/// A bearer token that did not verify, in plain words: the library's own names
/// (`ExpiredSignature`, `Base64(InvalidByte(…))`) mean nothing to a client.
impl From<jsonwebtoken::errors::Error> for ApiError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        let why = match error.kind() {
            ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                "is not a well-formed JWT (three base64url parts: header, claims, signature)".to_owned()
            }
            ErrorKind::Json(_) => "has a header or claims that are not the JSON this server reads".to_owned(),
            ErrorKind::InvalidSignature => "has a signature that does not verify".to_owned(),
            ErrorKind::ExpiredSignature => "has expired (its exp claim is in the past)".to_owned(),
            ErrorKind::ImmatureSignature => "is not valid yet (its nbf claim is in the future)".to_owned(),
            ErrorKind::InvalidIssuer => {
                "was issued by an issuer this server does not accept (iss)".to_owned()
            }
            ErrorKind::InvalidAudience => "is meant for another audience (aud)".to_owned(),
            ErrorKind::InvalidSubject => "has a subject this server does not accept (sub)".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) => format!("lacks the required claim '{claim}'"),
            ErrorKind::InvalidClaimFormat(claim) => format!("has a claim '{claim}' of the wrong type"),
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
                "is signed with an algorithm this server does not accept".to_owned()
            }
            _ => "cannot be verified".to_owned(),
        };
        Self::Unauthenticated(format!("the bearer token {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failures_are_told_in_plain_words() {
        use jsonwebtoken::errors::{Error, ErrorKind};
        let told = |kind: ErrorKind| ApiError::from(Error::from(kind)).client_message();
        assert_eq!(
            told(ErrorKind::ExpiredSignature),
            "the bearer token has expired (its exp claim is in the past)"
        );
        assert_eq!(
            told(ErrorKind::MissingRequiredClaim("sub".into())),
            "the bearer token lacks the required claim 'sub'"
        );
        assert!(!told(ErrorKind::InvalidSignature).contains("InvalidSignature"));
    }

    #[test]
    fn internals_stay_in_the_log() {
        let internal = ApiError::Internal("Order cannot read event e-1: unknown variant `X`".into());
        assert!(!internal.client_message().contains("unknown variant"));
        let store = ApiError::from(StoreError::Unavailable("connection refused to db.internal:5432".into()));
        assert!(!store.client_message().contains("db.internal"), "{}", store.client_message());
        assert!(store.to_string().contains("db.internal"), "the log keeps it");
    }
}
