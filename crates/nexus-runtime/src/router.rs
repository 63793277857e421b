//! The event router (the seed's `EventRouter`) and the dead-letter processor (`DLQProcessor`).
//!
//! The router tails the store's change feed from its own durable checkpoint, checks each event
//! with the schema registry, and sends it one way: core events stay on the ordered core path,
//! non-core events go to the queue path's fan-out; an event the registry refuses goes to the
//! dead-letter queue with a `SCHEMA:` reason. The checkpoint is the read store's checkpoint of the
//! pseudo-projection `router` (committed with no documents), so it lives wherever the read models
//! live and moves forward only: a crash between publishing a batch and committing its checkpoint
//! publishes that batch again, which the queue path's at-least-once contract allows (consumers
//! see the same `eventId`).
//!
//! With an `EventStream` configured (NATS JetStream), core events are published to it, keyed by
//! aggregate id and de-duplicated by event id. Without one, the core path *is* the change feed:
//! the projections and sagas tail it themselves in position order, so the router only counts
//! core events.
//!
//! A core event is also published to the queue path when a queue consumer wants it (a webhook
//! subscribed to its type, or to `"*"`): the caller says which types through
//! [`EventRouter::with_queue_interest`]. Only those are copied, so a deployment without such
//! webhooks pays nothing for the core path's events on the queue path.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexus_core::ports::{EventQueue, EventStream};
use nexus_core::{
    DeadLetter, DomainEvent, EventRejection, EventStore, EventValidator, FailureKind, ReadStore, StoreError,
};

use crate::failure::StepError;
use tokio::sync::watch;

/// The checkpoint name of the router in the read store.
pub const ROUTER_CHECKPOINT: &str = "router";

/// The consumer name on dead letters the router itself wrote.
pub const ROUTER_CONSUMER: &str = "router";

/// Which way an event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Ordered per aggregate, low latency: the projections' and sagas' input.
    Core,
    /// Fan-out to durable queues, retried, dead-lettered: integrations such as webhooks.
    Queue,
    /// Refused by the schema registry: straight to the dead-letter queue.
    DeadLetter,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Core => "core",
            Path::Queue => "queue",
            Path::DeadLetter => "dlq",
        }
    }
}

/// The exponential backoff of the queue path: `base` after the first failed delivery, doubled
/// after each further one, capped at 5 minutes (1 s, 2 s, 4 s, 8 s with the default base).
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    const CAP: Duration = Duration::from_secs(300);
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(CAP).min(CAP)
}

/// What the router has done since the process started.
#[derive(Default)]
pub struct RouterStatus {
    checkpoint: AtomicU64,
    core: AtomicU64,
    queue: AtomicU64,
    dead: AtomicU64,
}

impl RouterStatus {
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Events routed per path: (core, queue, dead-lettered).
    pub fn routed(&self) -> (u64, u64, u64) {
        (
            self.core.load(Ordering::Acquire),
            self.queue.load(Ordering::Acquire),
            self.dead.load(Ordering::Acquire),
        )
    }
}

/// See [`EventRouter::with_queue_interest`].
type QueueInterest = Box<dyn Fn(&str) -> bool + Send + Sync>;

pub struct EventRouter {
    events: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    queue: Arc<dyn EventQueue>,
    validator: Option<Arc<dyn EventValidator>>,
    stream: Option<Arc<dyn EventStream>>,
    core_events: BTreeSet<String>,
    /// Whether some queue consumer currently wants a core event type (see
    /// [`with_queue_interest`](Self::with_queue_interest)); `None`: none ever does.
    queue_interest: Option<QueueInterest>,
    batch_size: usize,
    status: Arc<RouterStatus>,
    /// Paces commits of batches that published nothing.
    pacer: crate::projections::CheckpointPacer,
}

impl EventRouter {
    pub fn new(
        events: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        queue: Arc<dyn EventQueue>,
        core_events: impl IntoIterator<Item = String>,
        batch_size: usize,
    ) -> Self {
        Self {
            events,
            read,
            queue,
            validator: None,
            stream: None,
            core_events: core_events.into_iter().collect(),
            queue_interest: None,
            batch_size,
            status: Arc::default(),
            pacer: crate::projections::CheckpointPacer::new(),
        }
    }

    /// Checks every event against the schema registry before routing it.
    pub fn with_validator(mut self, validator: Arc<dyn EventValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// Publishes core events to `stream` (the ordered core path, e.g. NATS JetStream). Without
    /// one, core events stay on the change feed the projections tail.
    pub fn with_stream(mut self, stream: Arc<dyn EventStream>) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Also publishes to the queue path each core event whose type `wants` accepts. It is asked
    /// once per core event as the event is routed, so a consumer that starts wanting a type
    /// (a webhook registered) receives the events routed from then on; it must be cheap and must
    /// not block (an in-memory lookup).
    pub fn with_queue_interest(mut self, wants: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.queue_interest = Some(Box::new(wants));
        self
    }

    pub fn status(&self) -> Arc<RouterStatus> {
        self.status.clone()
    }

    pub fn classify(&self, event_type: &str) -> Path {
        if self.core_events.contains(event_type) { Path::Core } else { Path::Queue }
    }

    /// Runs until `shutdown` turns true; each batch's checkpoint is committed after its events
    /// were published, so stopping between batches loses nothing.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut checkpoint = None;
        while !*shutdown.borrow() {
            let step = match checkpoint {
                None => self.read.checkpoint(ROUTER_CHECKPOINT).await.map(Some).map_err(StepError::from),
                Some(position) => self.step(position).await,
            };
            match step {
                Ok(Some(position)) => {
                    checkpoint = Some(position);
                    self.status.checkpoint.store(position, Ordering::Release);
                    // The router's consumer lag: events committed but not yet routed.
                    if let Ok(head) = self.events.head().await {
                        metrics::gauge!("nexus_router_lag_events").set(head.saturating_sub(position) as f64);
                    }
                    backoff = Duration::from_millis(100);
                }
                Ok(None) => {
                    self.pacer.save_unsaved(self.read.as_ref(), ROUTER_CHECKPOINT, ROUTER_CHECKPOINT).await;
                    tokio::select! {
                        _ = self.events.wait_past(checkpoint.unwrap_or(0), Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::error!(kind = ?error.kind(), %error, "event router stalled; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
                }
            }
        }
        self.pacer.save_unsaved(self.read.as_ref(), ROUTER_CHECKPOINT, ROUTER_CHECKPOINT).await;
        tracing::debug!("event router stopped");
    }

    /// Routes the next batch after `checkpoint`; `None` when there is nothing new.
    async fn step(&self, checkpoint: u64) -> Result<Option<u64>, StepError> {
        let batch = self.events.read_all(checkpoint, self.batch_size).await?;
        let Some(last) = batch.last().map(|e| e.position) else { return Ok(None) };
        let mut to_queue: Vec<DomainEvent> = Vec::new();
        let mut to_stream: Vec<DomainEvent> = Vec::new();
        let mut dead = 0u64;
        for event in batch {
            if let Some(reason) = self.rejection(&event).await? {
                self.queue.dead_letter(ROUTER_CONSUMER, &event, &reason).await?;
                tracing::warn!(event_id = %event.event_id, %reason, "event refused by the schema registry");
                dead += 1;
                continue;
            }
            match self.classify(&event.event_type) {
                Path::Core => {
                    // Pushed in position order with the queue path's own events, so each
                    // aggregate's events reach a consumer's queue in version order.
                    if self.queue_interest.as_ref().is_some_and(|wants| wants(&event.event_type)) {
                        to_queue.push(event.clone());
                    }
                    to_stream.push(event)
                }
                _ => to_queue.push(event),
            }
        }
        // A core event copied to the queue path counts on both paths.
        let (core, queued) = (to_stream.len() as u64, to_queue.len() as u64);
        // In position order, so each aggregate's events reach their partition in version order;
        // the stream drops event ids it already holds, so a replayed batch duplicates nothing.
        if let Some(stream) = &self.stream {
            stream.publish(&to_stream).await?;
        }
        self.queue.publish(&to_queue).await?;
        // Without a stream, core events stay on the change feed: a batch of them publishes
        // nothing, and only its checkpoint would be committed.
        let published = !to_queue.is_empty() || dead > 0 || (self.stream.is_some() && core > 0);
        if published || self.pacer.due(last) {
            self.read.commit(ROUTER_CHECKPOINT, ROUTER_CHECKPOINT, Vec::new(), last).await?;
            self.pacer.committed();
        }
        for (path, count) in [(Path::Core, core), (Path::Queue, queued), (Path::DeadLetter, dead)] {
            metrics::counter!("nexus_events_routed_total", "path" => path.label()).increment(count);
        }
        self.status.core.fetch_add(core, Ordering::AcqRel);
        self.status.queue.fetch_add(queued, Ordering::AcqRel);
        self.status.dead.fetch_add(dead, Ordering::AcqRel);
        Ok(Some(last))
    }

    /// `Some(reason)` when the registry refuses the event; an unreachable registry is an error
    /// (the batch is retried), never a refusal.
    async fn rejection(&self, event: &DomainEvent) -> Result<Option<String>, StepError> {
        let Some(validator) = &self.validator else { return Ok(None) };
        let version =
            if event.metadata.schema_version.is_empty() { "1" } else { &event.metadata.schema_version };
        match validator.validate(&event.event_type, version, &event.payload).await {
            Ok(()) => Ok(None),
            Err(EventRejection::Unavailable(error)) => Err(StepError::RegistryUnavailable(error.to_string())),
            Err(EventRejection::Invalid { fields, .. }) => {
                let fields: Vec<String> =
                    fields.iter().map(|f| format!("{}: {}", f.field, f.error)).collect();
                Ok(Some(FailureKind::Schema.reason(format_args!(
                    "{} v{version} validation failed: {}",
                    event.event_type,
                    fields.join("; ")
                ))))
            }
            Err(rejection @ EventRejection::Unregistered { .. }) => {
                Ok(Some(FailureKind::Schema.reason(rejection)))
            }
        }
    }
}

/// What the dead-letter processor does with a dead letter (seed: `determineAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlqAction {
    /// A transient failure (timeout, unavailable): republish to the consumer's queue.
    Retry,
    /// Retrying cannot help until code or data changes (schema, permanent, foreign): archive it.
    Skip,
    /// Anything else waits for an operator: a consumer that refused the event, a projection's
    /// code that failed on it, a reason of no known kind.
    Manual,
}

impl DlqAction {
    /// The seed's rule, read from the kind of failure the dead letter records (see
    /// [`FailureKind`]), never from the rest of its text.
    pub fn for_letter(letter: &DeadLetter) -> Self {
        match letter.kind() {
            Some(FailureKind::Transient) => DlqAction::Retry,
            Some(FailureKind::Schema | FailureKind::Permanent | FailureKind::Foreign) => DlqAction::Skip,
            Some(FailureKind::Rejected | FailureKind::Projection) | None => DlqAction::Manual,
        }
    }
}

/// How many dead letters one pass handled each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DlqPass {
    pub retried: u64,
    pub skipped: u64,
    pub manual: u64,
}

/// One pass of the seed's `DLQProcessor` over the waiting dead letters: logs each, retries the
/// transient ones, archives the schema ones, leaves the rest for an operator. Run periodically:
/// a consumer that keeps timing out gets its message back once per pass, not in a hot loop.
pub async fn process_dead_letters(queue: &dyn EventQueue, limit: usize) -> Result<DlqPass, StoreError> {
    let mut pass = DlqPass::default();
    for letter in queue.dead_letters(limit).await? {
        let action = DlqAction::for_letter(&letter);
        tracing::warn!(
            id = %letter.id,
            event_id = %letter.event.event_id,
            consumer = %letter.consumer,
            failure_reason = %letter.failure_reason,
            retry_count = letter.retry_count,
            first_failure_time = %letter.first_failure_time,
            ?action,
            "dead letter"
        );
        let outcome = match action {
            DlqAction::Retry => queue.retry(&letter.id).await.map(|done| pass.retried += u64::from(done)),
            DlqAction::Skip => queue.skip(&letter.id).await.map(|done| pass.skipped += u64::from(done)),
            DlqAction::Manual => {
                pass.manual += 1;
                Ok(())
            }
        };
        if let Err(error) = outcome {
            tracing::error!(id = %letter.id, %error, "dead letter processing failed");
        }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(1000);
        let delays: Vec<u64> = (1..=5).map(|a| retry_delay(base, a).as_millis() as u64).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000]);
        assert_eq!(retry_delay(base, 40), Duration::from_secs(300));
        assert_eq!(retry_delay(Duration::from_millis(10), 1), Duration::from_millis(10));
    }

    #[test]
    fn dlq_actions_follow_the_kind_of_failure() {
        let action = |reason: &str| {
            DlqAction::for_letter(&DeadLetter {
                id: "1".into(),
                event: serde_json::from_value(serde_json::json!({
                "eventId": "e", "eventType": "T", "aggregateId": "a", "aggregateVersion": 1, "position": 1,
                "timestamp": "2026-12-07T00:00:00.000Z", "payload": {},
                "metadata": {"userId": "u", "correlationId": "c", "causationId": "c", "schemaVersion": "1"}
            }))
            .unwrap(),
                consumer: "webhook:1".into(),
                failure_reason: reason.into(),
                retry_count: 5,
                first_failure_time: String::new(),
                last_failure_time: String::new(),
            })
        };
        assert_eq!(action("TRANSIENT: no answer within 10 s"), DlqAction::Retry);
        assert_eq!(action("SCHEMA: ItemAdded v1 validation failed"), DlqAction::Skip);
        assert_eq!(action("REJECTED: HTTP 500 Internal Server Error"), DlqAction::Manual);
        assert_eq!(action("PROJECTION: projection:orders failed on event e"), DlqAction::Manual);
        assert_eq!(action("FOREIGN: an event of store x"), DlqAction::Skip);
        // The kind is the first word alone: what follows never changes it.
        assert_eq!(
            action("PERMANENT: cannot build the request to http://unavailable/timeout"),
            DlqAction::Skip
        );
        assert_eq!(action("REJECTED: HTTP 503 Service Unavailable"), DlqAction::Manual);
        assert_eq!(action("the consumer timed out"), DlqAction::Manual, "no kind: an operator decides");
    }
}
