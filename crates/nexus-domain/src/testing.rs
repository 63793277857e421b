//! The given/when/then harness every aggregate test goes through, in wire format (JSON), so the
//! tests also pin the serde names: `commandType`/`eventType`, `payload`, camelCase fields.

use nexus_core::{Aggregate, DomainEvent, EventMetadata};
use serde_json::{Value, json};

pub(crate) fn command(command_type: &str, payload: Value) -> Value {
    json!({"commandType": command_type, "payload": payload})
}

pub(crate) fn event(event_type: &str, payload: Value) -> Value {
    json!({"eventType": event_type, "payload": payload})
}

/// Given these past events, when this command arrives, then `decide` returns exactly these events,
/// or rejects the command with exactly this message. Decided events must also apply cleanly.
pub(crate) fn check<A: Aggregate>(given: &[Value], when: Value, then: Result<Vec<Value>, &str>) {
    let mut state = A::default();
    for past in given {
        let past = serde_json::from_value(past.clone())
            .unwrap_or_else(|e| panic!("given event {past} does not read: {e}"));
        state.apply(past);
    }
    let command =
        serde_json::from_value(when.clone()).unwrap_or_else(|e| panic!("command {when} does not read: {e}"));
    let decided = state.decide(command).map_err(|e| e.message);
    let decided_json = decided.map(|events| {
        events.iter().map(|e| serde_json::to_value(e).expect("event serializes")).collect::<Vec<_>>()
    });
    assert_eq!(decided_json, then.map_err(str::to_owned), "when {when}");

    if let Ok(events) = decided_json {
        for new in events {
            let new = serde_json::from_value(new.clone())
                .unwrap_or_else(|e| panic!("decided event {new} does not read back: {e}"));
            state.apply(new);
        }
    }
}

/// An event as the store hands it to a projection.
pub(crate) fn stored(aggregate_id: &str, version: u64, event_type: &str, payload: Value) -> DomainEvent {
    DomainEvent {
        event_id: format!("evt-{aggregate_id}-{version}"),
        event_type: event_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        aggregate_version: version,
        position: version,
        timestamp: "2026-01-01T00:00:00.000Z".to_owned(),
        payload: payload.into(),
        metadata: EventMetadata { schema_version: "1".to_owned(), ..EventMetadata::default() },
    }
}
