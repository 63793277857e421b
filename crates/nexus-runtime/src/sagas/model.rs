//! A saga's durable state: its events, their fold, the `sagas` read model, and what to do next.
//! Pure: the coordinator does the I/O around it.

use nexus_core::{
    Aggregate, CommandSpec, DomainError, DomainEvent, EventSpec, Projection, ProjectionError, ReadDocument,
    SagaDefinition, SagaStatus, Upcaster,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every event of a saga's stream. Adjacently tagged like every aggregate's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum SagaEvent {
    /// The whole definition, step timeouts resolved: a restart needs nothing else.
    SagaStarted(SagaDefinition),
    SagaStepCompleted(SagaStepCompleted),
    SagaStepFailed(SagaStepFailed),
    SagaStepCompensated(SagaStepCompensated),
    SagaCompleted(SagaCompleted),
    SagaCompensated(SagaCompensated),
    SagaFailed(SagaFailed),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStepCompleted {
    pub step_id: String,
    /// The command id the step ran under (derived from saga and step ids).
    pub command_id: String,
    pub aggregate_id: String,
    /// The step's aggregate's version after the command.
    pub version: u64,
}

/// A step's command failed (the saga starts compensating), or, with `compensation`, a step's
/// compensating command kept failing (the step stays uncompensated and the earlier steps are
/// still compensated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStepFailed {
    pub step_id: String,
    pub reason: FailureReason,
    pub error: String,
    pub attempts: u32,
    /// The step's compensating command failed, not its command. Absent (false) in schema v1
    /// events, which only recorded a step's own failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compensation: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStepCompensated {
    pub step_id: String,
    pub command_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaCompleted {
    pub saga_type: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaCompensated {
    pub saga_type: String,
    /// Why the saga was compensated: the failed step's error.
    pub error: String,
}

/// Every compensation ran and at least one kept failing: the saga waits for a person to undo
/// what stayed uncompensated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaFailed {
    pub saga_type: String,
    /// The first step whose compensation failed (every one is a `SagaStepFailed` before this).
    pub step_id: String,
    /// Which steps stayed uncompensated, and why.
    pub error: String,
}

/// Why one attempt of a command did not succeed, as the coordinator decides about retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureReason {
    /// The aggregate's rules said no: compensate at once.
    Rejected,
    /// The command is malformed or unknown: compensate at once.
    Invalid,
    /// No answer within the step's timeout: retried, then compensated.
    Timeout,
    /// The store is unavailable: retried, then compensated.
    Unavailable,
    /// Anything else (an idempotency conflict, a bug): compensate at once.
    Error,
}

impl FailureReason {
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable)
    }
}

pub const SAGA_STARTED: &str = "SagaStarted";
/// The events after which a saga's stream never grows.
pub const TERMINAL_EVENTS: [&str; 3] = ["SagaCompleted", "SagaCompensated", "SagaFailed"];

const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "SagaStarted",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaStarted.v1.json"),
    },
    EventSpec {
        name: "SagaStepCompleted",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaStepCompleted.v1.json"),
    },
    EventSpec {
        name: "SagaStepFailed",
        schema_version: 2,
        schema: include_str!("../../schemas/events/SagaStepFailed.v2.json"),
    },
    EventSpec {
        name: "SagaStepCompensated",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaStepCompensated.v1.json"),
    },
    EventSpec {
        name: "SagaCompleted",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaCompleted.v1.json"),
    },
    EventSpec {
        name: "SagaCompensated",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaCompensated.v1.json"),
    },
    EventSpec {
        name: "SagaFailed",
        schema_version: 1,
        schema: include_str!("../../schemas/events/SagaFailed.v1.json"),
    },
];

/// The older schema versions of saga events. v2 of `SagaStepFailed` only adds the optional
/// `compensation`, so a v1 event reads as v2 unchanged; its schema is still registered so that
/// the registry's subject keeps version N = schema N for stores that hold v1 events.
pub const UPCASTERS: [Upcaster; 1] = [Upcaster {
    event_type: "SagaStepFailed",
    from_version: 1,
    from_schema: include_str!("../../schemas/events/SagaStepFailed.v1.json"),
    upcast: std::convert::identity,
}];

/// The status read model of one saga: the body of `GET /api/sagas/{sagaId}/status` and the
/// fields of its `sagas` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    pub saga_id: String,
    pub saga_type: String,
    pub status: SagaStatus,
    /// Index of the step being run (the number of completed steps); `totalSteps` once complete.
    pub current_step: usize,
    pub total_steps: usize,
    /// Step ids in completion order.
    pub completed_steps: Vec<String>,
    /// Step ids in compensation order (the reverse of completion).
    #[serde(default)]
    pub compensated_steps: Vec<String>,
    /// Steps whose compensation kept failing, in the order they were attempted: a person must
    /// undo them. Absent while empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncompensated_steps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SagaView {
    fn new(saga_id: &str) -> Self {
        Self {
            saga_id: saga_id.to_owned(),
            saga_type: String::new(),
            status: SagaStatus::InProgress,
            current_step: 0,
            total_steps: 0,
            completed_steps: Vec::new(),
            compensated_steps: Vec::new(),
            uncompensated_steps: Vec::new(),
            failed_step: None,
            error: None,
        }
    }

    /// The one fold of saga events into a status, shared by the aggregate and the projection.
    pub fn apply(&mut self, event: &SagaEvent) {
        match event {
            SagaEvent::SagaStarted(definition) => {
                self.saga_id = definition.saga_id.clone();
                self.saga_type = definition.saga_type.clone();
                self.total_steps = definition.steps.len();
                self.status = SagaStatus::InProgress;
            }
            SagaEvent::SagaStepCompleted(completed) => {
                self.completed_steps.push(completed.step_id.clone());
                self.current_step = self.completed_steps.len();
            }
            SagaEvent::SagaStepFailed(failed) if failed.compensation => {
                self.uncompensated_steps.push(failed.step_id.clone());
            }
            SagaEvent::SagaStepFailed(failed) => {
                self.status = SagaStatus::Compensating;
                self.failed_step = Some(failed.step_id.clone());
                self.error = Some(format!("step {} failed: {}", failed.step_id, failed.error));
            }
            SagaEvent::SagaStepCompensated(compensated) => {
                self.compensated_steps.push(compensated.step_id.clone());
            }
            SagaEvent::SagaCompleted(_) => self.status = SagaStatus::Completed,
            SagaEvent::SagaCompensated(compensated) => {
                self.status = SagaStatus::Compensated;
                self.error = Some(compensated.error.clone());
            }
            SagaEvent::SagaFailed(failed) => {
                self.status = SagaStatus::Failed;
                self.error = Some(failed.error.clone());
            }
        }
    }

    /// The view a `sagas` document holds (`status` is the document's own field).
    pub fn from_document(doc: &ReadDocument) -> Result<Self, ProjectionError> {
        if doc.version == 0 {
            return Ok(Self::new(&doc.aggregate_id));
        }
        let mut fields = doc.fields.clone();
        fields.insert("status".into(), Value::String(doc.status.clone()));
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| ProjectionError(format!("sagas document {} does not read: {e}", doc.id)))
    }

    fn write_to(&self, doc: &mut ReadDocument) -> Result<(), ProjectionError> {
        let Value::Object(mut fields) = serde_json::to_value(self)
            .map_err(|e| ProjectionError(format!("cannot write saga {}: {e}", self.saga_id)))?
        else {
            return Err(ProjectionError("a saga view is an object".into()));
        };
        fields.remove("status");
        doc.status = self.status.as_str().to_owned();
        doc.searchable_text = format!("{} {}", self.saga_id, self.saga_type);
        doc.tags = vec![self.saga_type.clone()];
        doc.fields = fields;
        Ok(())
    }
}

/// Nothing can be commanded to a saga: only the coordinator appends to its stream.
#[derive(Clone, Copy, Debug, Deserialize)]
pub enum NoCommand {}

/// A saga as an aggregate: the fold of its stream. It takes no commands (the coordinator appends
/// its events through the event store, as the only writer of the stream); it is registered so
/// that its event types and schemas are part of the domain like every other event's.
#[derive(Clone, Debug)]
pub struct Saga {
    definition: Option<SagaDefinition>,
    view: SagaView,
    /// The step failure that started the compensation.
    failure: Option<SagaStepFailed>,
    /// The compensations that kept failing, in the order they were attempted.
    compensation_failures: Vec<SagaStepFailed>,
}

impl Default for Saga {
    fn default() -> Self {
        Self { definition: None, view: SagaView::new(""), failure: None, compensation_failures: Vec::new() }
    }
}

impl Aggregate for Saga {
    const KIND: &'static str = "Saga";
    type Command = NoCommand;
    type Event = SagaEvent;

    fn commands() -> &'static [CommandSpec] {
        &[]
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: NoCommand) -> Result<Vec<SagaEvent>, DomainError> {
        match command {}
    }

    fn apply(&mut self, event: SagaEvent) {
        self.view.apply(&event);
        match event {
            SagaEvent::SagaStarted(definition) => self.definition = Some(definition),
            SagaEvent::SagaStepFailed(failed) if failed.compensation => {
                self.compensation_failures.push(failed)
            }
            SagaEvent::SagaStepFailed(failed) => self.failure = Some(failed),
            _ => {}
        }
    }
}

/// What the coordinator does next with a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run step `n` (forward).
    Run(usize),
    /// Every step completed: record it.
    Complete,
    /// Run the compensating command of step `n`.
    Compensate(usize),
    /// Every compensation ran and succeeded: record that the saga is compensated.
    FinishCompensation,
    /// Every compensation ran and some kept failing: record that the saga failed.
    Fail,
    /// The saga has ended (or never started).
    Done,
}

impl Saga {
    pub fn definition(&self) -> Option<&SagaDefinition> {
        self.definition.as_ref()
    }

    pub fn view(&self) -> &SagaView {
        &self.view
    }

    pub fn failure(&self) -> Option<&SagaStepFailed> {
        self.failure.as_ref()
    }

    /// The compensations that kept failing, in the order they were attempted.
    pub fn compensation_failures(&self) -> &[SagaStepFailed] {
        &self.compensation_failures
    }

    /// The failed step, when it might have been applied after all: it failed by timeout or
    /// unavailability (a late commit is possible), it can be compensated, and its compensation
    /// was not tried yet. The coordinator asks the store whether its command id is recorded.
    pub fn failed_step_to_check(&self) -> Option<usize> {
        let failure = self.failure.as_ref().filter(|f| f.reason.is_transient())?;
        let index = self.step_index(&failure.step_id)?;
        let definition = self.definition.as_ref()?;
        (definition.steps[index].compensating_command.is_some() && !self.compensation_tried(&failure.step_id))
            .then_some(index)
    }

    /// Whether the step's compensation has an outcome recorded: it succeeded, or kept failing.
    /// Either way it is not run again, so a resumed saga goes on with the next earlier step.
    fn compensation_tried(&self, step_id: &str) -> bool {
        self.view.compensated_steps.iter().chain(&self.view.uncompensated_steps).any(|done| done == step_id)
    }

    /// The next action. `failed_step_applied`: the store holds the failed step's command (see
    /// [`Saga::failed_step_to_check`]), so it is compensated first.
    pub fn next(&self, failed_step_applied: bool) -> Action {
        let Some(definition) = &self.definition else { return Action::Done };
        if self.view.status.is_terminal() {
            return Action::Done;
        }
        let Some(failure) = &self.failure else {
            return match definition.steps.get(self.view.completed_steps.len()) {
                Some(_) => Action::Run(self.view.completed_steps.len()),
                None => Action::Complete,
            };
        };
        let failed = failed_step_applied.then_some(failure.step_id.as_str());
        let to_compensate =
            failed.into_iter().chain(self.view.completed_steps.iter().rev().map(String::as_str));
        for step_id in to_compensate {
            let Some(index) = self.step_index(step_id) else { continue };
            if definition.steps[index].compensating_command.is_some() && !self.compensation_tried(step_id) {
                return Action::Compensate(index);
            }
        }
        if self.compensation_failures.is_empty() { Action::FinishCompensation } else { Action::Fail }
    }

    fn step_index(&self, step_id: &str) -> Option<usize> {
        self.definition.as_ref()?.steps.iter().position(|s| s.step_id == step_id)
    }
}

/// Reads a stored saga event.
pub fn read_saga_event(event: &DomainEvent) -> Result<SagaEvent, String> {
    event
        .read_as()
        .map_err(|e| format!("cannot read saga event {} ({}): {e}", event.event_id, event.event_type))
}

/// Builds the `sagas` read model: one document per saga, its status and steps
/// ([`SagaView`]), filterable by `status` (`FAILED` sagas wait for manual resolution).
#[derive(Clone, Copy, Debug, Default)]
pub struct SagasProjection;

pub const SAGAS_RESOURCE: &str = "sagas";

impl Projection for SagasProjection {
    fn name(&self) -> &'static str {
        SAGAS_RESOURCE
    }

    fn handles(&self, event_type: &str) -> bool {
        EVENTS.iter().any(|spec| spec.name == event_type)
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let typed = read_saga_event(event).map_err(ProjectionError)?;
        let mut view = SagaView::from_document(doc)?;
        view.apply(&typed);
        view.write_to(doc)
    }
}

#[cfg(test)]
mod tests {
    use nexus_core::{SagaMetadata, SagaStep, StepCommand};
    use serde_json::json;

    use super::*;

    fn definition() -> SagaDefinition {
        let step = |id: &str, compensated: bool| SagaStep {
            step_id: id.to_owned(),
            command: StepCommand::new("Do", id, json!({})),
            compensating_command: compensated.then(|| StepCommand::new("Undo", id, json!({}))),
            timeout_ms: Some(1000),
        };
        SagaDefinition {
            saga_id: "s-1".into(),
            saga_type: "Test".into(),
            steps: vec![step("a", true), step("b", false), step("c", true), step("d", true)],
            metadata: SagaMetadata::default(),
        }
    }

    fn completed(step: &str) -> SagaEvent {
        SagaEvent::SagaStepCompleted(SagaStepCompleted {
            step_id: step.into(),
            command_id: format!("s-1:{step}"),
            aggregate_id: step.into(),
            version: 1,
        })
    }

    fn failed(step: &str, reason: FailureReason) -> SagaEvent {
        SagaEvent::SagaStepFailed(SagaStepFailed {
            step_id: step.into(),
            reason,
            error: "no".into(),
            attempts: 1,
            compensation: false,
        })
    }

    fn compensation_failed(step: &str) -> SagaEvent {
        SagaEvent::SagaStepFailed(SagaStepFailed {
            step_id: step.into(),
            reason: FailureReason::Rejected,
            error: format!("cannot undo {step}"),
            attempts: 3,
            compensation: true,
        })
    }

    fn compensated(step: &str) -> SagaEvent {
        SagaEvent::SagaStepCompensated(SagaStepCompensated {
            step_id: step.into(),
            command_id: format!("s-1:{step}:compensate"),
        })
    }

    fn saga(events: &[SagaEvent]) -> Saga {
        let mut saga = Saga::default();
        saga.apply(SagaEvent::SagaStarted(definition()));
        for event in events {
            saga.apply(event.clone());
        }
        saga
    }

    #[test]
    fn steps_run_in_order_then_the_saga_completes() {
        assert_eq!(Saga::default().next(false), Action::Done);
        assert_eq!(saga(&[]).next(false), Action::Run(0));
        assert_eq!(saga(&[completed("a"), completed("b")]).next(false), Action::Run(2));
        let all = [completed("a"), completed("b"), completed("c"), completed("d")];
        assert_eq!(saga(&all).next(false), Action::Complete);
        let mut done = all.to_vec();
        done.push(SagaEvent::SagaCompleted(SagaCompleted { saga_type: "Test".into() }));
        let done = saga(&done);
        assert_eq!(done.next(false), Action::Done);
        assert_eq!(done.view().status, SagaStatus::Completed);
        assert_eq!(done.view().current_step, 4);
    }

    #[test]
    fn a_failure_compensates_the_completed_steps_in_reverse_skipping_those_without_compensation() {
        let history =
            vec![completed("a"), completed("b"), completed("c"), failed("d", FailureReason::Rejected)];
        let s = saga(&history);
        assert_eq!(s.view().status, SagaStatus::Compensating);
        assert_eq!(s.failed_step_to_check(), None, "a rejected step was not applied");
        assert_eq!(s.next(false), Action::Compensate(2));
        let s = saga(&[history.clone(), vec![compensated("c")]].concat());
        assert_eq!(s.next(false), Action::Compensate(0), "b has no compensating command");
        let s = saga(&[history, vec![compensated("c"), compensated("a")]].concat());
        assert_eq!(s.next(false), Action::FinishCompensation);
    }

    #[test]
    fn a_timed_out_step_that_was_applied_after_all_is_compensated_first() {
        let s = saga(&[completed("a"), failed("c", FailureReason::Timeout)]);
        // Not a real order of steps, but the rule does not depend on it.
        assert_eq!(s.failed_step_to_check(), Some(2));
        assert_eq!(s.next(true), Action::Compensate(2));
        assert_eq!(s.next(false), Action::Compensate(0));
    }

    #[test]
    fn a_failed_compensation_is_recorded_and_the_earlier_steps_are_still_compensated() {
        let history =
            vec![completed("a"), completed("b"), completed("c"), failed("d", FailureReason::Rejected)];
        let s = saga(&[history.clone(), vec![compensation_failed("c")]].concat());
        assert_eq!(s.view().status, SagaStatus::Compensating);
        assert_eq!(s.view().failed_step.as_deref(), Some("d"), "the step that failed stays the cause");
        assert_eq!(s.view().error.as_deref(), Some("step d failed: no"));
        assert_eq!(s.view().uncompensated_steps, ["c"]);
        assert_eq!(s.failure().unwrap().step_id, "d");
        assert_eq!(s.next(false), Action::Compensate(0), "c is not retried; b has no compensation");
        let s = saga(&[history.clone(), vec![compensation_failed("c"), compensated("a")]].concat());
        assert_eq!(s.next(false), Action::Fail);
        assert_eq!(s.view().compensated_steps, ["a"]);
        let failures: Vec<&str> = s.compensation_failures().iter().map(|f| f.step_id.as_str()).collect();
        assert_eq!(failures, ["c"]);

        // Every compensation failing: each is recorded, in the order attempted.
        let s = saga(&[history.clone(), vec![compensation_failed("c"), compensation_failed("a")]].concat());
        assert_eq!(s.next(false), Action::Fail);
        assert_eq!(s.view().uncompensated_steps, ["c", "a"]);

        let mut ended = saga(&[history, vec![compensation_failed("c"), compensated("a")]].concat());
        ended.apply(SagaEvent::SagaFailed(SagaFailed {
            saga_type: "Test".into(),
            step_id: "c".into(),
            error: "left uncompensated: c".into(),
        }));
        assert_eq!(ended.view().status, SagaStatus::Failed);
        assert_eq!(ended.view().uncompensated_steps, ["c"]);
        assert_eq!(ended.next(false), Action::Done);
    }

    /// The stream is the only state: a saga resumed after a crash between any two of its events
    /// goes on with the next earlier step, never running a compensation whose outcome is recorded.
    #[test]
    fn a_resumed_saga_continues_compensating_from_its_last_recorded_outcome() {
        let stream = [
            completed("a"),
            completed("b"),
            completed("c"),
            failed("d", FailureReason::Rejected),
            compensation_failed("c"),
            compensated("a"),
        ];
        let expected = [
            Action::Run(1),
            Action::Run(2),
            Action::Run(3),
            Action::Compensate(2),
            Action::Compensate(0),
            Action::Fail,
        ];
        for (recorded, next) in expected.iter().enumerate() {
            assert_eq!(saga(&stream[..=recorded]).next(false), *next, "after {} events", recorded + 1);
        }
    }

    #[test]
    fn a_timed_out_step_applied_after_all_is_not_compensated_again_once_that_failed() {
        let history = vec![completed("a"), failed("c", FailureReason::Timeout)];
        let s = saga(&[history.clone(), vec![compensation_failed("c")]].concat());
        assert_eq!(s.failed_step_to_check(), None, "its compensation has an outcome");
        assert_eq!(s.next(true), Action::Compensate(0));
        let s = saga(&[history, vec![compensation_failed("c"), compensated("a")]].concat());
        assert_eq!(s.next(true), Action::Fail);
        assert_eq!(s.view().uncompensated_steps, ["c"]);
    }

    #[test]
    fn uncompensated_steps_are_omitted_while_empty_and_a_v1_step_failure_reads_as_a_step_failure() {
        let view = saga(&[completed("a"), failed("b", FailureReason::Rejected)]).view().clone();
        let body = serde_json::to_value(&view).unwrap();
        assert!(body.get("uncompensatedSteps").is_none(), "{body}");
        let view = saga(&[completed("c"), failed("d", FailureReason::Rejected), compensation_failed("c")])
            .view()
            .clone();
        assert_eq!(serde_json::to_value(&view).unwrap()["uncompensatedSteps"], json!(["c"]));

        let v1 = json!({"eventType": "SagaStepFailed", "payload": {"stepId": "b", "reason": "TIMEOUT", "error": "e", "attempts": 2}});
        let SagaEvent::SagaStepFailed(read) = serde_json::from_value(v1.clone()).unwrap() else { panic!() };
        assert!(!read.compensation);
        assert_eq!(serde_json::to_value(SagaEvent::SagaStepFailed(read)).unwrap(), v1, "written as before");
        let upcaster = &UPCASTERS[0];
        assert_eq!((upcaster.upcast)(v1["payload"].clone()), v1["payload"]);
    }

    #[test]
    fn the_projection_and_the_aggregate_share_one_fold() {
        let events = [
            SagaEvent::SagaStarted(definition()),
            completed("a"),
            completed("c"),
            failed("d", FailureReason::Rejected),
            compensation_failed("c"),
            compensated("a"),
            SagaEvent::SagaFailed(SagaFailed {
                saga_type: "Test".into(),
                step_id: "c".into(),
                error: "left uncompensated: c".into(),
            }),
        ];
        let mut doc = ReadDocument::empty("s-1", "s-1");
        let mut aggregate = Saga::default();
        for (i, event) in events.iter().enumerate() {
            let Value::Object(mut stored) = serde_json::to_value(event).unwrap() else { unreachable!() };
            let stored = DomainEvent {
                event_id: format!("e{i}"),
                event_type: stored["eventType"].as_str().unwrap().to_owned(),
                aggregate_id: "s-1".into(),
                aggregate_version: i as u64 + 1,
                position: i as u64 + 1,
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                payload: stored.remove("payload").unwrap().into(),
                metadata: Default::default(),
            };
            assert!(SagasProjection.handles(&stored.event_type));
            SagasProjection.apply(&mut doc, &stored).unwrap();
            doc.version = stored.aggregate_version;
            aggregate.apply(event.clone());
        }
        assert_eq!(doc.status, "FAILED");
        assert_eq!(&SagaView::from_document(&doc).unwrap(), aggregate.view());
        assert_eq!(doc.fields["completedSteps"], json!(["a", "c"]));
        assert_eq!(doc.fields["compensatedSteps"], json!(["a"]));
        assert_eq!(doc.fields["uncompensatedSteps"], json!(["c"]));
        assert_eq!(doc.fields["failedStep"], "d");
        assert_eq!(doc.fields["error"], "left uncompensated: c");
    }

    #[test]
    fn every_event_spec_is_a_variant_and_has_its_schema_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/events");
        let mut files: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let mut expected: Vec<String> = EVENTS
            .iter()
            .map(|s| format!("{}.v{}.json", s.name, s.schema_version))
            .chain(UPCASTERS.iter().map(|u| format!("{}.v{}.json", u.event_type, u.from_version)))
            .collect();
        expected.sort();
        assert_eq!(files, expected);
        for spec in EVENTS {
            let schema: Value = serde_json::from_str(spec.schema).unwrap();
            assert_eq!(schema["type"], "object", "{}", spec.name);
            assert_eq!(schema["additionalProperties"], true, "{}", spec.name);
            let parsed: Result<SagaEvent, _> =
                serde_json::from_value(json!({"eventType": spec.name, "payload": {"x": 1}}));
            if let Err(error) = parsed {
                assert!(!error.to_string().contains("unknown variant"), "{}: {error}", spec.name);
            }
        }
    }

    #[test]
    fn stored_events_validate_against_their_schemas() {
        let samples = [
            SagaEvent::SagaStarted(definition()),
            completed("a"),
            failed("b", FailureReason::Timeout),
            compensation_failed("b"),
            compensated("a"),
            SagaEvent::SagaCompleted(SagaCompleted { saga_type: "Test".into() }),
            SagaEvent::SagaCompensated(SagaCompensated { saga_type: "Test".into(), error: "e".into() }),
            SagaEvent::SagaFailed(SagaFailed {
                saga_type: "Test".into(),
                step_id: "a".into(),
                error: "e".into(),
            }),
        ];
        for sample in samples {
            let value = serde_json::to_value(&sample).unwrap();
            let name = value["eventType"].as_str().unwrap();
            let spec = EVENTS.iter().find(|s| s.name == name).unwrap();
            let schema: Value = serde_json::from_str(spec.schema).unwrap();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let errors: Vec<String> =
                validator.iter_errors(&value["payload"]).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }
}
