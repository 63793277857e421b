//! Confluent Schema Registry semantics over the `SchemaStore` port.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use nexus_core::{EventRejection, EventValidator, FieldError, RegisteredSchema, SchemaStore, StoreError};
use serde_json::Value;

use crate::compat::{self, Compatibility, Violation};

/// Failures, each with Confluent's `error_code` (the HTTP status is its first three digits).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound { subject: String, version: String },
    #[error("Schema not found.")]
    SchemaNotFound,
    #[error("Subject '{0}' does not have subject-level compatibility configured.")]
    SubjectConfigNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
    )]
    InvalidCompatibility(String),
    /// The name is not kept: it may be 10 KB, or hold control characters.
    #[error(
        "Invalid subject: a subject name is 1 to {MAX_SUBJECT_LEN} characters from A-Z, a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidSubject,
    #[error("Schema being registered is incompatible with an earlier schema for subject '{subject}': {}", describe(.violations))]
    Incompatible { subject: String, violations: Vec<Violation> },
    #[error("Error in the backend data store: {0}")]
    Store(#[from] StoreError),
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} at {} ({})", v.rule, v.path, v.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RegistryError {
    /// Confluent's error code.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound => 40403,
            Self::SubjectConfigNotFound(_) => 40408,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibility(_) => 42203,
            Self::InvalidSubject => 42208,
            Self::Store(_) => 50001,
        }
    }

    /// The HTTP status that goes with the error code.
    pub fn status(&self) -> u16 {
        let code = self.error_code();
        if code < 1000 { code as u16 } else { (code / 100) as u16 }
    }
}

/// A version selector: a number or `latest`.
fn parse_version(text: &str) -> Result<Option<u32>, RegistryError> {
    if text == "latest" || text == "-1" {
        return Ok(None);
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(Some(n)),
        _ => Err(RegistryError::InvalidVersion(text.to_owned())),
    }
}

/// The longest subject name.
pub const MAX_SUBJECT_LEN: usize = 255;

/// A subject name a registry client may create: `[A-Za-z0-9._-]{1,255}`, which every shipped
/// subject fits (event types, `commands.{CommandType}`). An event type is a subject, and it ends
/// up in header values (a webhook's `ce-type`), file names and logs: a control character, a `/`
/// or a 10 KB name would break them long after the registry accepted it.
pub fn check_subject(subject: &str) -> Result<(), RegistryError> {
    let valid = (1..=MAX_SUBJECT_LEN).contains(&subject.len())
        && subject.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid { Ok(()) } else { Err(RegistryError::InvalidSubject) }
}

/// The default when neither the subject nor the registry sets one (Confluent's default).
pub const DEFAULT_COMPATIBILITY: Compatibility = Compatibility::Backward;

pub struct Registry {
    store: Arc<dyn SchemaStore>,
    /// Compiled validators by (subject, version): compiling costs ~100 validations.
    validators: RwLock<HashMap<(String, u32), Arc<jsonschema::Validator>>>,
}

impl Registry {
    pub fn new(store: Arc<dyn SchemaStore>) -> Self {
        Self { store, validators: RwLock::new(HashMap::new()) }
    }

    /// Parses and checks a schema; returns it with its canonical text (keys sorted, no spaces).
    fn parse(schema: &str, schema_type: Option<&str>) -> Result<(Value, String), RegistryError> {
        if let Some(kind) = schema_type
            && !kind.eq_ignore_ascii_case("JSON")
        {
            return Err(RegistryError::InvalidSchema(format!(
                "schemaType {kind} is not supported; this registry holds JSON schemas"
            )));
        }
        let value: Value =
            serde_json::from_str(schema).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        if !(value.is_object() || value.is_boolean()) {
            return Err(RegistryError::InvalidSchema("a JSON Schema is an object or a boolean".into()));
        }
        jsonschema::validator_for(&value).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let canonical = value.to_string();
        Ok((value, canonical))
    }

    /// The compatibility level in force for `subject`.
    pub async fn effective_compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let level = match self.store.compatibility(Some(subject)).await? {
            Some(level) => Some(level),
            None => self.store.compatibility(None).await?,
        };
        Ok(level.and_then(|l| l.parse().ok()).unwrap_or(DEFAULT_COMPATIBILITY))
    }

    /// Registers `schema` under `subject` if it is compatible with what the subject holds.
    /// Registering the same schema again returns the existing version.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: Option<&str>,
    ) -> Result<RegisteredSchema, RegistryError> {
        check_subject(subject)?;
        let (value, canonical) = Self::parse(schema, schema_type)?;
        let versions = self.store.versions(subject).await?;
        if let Some(existing) = versions.iter().find(|v| v.schema == canonical) {
            return Ok(existing.clone());
        }
        let previous = versions
            .iter()
            .map(|v| serde_json::from_str(&v.schema))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("stored schema of {subject}: {e}")))?;
        let level = self.effective_compatibility(subject).await?;
        let violations = compat::check(level, &value, &previous);
        if !violations.is_empty() {
            return Err(RegistryError::Incompatible { subject: subject.to_owned(), violations });
        }
        Ok(self.store.register(subject, &canonical, "JSON").await?)
    }

    /// The violations `schema` would have against `version` of `subject` (`latest`: against what
    /// the subject's level compares with, all versions for transitive levels).
    pub async fn check_compatibility(
        &self,
        subject: &str,
        version: &str,
        schema: &str,
        schema_type: Option<&str>,
    ) -> Result<Vec<Violation>, RegistryError> {
        let wanted = parse_version(version)?;
        let (value, _) = Self::parse(schema, schema_type)?;
        let versions = self.store.versions(subject).await?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let level = self.effective_compatibility(subject).await?;
        let against: Vec<&RegisteredSchema> = match wanted {
            None => versions.iter().collect(),
            Some(n) => vec![versions.iter().find(|v| v.version == n).ok_or_else(|| {
                RegistryError::VersionNotFound { subject: subject.to_owned(), version: n.to_string() }
            })?],
        };
        let previous = against
            .iter()
            .map(|v| serde_json::from_str(&v.schema))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| StoreError::Corrupt(format!("stored schema of {subject}: {e}")))?;
        Ok(compat::check(level, &value, &previous))
    }

    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self.store.subjects().await?)
    }

    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let versions = self.store.versions(subject).await?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions.iter().map(|v| v.version).collect())
    }

    pub async fn version(&self, subject: &str, version: &str) -> Result<RegisteredSchema, RegistryError> {
        let wanted = parse_version(version)?;
        let versions = self.store.versions(subject).await?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let found = match wanted {
            None => versions.last().cloned(),
            Some(n) => versions.into_iter().find(|v| v.version == n),
        };
        found.ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: version.to_owned(),
        })
    }

    pub async fn by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        self.store.by_id(id).await?.ok_or(RegistryError::SchemaNotFound)
    }

    /// The version of `subject` holding exactly `schema` (after canonicalization).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
        schema_type: Option<&str>,
    ) -> Result<RegisteredSchema, RegistryError> {
        let (_, canonical) = Self::parse(schema, schema_type)?;
        let versions = self.store.versions(subject).await?;
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        versions.into_iter().find(|v| v.schema == canonical).ok_or(RegistryError::SchemaNotFound)
    }

    /// The level set for `subject` (`None`: the global one, defaulting to BACKWARD).
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, RegistryError> {
        match subject {
            None => Ok(self
                .store
                .compatibility(None)
                .await?
                .and_then(|l| l.parse().ok())
                .unwrap_or(DEFAULT_COMPATIBILITY)),
            Some(subject) => match self.store.compatibility(Some(subject)).await? {
                Some(level) => level.parse().map_err(|_| RegistryError::InvalidCompatibility(level)),
                None => Err(RegistryError::SubjectConfigNotFound(subject.to_owned())),
            },
        }
    }

    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: &str,
    ) -> Result<Compatibility, RegistryError> {
        if let Some(subject) = subject {
            check_subject(subject)?;
        }
        let parsed: Compatibility =
            level.parse().map_err(|_| RegistryError::InvalidCompatibility(level.to_owned()))?;
        self.store.set_compatibility(subject, &parsed.to_string()).await?;
        Ok(parsed)
    }

    /// The compiled validator of `subject` at `version`, compiled once and cached.
    async fn validator(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<Option<Arc<jsonschema::Validator>>, StoreError> {
        let key = (subject.to_owned(), version);
        if let Some(found) = self.validators.read().expect("validator cache poisoned").get(&key) {
            return Ok(Some(found.clone()));
        }
        let versions = self.store.versions(subject).await?;
        let Some(registered) = versions.into_iter().find(|v| v.version == version) else { return Ok(None) };
        let schema: Value = serde_json::from_str(&registered.schema)
            .map_err(|e| StoreError::Corrupt(format!("stored schema {subject} v{version}: {e}")))?;
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| StoreError::Corrupt(format!("stored schema {subject} v{version}: {e}")))?;
        let validator = Arc::new(validator);
        self.validators.write().expect("validator cache poisoned").insert(key, validator.clone());
        Ok(Some(validator))
    }
}

/// "2", "2.0" → 2.
fn major_version(text: &str) -> Option<u32> {
    let major = text.strip_suffix(".0").unwrap_or(text);
    major.parse().ok().filter(|v| *v >= 1)
}

#[async_trait]
impl EventValidator for Registry {
    async fn validate(
        &self,
        event_type: &str,
        schema_version: &str,
        payload: &Value,
    ) -> Result<(), EventRejection> {
        let unregistered = || EventRejection::Unregistered {
            event_type: event_type.to_owned(),
            version: schema_version.to_owned(),
        };
        let version = major_version(schema_version).ok_or_else(unregistered)?;
        let validator = self
            .validator(event_type, version)
            .await
            .map_err(EventRejection::Unavailable)?
            .ok_or_else(unregistered)?;
        let fields: Vec<FieldError> = validator
            .iter_errors(payload)
            .map(|error| {
                let path = error.instance_path().to_string();
                let field = if path.is_empty() {
                    "payload".to_owned()
                } else {
                    format!("payload{}", path.replace('/', "."))
                };
                FieldError::new(field, error.to_string())
            })
            .collect();
        if fields.is_empty() {
            Ok(())
        } else {
            Err(EventRejection::Invalid {
                event_type: event_type.to_owned(),
                version: schema_version.to_owned(),
                fields,
            })
        }
    }
}

#[cfg(test)]
mod subject_tests {
    use super::*;

    #[test]
    fn subject_names_are_restricted() {
        for ok in ["TicketOpened", "commands.OpenTicket", "a-b_c.1", &"x".repeat(MAX_SUBJECT_LEN)] {
            assert!(check_subject(ok).is_ok(), "{ok}");
        }
        for bad in ["", "\r\nInjected", "a\0b", "a/b", "a b", "Ünïcode", &"x".repeat(MAX_SUBJECT_LEN + 1)] {
            assert!(matches!(check_subject(bad), Err(RegistryError::InvalidSubject)), "{bad:?}");
        }
        assert_eq!(RegistryError::InvalidSubject.status(), 422);
    }
}
