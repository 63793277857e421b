//! The pure, synchronous aggregate model and its type-erased form.
//!
//! A user writes an [`Aggregate`]: `decide` (state + command → events or a domain error) and
//! `apply` (state + event → state). Commands and events are serde enums, adjacently tagged:
//! commands as `#[serde(tag = "commandType", content = "payload")]`, events as
//! `#[serde(tag = "eventType", content = "payload")]`, so the variant name is the wire name.
//! [`AggregateHandler`] erases the types so the runtime can hold many aggregates in one table.

use std::any::Any;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::model::{DomainEvent, FieldError, read_tagged};

/// A command type an aggregate accepts.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// The wire name, e.g. `OpenTicket`: the `{commandType}` of `POST /api/commands/{commandType}`.
    pub name: &'static str,
    /// A creating command may omit `aggregateId`; one is generated.
    pub creates: bool,
    /// JSON Schema (draft 2020-12) of the payload. Every bad field is reported, not just the first.
    pub schema: &'static str,
}

/// An event type an aggregate emits, with its current schema version.
#[derive(Clone, Copy, Debug)]
pub struct EventSpec {
    pub name: &'static str,
    pub schema_version: u32,
    /// JSON Schema of the payload at `schema_version`.
    pub schema: &'static str,
}

/// The aggregate's rules rejected a well-formed command (`BUSINESS_RULE_VIOLATION`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    pub message: String,
}

impl DomainError {
    pub fn rule(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// A consistency boundary. Pure: no I/O, no clock, no randomness.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate's kind, e.g. `Order`.
    const KIND: &'static str;
    /// Adjacently tagged enum: `#[serde(tag = "commandType", content = "payload")]`.
    type Command: DeserializeOwned;
    /// Adjacently tagged enum: `#[serde(tag = "eventType", content = "payload")]`.
    type Event: Serialize + DeserializeOwned;

    fn commands() -> &'static [CommandSpec];
    fn events() -> &'static [EventSpec];

    /// Decides what happens: the events to append, or why not.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// Folds one event into the state. Must accept every event `decide` ever produced.
    fn apply(&mut self, event: Self::Event);

    /// Version of this aggregate's snapshot format. Bump it when the state's shape changes:
    /// snapshots of another version are ignored and the state is rebuilt from events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The state as a snapshot, or `None` (the default) when this aggregate is not snapshotted.
    fn snapshot(&self) -> Option<Value> {
        None
    }

    /// The state back from a snapshot of `SNAPSHOT_VERSION`; `None` rebuilds from events instead.
    fn restore(_snapshot: Value) -> Option<Self> {
        None
    }
}

/// Aggregate state behind a type-erased box, owned by the runtime's cache.
pub struct AggregateState(Box<dyn Any + Send + Sync>);

/// An event decided but not yet stored: version, id, time and position come later.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub event_type: String,
    pub payload: Value,
}

/// Why `decide` produced no events.
#[derive(Clone, Debug, PartialEq)]
pub enum DecideError {
    /// The payload did not deserialize into the command type.
    Invalid(Vec<FieldError>),
    /// The aggregate's rules said no.
    Rejected(DomainError),
}

/// An [`Aggregate`] with its types erased, so one table can hold every aggregate of a service.
pub trait AggregateHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn commands(&self) -> &'static [CommandSpec];
    fn events(&self) -> &'static [EventSpec];
    fn initial_state(&self) -> AggregateState;
    /// Folds a stored event into `state`. An event this aggregate cannot read is an error, never
    /// silently skipped: the state would be wrong.
    fn apply(&self, state: &mut AggregateState, event: &DomainEvent) -> Result<(), String>;
    fn decide(
        &self,
        state: &AggregateState,
        command_type: &str,
        payload: &Value,
    ) -> Result<Vec<EventDraft>, DecideError>;
    fn snapshot_version(&self) -> u32;
    fn snapshot(&self, state: &AggregateState) -> Option<Value>;
    fn restore(&self, snapshot: Value) -> Option<AggregateState>;
}

/// The [`AggregateHandler`] of an [`Aggregate`] type.
pub(crate) struct Erased<A>(PhantomData<fn() -> A>);

impl<A> Erased<A> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<A: Aggregate> Erased<A> {
    fn state<'s>(&self, state: &'s AggregateState) -> &'s A {
        state.0.downcast_ref::<A>().expect("state belongs to another aggregate kind")
    }
}

impl<A: Aggregate> AggregateHandler for Erased<A> {
    fn kind(&self) -> &'static str {
        A::KIND
    }

    fn commands(&self) -> &'static [CommandSpec] {
        A::commands()
    }

    fn events(&self) -> &'static [EventSpec] {
        A::events()
    }

    fn initial_state(&self) -> AggregateState {
        AggregateState(Box::new(A::default()))
    }

    fn apply(&self, state: &mut AggregateState, event: &DomainEvent) -> Result<(), String> {
        let typed: A::Event = event.read_as().map_err(|e| {
            format!("{} cannot read event {} ({}): {e}", A::KIND, event.event_id, event.event_type)
        })?;
        let state = state.0.downcast_mut::<A>().expect("state belongs to another aggregate kind");
        state.apply(typed);
        Ok(())
    }

    fn decide(
        &self,
        state: &AggregateState,
        command_type: &str,
        payload: &Value,
    ) -> Result<Vec<EventDraft>, DecideError> {
        let command: A::Command = read_tagged("commandType", command_type, payload)
            .map_err(|e| DecideError::Invalid(vec![FieldError::new("payload", e.to_string())]))?;
        let events = self.state(state).decide(command).map_err(DecideError::Rejected)?;
        events.iter().map(draft::<A>).collect()
    }

    fn snapshot_version(&self) -> u32 {
        A::SNAPSHOT_VERSION
    }

    fn snapshot(&self, state: &AggregateState) -> Option<Value> {
        self.state(state).snapshot()
    }

    fn restore(&self, snapshot: Value) -> Option<AggregateState> {
        A::restore(snapshot).map(|state| AggregateState(Box::new(state)))
    }
}

fn draft<A: Aggregate>(event: &A::Event) -> Result<EventDraft, DecideError> {
    let encoding_error = |why: &str| {
        DecideError::Rejected(DomainError::rule(format!(
            "{} produced an event that is not adjacently tagged (eventType/payload): {why}",
            A::KIND
        )))
    };
    let Value::Object(mut fields) =
        serde_json::to_value(event).map_err(|e| encoding_error(&e.to_string()))?
    else {
        return Err(encoding_error("not an object"));
    };
    let Some(Value::String(event_type)) = fields.remove("eventType") else {
        return Err(encoding_error("no eventType"));
    };
    let payload = fields.remove("payload").unwrap_or_else(|| Value::Object(Map::new()));
    Ok(EventDraft { event_type, payload })
}
