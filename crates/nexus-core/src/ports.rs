//! Port traits: what the runtime needs from storage, and nothing about how it is done.
//!
//! Every backend (SQLite now; PostgreSQL next) implements these and passes the same conformance
//! suite. Errors are semantic ([`StoreError`]); the database's own error is collapsed into
//! [`StoreError::Unavailable`] only after the adapter decided it is not something else.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{CommandResult, DomainEvent, EventMetadata};
use crate::projection::ReadDocument;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: the aggregate moved on since the decision was made.
    #[error("aggregate {aggregate_id} is at version {actual}, not the expected {expected}")]
    WrongExpectedVersion { aggregate_id: String, expected: u64, actual: u64 },
    /// The backend cannot be reached or refused to work; retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// What is stored cannot be read back (a bug or a hand-edited database).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The request itself is malformed (e.g. an unknown sort field).
    #[error("{0}")]
    InvalidRequest(String),
}

/// An event ready to append; the store assigns `aggregateVersion` (expected + index + 1) and
/// `position`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: String,
    /// Shared with the [`DomainEvent`] the store answers once it is committed.
    pub payload: std::sync::Arc<Value>,
    pub metadata: EventMetadata,
}

/// The idempotency record written in the same transaction as the events it produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    /// Hash of what the command asked for; a reuse with another fingerprint is a conflict.
    pub fingerprint: String,
    pub result: CommandResult,
}

#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub aggregate_id: String,
    pub aggregate_type: String,
    /// The version the decision was made on (0 for a new aggregate). Checked atomically.
    pub expected_version: u64,
    pub events: Vec<NewEvent>,
    pub command: Option<CommandRecord>,
}

#[derive(Clone, Debug)]
pub enum AppendOutcome {
    /// The events are durable, with their assigned versions and positions.
    Committed(Vec<DomainEvent>),
    /// The command id was already recorded; nothing was appended.
    Duplicate(CommandRecord),
}

/// The event store: an append-only log partitioned by aggregate, with a global change feed.
/// There is deliberately no update or delete.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch atomically if the aggregate is still at `expected_version`; durable when
    /// this returns `Ok`.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// One aggregate's events with `from_version <= version <= to_version`, in version order.
    async fn read_stream(
        &self,
        aggregate_id: &str,
        from_version: u64,
        to_version: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError>;

    /// The change feed: up to `limit` events with `position > after`, in position order. A
    /// position once returned is never preceded later by a smaller one (no gaps appear behind a
    /// reader).
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError>;

    /// Events of one type with `start <= timestamp <= end` (ISO 8601 strings), in time order.
    async fn read_by_type(
        &self,
        event_type: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError>;

    async fn find_command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError>;

    /// The highest committed position (0 when empty).
    async fn head(&self) -> Result<u64, StoreError>;

    /// Waits until the head passes `after` or `timeout` elapses; returns the head then. Lets a
    /// tailer sleep without polling hot.
    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError>;
}

/// An aggregate's state at a version, so rehydration reads only the events after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub aggregate_id: String,
    pub aggregate_type: String,
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// The aggregate's snapshot format version; a snapshot of another version is ignored.
    pub schema_version: u32,
    pub state: Value,
    pub taken_at: String,
}

/// Snapshots of aggregate state. Only the latest per aggregate matters; older ones may be pruned.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The snapshot with the highest version for `aggregate_id`.
    async fn latest(&self, aggregate_id: &str) -> Result<Option<Snapshot>, StoreError>;

    /// The snapshot with the highest version among those taken at or before `taken_at` (ISO
    /// 8601): a state that was already true then, for temporal queries.
    async fn latest_at_or_before(
        &self,
        aggregate_id: &str,
        taken_at: &str,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Stores `snapshot`; saving a version that already exists is not an error (same state).
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;

    /// The time-based sweep's work list, at most `limit` aggregate ids: aggregates with at least
    /// `min_events` events after their latest snapshot (after version 0 when there is none) whose
    /// latest snapshot was taken before `taken_before` (ISO 8601); with no snapshot, whose first
    /// event is older than `taken_before`. Needs the events, so a backend keeps snapshots beside
    /// its event store.
    async fn stale(
        &self,
        taken_before: &str,
        min_events: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
}

/// A field filter of a list query: `field = value` (membership for array fields).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub field: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListQuery {
    pub filters: Vec<Filter>,
    /// A field and a direction; ties go by id, and a descending list is exactly the ascending one
    /// reversed (ties too). Without it, by id.
    pub sort: Option<(String, SortOrder)>,
    pub limit: usize,
    /// Number of documents to skip (decoded from the opaque `nextToken` by the API layer).
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub items: Vec<ReadDocument>,
    pub total: u64,
}

/// BM25's saturation (k1) and length normalization (b), as FTS5's `bm25()` has them: every read
/// store ranks a search's matches with these.
pub const BM25_K1: f64 = 1.2;
pub const BM25_B: f64 = 0.75;

/// A full-text search over `searchableText`, with field filters and facet counts.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchQuery {
    /// Words to find (all of them); empty matches every document.
    pub text: String,
    pub filters: Vec<Filter>,
    /// Keyword fields to count values of among the matches (e.g. `status`, `tags`).
    pub facets: Vec<String>,
    pub limit: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchResults {
    /// Best match first.
    pub items: Vec<ReadDocument>,
    pub total: u64,
    /// Per facet field, the count of matching documents per value.
    pub facets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// Read models and the checkpoints of the projections that build them. `commit` writes documents
/// and checkpoint in one transaction: that is what makes a projection's effect exactly-once.
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// The last position a projection has applied (0 when it never ran).
    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError>;

    async fn load(&self, resource: &str, ids: &[String]) -> Result<Vec<ReadDocument>, StoreError>;

    /// Upserts `docs` into `resource` and moves `projection`'s checkpoint to `position`, atomically.
    async fn commit(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError>;

    /// [`commit`](Self::commit) for documents the caller keeps using (a rebuild's documents in
    /// flight stand in for their stored copies). The default copies them; a store that only
    /// reads them need not.
    async fn commit_shared(
        &self,
        projection: &str,
        resource: &str,
        docs: std::sync::Arc<[ReadDocument]>,
        position: u64,
    ) -> Result<(), StoreError> {
        self.commit(projection, resource, docs.to_vec(), position).await
    }

    /// [`commit`](Self::commit), where a document also replaces a stored one at the same
    /// version (an older one still never does): a parked event applied late to documents that
    /// went on without it keeps their versions.
    async fn replace(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<ReadDocument>,
        position: u64,
    ) -> Result<(), StoreError>;

    async fn get(&self, resource: &str, id: &str) -> Result<Option<ReadDocument>, StoreError>;

    async fn list(&self, resource: &str, query: &ListQuery) -> Result<Page, StoreError>;

    /// Indexes `fields` of `resource`'s documents for lists that sort by or filter on them (see
    /// [`Projection::list_fields`](crate::Projection::list_fields)), whatever storage the model
    /// is in now or a rebuild moves it to. Idempotent; the server calls it at start for every
    /// projection it runs, and on a large model the first call takes as long as building an index.
    async fn index_fields(&self, resource: &str, fields: &[&str]) -> Result<(), StoreError>;

    /// Deletes every document of `resource` and the checkpoint of `projection` (a rebuild's
    /// shadow, before it starts).
    async fn clear(&self, resource: &str, projection: &str) -> Result<(), StoreError>;

    /// Atomically replaces `live` (documents and checkpoint) with `shadow`, which a rebuild built
    /// beside it: readers see the old documents until the swap commits, then the new ones.
    async fn swap(&self, live: &str, shadow: &str) -> Result<(), StoreError>;

    /// Ranked full-text search over the documents' `searchableText`.
    async fn search(&self, resource: &str, query: &SearchQuery) -> Result<SearchResults, StoreError>;

    /// Answers when the backend is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// One registered schema version of a subject (the registry's unit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredSchema {
    /// Global id; the same schema text under several subjects has one id.
    pub id: u32,
    pub subject: String,
    pub version: u32,
    /// The schema as registered (canonical JSON text).
    pub schema: String,
    pub schema_type: String,
}

/// Storage of the schema registry: subjects, versions, ids and compatibility settings. The
/// registry's rules (compatibility, Confluent semantics) live above this port.
#[async_trait]
pub trait SchemaStore: Send + Sync + 'static {
    /// Adds `schema` as the next version of `subject`, reusing the id of identical text
    /// registered anywhere; returns the existing version when `subject` already has this text.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<RegisteredSchema, StoreError>;

    async fn subjects(&self) -> Result<Vec<String>, StoreError>;

    /// Every version of `subject`, oldest first (empty when the subject does not exist).
    async fn versions(&self, subject: &str) -> Result<Vec<RegisteredSchema>, StoreError>;

    async fn by_id(&self, id: u32) -> Result<Option<RegisteredSchema>, StoreError>;

    /// The compatibility level set for `subject` (or globally with `None`), if any.
    async fn compatibility(&self, subject: Option<&str>) -> Result<Option<String>, StoreError>;

    async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<(), StoreError>;
}

/// Why an event's payload was refused by its registered schema.
#[derive(Debug, thiserror::Error)]
pub enum EventRejection {
    /// No schema is registered for this event type and version: nothing ungoverned is stored.
    #[error("event type {event_type} has no registered schema version {version}")]
    Unregistered { event_type: String, version: String },
    #[error("the payload does not match schema {event_type} v{version}")]
    Invalid { event_type: String, version: String, fields: Vec<crate::FieldError> },
    #[error(transparent)]
    Unavailable(StoreError),
}

/// Checks event payloads against the schema registry (seed: "no event enters the store without a
/// registered, compatible schema").
#[async_trait]
pub trait EventValidator: Send + Sync + 'static {
    /// `schema_version` as in event metadata: "2" or "2.0".
    async fn validate(
        &self,
        event_type: &str,
        schema_version: &str,
        payload: &Value,
    ) -> Result<(), EventRejection>;
}

/// Deliveries of one message on the queue path before it is dead-lettered (the seed's max
/// receive count).
pub const MAX_DELIVERIES: u32 = 5;

/// One delivery of an event to one consumer of the queue path.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The backend's handle for [`EventQueue::ack`] and [`EventQueue::nack`].
    pub tag: u64,
    pub consumer: String,
    pub event: DomainEvent,
    /// 1 on the first delivery; the message is dead-lettered when a delivery numbered
    /// [`MAX_DELIVERIES`] fails.
    pub attempt: u32,
}

/// A message that exhausted its deliveries (or was refused by the router), kept for an operator.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    pub event: DomainEvent,
    /// The consumer that failed it (or `router` for an event the router refused).
    pub consumer: String,
    pub failure_reason: String,
    pub retry_count: u32,
    /// ISO 8601 UTC.
    pub first_failure_time: String,
    pub last_failure_time: String,
}

/// What kind of failure a dead letter records, which decides what becomes of it. The kind is
/// decided where the failure happens, from its type, and travels as the first word of the failure
/// reason (`TRANSIENT: …`), so every queue backend keeps it without a column of its own; it is
/// read back from that prefix alone, never guessed from the rest of the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The other side could not be reached or did not answer in time: trying again later may
    /// succeed.
    Transient,
    /// Can never succeed however often it is tried (a request that cannot even be built).
    Permanent,
    /// The event does not match its registered schema.
    Schema,
    /// The consumer answered and refused the event (e.g. an HTTP 500 from a webhook).
    Rejected,
    /// A projection's own code failed on the event.
    Projection,
    /// The event belongs to another store's deployment.
    Foreign,
}

impl FailureKind {
    const ALL: [FailureKind; 6] = [
        FailureKind::Transient,
        FailureKind::Permanent,
        FailureKind::Schema,
        FailureKind::Rejected,
        FailureKind::Projection,
        FailureKind::Foreign,
    ];

    /// The reason's first word.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Transient => "TRANSIENT",
            FailureKind::Permanent => "PERMANENT",
            FailureKind::Schema => "SCHEMA",
            FailureKind::Rejected => "REJECTED",
            FailureKind::Projection => "PROJECTION",
            FailureKind::Foreign => "FOREIGN",
        }
    }

    /// The failure reason stored for `message`: `KIND: message`.
    pub fn reason(self, message: impl std::fmt::Display) -> String {
        format!("{}: {message}", self.label())
    }

    /// The kind a stored reason starts with; `None` for a reason without one.
    pub fn of_reason(reason: &str) -> Option<Self> {
        let (label, _) = reason.split_once(':')?;
        Self::ALL.into_iter().find(|kind| kind.label().eq_ignore_ascii_case(label.trim()))
    }
}

impl DeadLetter {
    /// The kind of failure that dead-lettered it (see [`FailureKind`]).
    pub fn kind(&self) -> Option<FailureKind> {
        FailureKind::of_reason(&self.failure_reason)
    }
}

/// The queue path (the seed's SNS → SQS): a fan-out to one durable queue per consumer,
/// at-least-once, with delayed redelivery and a dead-letter queue after [`MAX_DELIVERIES`].
/// Errors reuse [`StoreError`]: `Unavailable` when the broker cannot be reached.
#[async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Creates `consumer`'s durable queue, bound to the fan-out (idempotent). Only events
    /// published after this reach it.
    async fn subscribe(&self, consumer: &str) -> Result<(), StoreError>;

    /// Deletes `consumer`'s queue and whatever is still in it.
    async fn unsubscribe(&self, consumer: &str) -> Result<(), StoreError>;

    /// Puts every event in every consumer's queue; durable when this returns `Ok`.
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError>;

    /// Up to `max` deliveries for `consumer`, waiting at most `wait` for the first. A delivery
    /// neither acked nor nacked is redelivered after a visibility timeout.
    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError>;

    /// The consumer is done with the delivery: it is removed from the queue.
    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError>;

    /// The delivery failed: redelivered after `delay`, or dead-lettered with `reason` when it
    /// was delivery [`MAX_DELIVERIES`].
    async fn nack(&self, delivery: &Delivery, reason: &str, delay: Duration) -> Result<(), StoreError>;

    /// Puts `event` straight into the dead-letter queue (e.g. the router refused its schema).
    async fn dead_letter(&self, consumer: &str, event: &DomainEvent, reason: &str) -> Result<(), StoreError>;

    /// Dead letters waiting for a decision, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Republishes a dead letter to its consumer's queue with a fresh delivery count; `false`
    /// when there is no such waiting dead letter.
    async fn retry(&self, id: &str) -> Result<bool, StoreError>;

    /// Archives a dead letter (kept, no longer waiting); `false` when there is no such one.
    async fn skip(&self, id: &str) -> Result<bool, StoreError>;

    /// One round trip to the backend (readiness). By default a look at the dead-letter queue;
    /// a backend overrides it with something cheaper.
    async fn ping(&self) -> Result<(), StoreError> {
        self.dead_letters(1).await.map(|_| ())
    }
}

/// An event read from the core path, with its place in the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub partition: u32,
    /// The stream's sequence number: increasing within a partition, what [`EventStream::ack`]
    /// takes.
    pub sequence: u64,
    pub event: DomainEvent,
}

/// The partition of an aggregate's events: FNV-1a of the aggregate id, modulo `partitions`. Stable
/// across processes and versions (it decides where an aggregate's order is kept).
pub fn partition_of(aggregate_id: &str, partitions: u32) -> u32 {
    let hash = aggregate_id
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    hash % partitions.max(1)
}

/// The core path (the seed's Kinesis stream): events partitioned by aggregate id, so one
/// aggregate's events keep their order; publishes de-duplicated by event id; each reader durable,
/// resuming after what it acknowledged.
#[async_trait]
pub trait EventStream: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Appends each event to partition [`partition_of`] its aggregate id, in the given order.
    /// An event id already published (within the backend's de-duplication window) is not
    /// appended again, so a router that restarts from an older checkpoint duplicates nothing.
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError>;

    /// Up to `max` events of `partition` after what `reader` acknowledged, in order, waiting at
    /// most `wait` for the first. What is fetched and never acknowledged comes again to a later
    /// instance of the reader.
    async fn fetch(
        &self,
        reader: &str,
        partition: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamEvent>, StoreError>;

    /// Acknowledges every event of `partition` up to `sequence` for `reader`.
    async fn ack(&self, reader: &str, partition: u32, sequence: u64) -> Result<(), StoreError>;

    /// How many events of `partition` `reader` has not acknowledged yet (fetched or not): how far
    /// behind the stream it is.
    async fn backlog(&self, reader: &str, partition: u32) -> Result<u64, StoreError>;

    /// One round trip to the backend (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A claim on a named piece of work, held until dropped, or until its holder's process (or its
/// connection to the backend) dies.
pub struct Lease {
    _release: Box<dyn Send + Sync>,
}

impl Lease {
    /// A lease whose `release` guard gives the claim back when dropped.
    pub fn new(release: impl Send + Sync + 'static) -> Self {
        Self { _release: Box::new(release) }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Exclusive claims on named work across every process of a deployment: one driver per saga
/// when several command processes share one store.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// The lease on `name`, or `None` while someone (this process included) holds it.
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;
}
