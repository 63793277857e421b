//! The wire-level records: commands in, events stored, results out.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to change one aggregate (the seed's `Command`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    pub command_id: String,
    pub command_type: String,
    pub aggregate_id: String,
    pub timestamp: String,
    pub payload: Value,
    pub metadata: CommandMetadata,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandMetadata {
    pub user_id: String,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
}

/// An immutable fact, as stored: the seed's `DomainEvent` plus its global `position` in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainEvent {
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_version: u64,
    /// Global, gap-free, commit-ordered position in the store's change feed (starts at 1).
    pub position: u64,
    pub timestamp: String,
    /// Shared, not copied: an event goes to every consumer of the feed (each projection, the
    /// router, the sagas) and is never changed, so a copy of it shares its payload.
    pub payload: Arc<Value>,
    pub metadata: EventMetadata,
}

impl DomainEvent {
    /// The event as an adjacently tagged enum (`eventType` + `payload`), see [`read_tagged`].
    pub fn read_as<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        read_tagged("eventType", &self.event_type, &self.payload)
    }
}

/// Reads an adjacently tagged enum (`{tag: name, "payload": payload}`) from the payload where
/// it is: wrapping the payload in a new JSON object cloned all of it, for every event applied
/// and every command decided.
pub fn read_tagged<E: serde::de::DeserializeOwned>(
    tag: &'static str,
    name: &str,
    payload: &Value,
) -> Result<E, serde_json::Error> {
    use serde::de::value::MapDeserializer;
    let name = Value::String(name.to_owned());
    E::deserialize(MapDeserializer::new([(tag, &name), ("payload", payload)].into_iter()))
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    pub correlation_id: String,
    pub causation_id: String,
    pub user_id: String,
    pub schema_version: String,
}

/// What a command produced. Stored with the events, so a replayed `commandId` answers the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    pub success: bool,
    pub command_id: String,
    pub aggregate_id: String,
    pub version: u64,
    /// The store position of the last event appended (for a replayed command id, that of the
    /// original): what `?minPosition=` waits for. 0 when no event was appended.
    #[serde(default)]
    pub position: u64,
    pub event_ids: Vec<String>,
}

/// One rejected field, named by a path such as `items[0].quantity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self { field: field.into(), error: error.into() }
    }
}

/// Formats a time the way the contract wants it: ISO 8601 UTC with milliseconds.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The contract's aggregate id rule: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_aggregate_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T02:35:45.123456Z").unwrap().to_utc();
        assert_eq!(format_timestamp(at), "2026-11-27T02:35:45.123Z");
    }

    #[test]
    fn aggregate_ids_follow_the_contract() {
        assert!(is_valid_aggregate_id("order-1:a.b_c"));
        assert!(!is_valid_aggregate_id(""));
        assert!(!is_valid_aggregate_id("has space"));
        assert!(!is_valid_aggregate_id(&"x".repeat(129)));
    }
}
