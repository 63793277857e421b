//! The test kit for a service's own domain (feature `testing`): given/when/then for aggregates,
//! and an event log folded through projections the way the runtime folds it.
//!
//! Everything is in wire format (JSON), as clients and the store see it, so a test also pins the
//! serde names of commands and events:
//!
//! ```
//! # use nexus_core::testing::{given, EventLog, project};
//! # use serde_json::json;
//! # fn check<A: nexus_core::Aggregate>() {
//! given::<A>(&[("TicketOpened", json!({"title": "Printer", "customerId": "c-1", "priority": "high"}))])
//!     .when("ResolveTicket", json!({"resolution": "rebooted"}))
//!     .then_rejected("not ASSIGNED");
//! # }
//! ```

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::aggregate::{Aggregate, DomainError};
use crate::model::{DomainEvent, EventMetadata, read_tagged};
use crate::projection::{Keying, Projection, ReadDocument};

/// An aggregate `A` after `events` (each an event type and its payload).
///
/// # Panics
/// When an event does not read as one of `A`'s events.
pub fn given<A: Aggregate>(events: &[(&str, Value)]) -> Given<A> {
    let mut state = A::default();
    for (event_type, payload) in events {
        let event = read_tagged("eventType", event_type, payload)
            .unwrap_or_else(|e| panic!("given event {event_type} {payload} does not read: {e}"));
        state.apply(event);
    }
    Given { state }
}

/// An aggregate's state, built from past events by [`given`].
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command_type` with `payload` against the state.
    ///
    /// # Panics
    /// When the payload does not read as one of `A`'s commands (the runtime answers that with a
    /// `VALIDATION_ERROR` before `decide` runs).
    pub fn when(self, command_type: &str, payload: Value) -> Then<A> {
        let command = read_tagged("commandType", command_type, &payload)
            .unwrap_or_else(|e| panic!("command {command_type} {payload} does not read: {e}"));
        let decided = self.state.decide(command).map(|events| {
            events
                .iter()
                .map(|event| {
                    let mut tagged = serde_json::to_value(event).expect("an event serializes");
                    let event_type =
                        tagged["eventType"].as_str().expect("adjacently tagged event").to_owned();
                    (event_type, tagged["payload"].take())
                })
                .collect()
        });
        Then { state: self.state, decided, command: format!("{command_type} {payload}") }
    }

    /// The state, for assertions on it.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// What a command decided.
pub struct Then<A> {
    state: A,
    decided: Result<Vec<(String, Value)>, DomainError>,
    command: String,
}

impl<A: Aggregate> Then<A> {
    /// Asserts that the command produced exactly `expected` (event types and payloads, in
    /// order), and that they fold into the state; returns the state after them.
    ///
    /// # Panics
    /// When it did not.
    pub fn then(mut self, expected: &[(&str, Value)]) -> A {
        let expected: Vec<(String, Value)> = expected
            .iter()
            .map(|(event_type, payload)| ((*event_type).to_owned(), payload.clone()))
            .collect();
        match self.decided {
            Ok(events) => {
                assert_eq!(events, expected, "when {}", self.command);
                for (event_type, payload) in events {
                    let event = read_tagged("eventType", &event_type, &payload)
                        .unwrap_or_else(|e| panic!("decided event {event_type} does not read back: {e}"));
                    self.state.apply(event);
                }
                self.state
            }
            Err(error) => panic!("when {}: expected {expected:?}, rejected: {}", self.command, error.message),
        }
    }

    /// Asserts that the command was rejected (`BUSINESS_RULE_VIOLATION`) with a message that
    /// contains `message`.
    ///
    /// # Panics
    /// When it was not.
    pub fn then_rejected(self, message: &str) {
        match self.decided {
            Err(error) => assert!(
                error.message.contains(message),
                "when {}: rejected with '{}', expected a message containing '{message}'",
                self.command,
                error.message
            ),
            Ok(events) => panic!("when {}: expected a rejection, got {events:?}", self.command),
        }
    }

    /// The decided events (event type, payload) or the rejection, for custom assertions.
    pub fn outcome(&self) -> Result<&[(String, Value)], &DomainError> {
        self.decided.as_deref()
    }
}

/// Stored events as the runtime hands them to projections: per aggregate versions from 1, one
/// global position, one timestamp per event (a second apart from 2026-01-01T00:00:00Z).
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    events: Vec<DomainEvent>,
    versions: BTreeMap<String, u64>,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event of `aggregate_id` and returns it as stored.
    pub fn append(&mut self, aggregate_id: &str, event_type: &str, payload: Value) -> &DomainEvent {
        let version = self.versions.entry(aggregate_id.to_owned()).or_default();
        *version += 1;
        let position = self.events.len() as u64 + 1;
        let at = chrono::DateTime::from_timestamp(1_767_225_600 + position as i64, 0).expect("a valid time");
        self.events.push(DomainEvent {
            event_id: format!("evt-{position}"),
            event_type: event_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version: *version,
            position,
            timestamp: crate::model::format_timestamp(at),
            payload: payload.into(),
            metadata: EventMetadata {
                correlation_id: format!("corr-{position}"),
                causation_id: format!("cmd-{position}"),
                user_id: "test".into(),
                schema_version: "1".into(),
            },
        });
        self.events.last().expect("just pushed")
    }

    pub fn events(&self) -> &[DomainEvent] {
        &self.events
    }
}

/// Folds `events` through `projection` the way the runtime does (the documents each event
/// targets, the replay guard, `version` and `lastUpdated`), then folds them all again and
/// asserts that the replay changed nothing: what the runtime's exactly-once effect relies on.
/// Returns the documents by id.
///
/// # Panics
/// When `apply` fails or the replay changed a document.
pub fn project(projection: &dyn Projection, events: &[DomainEvent]) -> BTreeMap<String, ReadDocument> {
    let mut docs = BTreeMap::new();
    fold_all(projection, events, &mut docs);
    let once = docs.clone();
    fold_all(projection, events, &mut docs);
    assert_eq!(docs, once, "replaying the events changed the {} documents", projection.name());
    docs
}

fn fold_all(projection: &dyn Projection, events: &[DomainEvent], docs: &mut BTreeMap<String, ReadDocument>) {
    for event in events.iter().filter(|e| projection.handles(&e.event_type)) {
        let (ids, guard) = match projection.keying() {
            Keying::Aggregate => (vec![event.aggregate_id.clone()], event.aggregate_version),
            Keying::Custom => (projection.document_ids(event), event.position),
        };
        for id in ids {
            let doc = docs.entry(id.clone()).or_insert_with(|| {
                let aggregate =
                    if projection.keying() == Keying::Aggregate { &event.aggregate_id } else { &id };
                ReadDocument::empty(&id, aggregate)
            });
            if guard <= doc.version {
                continue;
            }
            projection
                .apply(doc, event)
                .unwrap_or_else(|e| panic!("{} cannot apply {}: {e}", projection.name(), json!(event)));
            doc.version = guard;
            doc.last_updated.clone_from(&event.timestamp);
        }
    }
}

/// Checks what a domain's registrations promise but the compiler cannot see:
///
/// - every command type registered with [`CommandSpec`](crate::CommandSpec) is a variant of its
///   aggregate's command enum (else every payload of it fails as "unknown variant");
/// - every event type registered with [`EventSpec`](crate::EventSpec) is a variant of its
///   aggregate's event enum (else a stored event of it cannot be read back);
/// - every schema is a JSON object schema of draft 2020-12; command schemas refuse unknown
///   fields (`additionalProperties: false`), event schemas allow new optional ones
///   (`additionalProperties: true`), so a later version may add fields without breaking readers.
///
/// # Panics
/// On the first registration that breaks one of these, naming it.
pub fn check_domain(domain: &crate::Domain) {
    const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";
    let schema = |what: &str, text: &str| -> Value {
        let schema: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("the schema of {what} is not JSON: {e}"));
        assert_eq!(schema["$schema"], DIALECT, "the schema of {what} must name draft 2020-12");
        assert_eq!(schema["type"], "object", "the schema of {what} must describe an object");
        schema
    };
    let garbage = json!({"definitely": "not valid"});
    for spec in domain.commands() {
        let additional = &schema(spec.name, spec.schema)["additionalProperties"];
        assert_eq!(additional, &json!(false), "command {} must refuse unknown fields", spec.name);
        let (_, handler) = domain.command(spec.name).expect("registered");
        if let Err(crate::DecideError::Invalid(errors)) =
            handler.decide(&handler.initial_state(), spec.name, &garbage)
        {
            let unknown = errors.iter().any(|e| e.error.contains("unknown variant"));
            assert!(
                !unknown,
                "command {} is not a variant of {}'s commands: {errors:?}",
                spec.name,
                handler.kind()
            );
        }
    }
    for handler in domain.aggregates() {
        for spec in handler.events() {
            let additional = &schema(spec.name, spec.schema)["additionalProperties"];
            assert_eq!(additional, &json!(true), "event {} must allow new optional fields", spec.name);
            let mut log = EventLog::new();
            let event = log.append("x-1", spec.name, garbage.clone()).clone();
            if let Err(error) = handler.apply(&mut handler.initial_state(), &event) {
                assert!(
                    !error.contains("unknown variant"),
                    "event {} is not a variant of {}'s events: {error}",
                    spec.name,
                    handler.kind()
                );
            }
        }
    }
}
