//! What the runtime's integration tests share.

use nexus_core::{
    AppendRequest, DomainEvent, EventMetadata, NewEvent, Projection, ProjectionError, ReadDocument,
};
use serde_json::json;

/// The append of `aggregate`'s `Tick` of `version` (the event the [`Ledger`] records), after
/// version `version - 1`.
pub fn tick(aggregate: &str, version: u64) -> AppendRequest {
    AppendRequest {
        aggregate_id: aggregate.into(),
        aggregate_type: "Clock".into(),
        expected_version: version - 1,
        events: vec![NewEvent {
            event_id: format!("{aggregate}-{version}"),
            event_type: "Tick".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: json!({}).into(),
            metadata: EventMetadata::default(),
        }],
        command: None,
    }
}

/// Records every version it applies (and words naming the last), so a lost, doubled or
/// reordered application shows.
pub struct Ledger;

impl Projection for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "Tick"
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let mut seen = doc.fields.get("seen").cloned().unwrap_or(json!([]));
        seen.as_array_mut().unwrap().push(json!(event.aggregate_version));
        doc.set("seen", seen);
        doc.searchable_text = format!("tick {}", event.aggregate_version);
        Ok(())
    }
}
