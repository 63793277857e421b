//! What the runtime's integration tests share.

use nexus_core::{DomainEvent, Projection, ProjectionError, ReadDocument};
use serde_json::json;

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
