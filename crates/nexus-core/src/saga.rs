//! Sagas as data, and the process managers that start them from events.
//!
//! A [`SagaDefinition`] is an ordered list of steps, each a command on one aggregate with an
//! optional compensating command (contract §6). The runtime's coordinator runs the steps in order
//! and, when one fails, the compensations of the completed ones in reverse; its state lives only
//! as events in the saga's own stream. A [`ProcessManager`] is a saga written as code: it reads
//! events of the domain and answers with the saga they start (e.g. `TicketResolved` →
//! `SurveyRequest`), and with the commands to issue once such a saga ends.
//!
//! Pure like the rest of the core: the definitions are values, the process manager decides and
//! never executes.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{DomainEvent, is_valid_aggregate_id};

/// A saga: steps run in order; when one fails, the compensations of the completed ones run in
/// reverse order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaDefinition {
    /// The saga's stream (aggregate id) in the event store.
    pub saga_id: String,
    pub saga_type: String,
    pub steps: Vec<SagaStep>,
    #[serde(default)]
    pub metadata: SagaMetadata,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStep {
    /// Unique within the saga; with the saga id it names the step's command id.
    pub step_id: String,
    pub command: StepCommand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensating_command: Option<StepCommand>,
    /// How long one attempt of the command may take; the coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A command a saga issues: what `POST /api/commands/{commandType}` would take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCommand {
    pub command_type: String,
    pub aggregate_id: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl StepCommand {
    pub fn new(command_type: impl Into<String>, aggregate_id: impl Into<String>, payload: Value) -> Self {
        Self { command_type: command_type.into(), aggregate_id: aggregate_id.into(), payload }
    }
}

/// Who started the saga, carried into the metadata of every command and event it causes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Where a saga is (contract §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    InProgress,
    Compensating,
    Completed,
    Compensated,
    /// A compensation itself failed: the saga needs a person.
    Failed,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::InProgress, Self::Compensating, Self::Completed, Self::Compensated, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a saga ended, as a process manager sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaOutcome {
    pub status: SagaStatus,
    /// Why it did not complete (the failed step's error, or the compensation's).
    pub error: Option<String>,
}

/// A process manager could not read an event it said it handles.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProcessError(pub String);

/// A saga as code: reacts to the domain's events by starting sagas. Pure and deterministic: the
/// same event must give the same saga (same id, same steps), because the runtime may hand it the
/// same event again after a restart, and starting a saga whose id exists is a no-op.
pub trait ProcessManager: Send + Sync + 'static {
    /// Names its checkpoint, its configuration switch and its logs, e.g. `survey-on-resolve`.
    fn name(&self) -> &'static str;

    /// The `sagaType` of the sagas it starts; [`ProcessManager::ended`] sees only those.
    fn saga_type(&self) -> &'static str;

    fn handles(&self, event_type: &str) -> bool;

    /// Whether it runs when the server's configuration does not name it (`[process-managers]`).
    /// Default: yes. A process manager that changes what an everyday command does (cancels
    /// orders it cannot fulfil, say) may ask to be turned on explicitly instead.
    fn runs_by_default(&self) -> bool {
        true
    }

    /// The saga `event` starts, if any. Its `sagaId` must be derived from the event (see
    /// [`derived_id`]), so that one trigger starts one saga however often it is seen.
    fn start(&self, event: &DomainEvent) -> Result<Option<SagaDefinition>, ProcessError>;

    /// Commands to issue once a saga of [`ProcessManager::saga_type`] has ended (e.g. cancel the
    /// order with the reason). Each is issued once: the runtime derives its command id from the
    /// saga id and its index.
    fn ended(&self, _saga: &SagaDefinition, _outcome: &SagaOutcome) -> Vec<StepCommand> {
        Vec::new()
    }
}

/// A deterministic id from `parts` (joined with `:`), for ids derived from others: a saga's id
/// from its trigger, a step's command id from the saga and step ids. When the joined form is not
/// a valid aggregate id (over 128 characters), a 128-bit FNV-1a hash of it stands in
/// (`h-<32 hex digits>`): deterministic, though not collision-proof against a caller who crafts
/// ids on purpose.
pub fn derived_id(parts: &[&str]) -> String {
    let joined = parts.join(":");
    if is_valid_aggregate_id(&joined) {
        return joined;
    }
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let hash = joined.bytes().fold(OFFSET, |hash, byte| (hash ^ byte as u128).wrapping_mul(PRIME));
    format!("h-{hash:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn derived_ids_are_readable_when_they_fit_and_hashed_when_not() {
        assert_eq!(derived_id(&["s-1", "reserve"]), "s-1:reserve");
        let long = "x".repeat(128);
        let hashed = derived_id(&[&long, "reserve"]);
        assert!(hashed.starts_with("h-") && hashed.len() == 34, "{hashed}");
        assert_eq!(hashed, derived_id(&[&long, "reserve"]));
        assert_ne!(hashed, derived_id(&[&long, "charge"]));
        assert!(is_valid_aggregate_id(&hashed));
    }

    #[test]
    fn definitions_read_the_contract_shape() {
        let definition: SagaDefinition = serde_json::from_value(json!({
            "sagaId": "s-1",
            "sagaType": "Transfer",
            "steps": [{
                "stepId": "debit",
                "command": {"commandType": "Debit", "aggregateId": "a-1", "payload": {"amount": 5}},
                "compensatingCommand": {"commandType": "Credit", "aggregateId": "a-1"},
                "timeoutMs": 1000
            }]
        }))
        .unwrap();
        assert_eq!(definition.steps[0].timeout_ms, Some(1000));
        assert_eq!(definition.steps[0].compensating_command.as_ref().unwrap().payload, json!({}));
        assert_eq!(SagaStatus::parse("COMPENSATING"), Some(SagaStatus::Compensating));
        assert_eq!(serde_json::to_value(SagaStatus::InProgress).unwrap(), "IN_PROGRESS");
    }
}
