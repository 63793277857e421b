//! Projections: pure functions from events to read-model documents.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::DomainEvent;

/// A read-model document (the seed's `ReadModel`): the common fields every resource has, plus the
/// projection's own fields, flattened into one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadDocument {
    pub id: String,
    pub aggregate_id: String,
    /// The guard that makes replays harmless: for a document of one aggregate, the aggregate
    /// version of the last event applied; for a document keyed by anything else
    /// ([`Keying::Custom`]), the store position of the last event applied.
    pub version: u64,
    pub last_updated: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub searchable_text: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl ReadDocument {
    /// An empty document that no event has touched yet (version 0).
    pub fn empty(id: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            aggregate_id: aggregate_id.into(),
            version: 0,
            last_updated: String::new(),
            status: String::new(),
            searchable_text: String::new(),
            metadata: Map::new(),
            tags: Vec::new(),
            fields: Map::new(),
        }
    }

    pub fn set(&mut self, field: &str, value: impl Into<Value>) {
        self.fields.insert(field.to_owned(), value.into());
    }
}

/// The projection could not apply an event: a bug or a poison event, never retried silently away.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProjectionError(pub String);

/// How a projection's documents are keyed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keying {
    /// One document per aggregate, its id the aggregate id (`orders`): the aggregate's version
    /// guards it, so its events may arrive by any path in which one aggregate's events keep
    /// their order (the change feed, a partition of the core stream).
    #[default]
    Aggregate,
    /// Documents keyed by ids the projection picks per event ([`Projection::document_ids`]),
    /// fed by many aggregates (a customer's orders). Such a document records the store position
    /// of the last event applied to it, and its events are applied in store order: the runtime
    /// feeds such a projection from the change feed, on every backend.
    Custom,
}

/// Builds one resource type's read models from events. Pure and deterministic: a rebuild from the
/// first event must produce the same documents.
pub trait Projection: Send + Sync + 'static {
    /// The resource type, served at `/api/queries/{name}`.
    fn name(&self) -> &'static str;

    fn handles(&self, event_type: &str) -> bool;

    /// Folds `event` into `doc`. The runner sets `version` and `lastUpdated` afterwards and skips
    /// events the document has already seen, so `apply` never sees a replay. With
    /// [`Keying::Custom`] it runs once for each id [`document_ids`](Self::document_ids) names.
    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError>;

    /// How the documents are keyed (default: one per aggregate).
    fn keying(&self) -> Keying {
        Keying::Aggregate
    }

    /// With [`Keying::Custom`]: the ids of the documents `event` changes (none, one or several;
    /// a document that does not exist yet starts empty). Only called for events the projection
    /// [`handles`](Self::handles). Must depend on the event alone: a rebuild asks again.
    fn document_ids(&self, event: &DomainEvent) -> Vec<String> {
        vec![event.aggregate_id.clone()]
    }

    /// Fields of this projection's documents that lists sort by (`sort=total:desc`) or filter on
    /// (`customerId=c-1`): the read store indexes each, so such a list reads a page from an index
    /// instead of sorting or scanning every document of the model. A field is a top-level or
    /// dotted name (`shipping.city`). `status` needs no entry: every read store indexes and counts
    /// it. Each entry costs every document write an index entry: declare what lists use.
    fn list_fields(&self) -> &'static [&'static str] {
        &[]
    }
}
