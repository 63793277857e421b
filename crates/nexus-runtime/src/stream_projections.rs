//! A projection fed by the core path (`EventStream`) instead of the change feed: one durable
//! reader per projection and partition, exactly once in effect.
//!
//! Per partition, the documents and a checkpoint (`{projection}@p{partition}`, the highest stream
//! sequence applied) commit in one read-store transaction, and only then is the stream
//! acknowledged. A crash between the two replays the batch, and the version guard skips what the
//! documents already have. Every delivered event goes through the guard, below the checkpoint too:
//! with several processes on one consumer, an event a dead process held comes back after a
//! younger one was applied. An aggregate's events are in one
//! partition, so partitions touch disjoint documents and run independently. The stream is a
//! transport, not the truth (JetStream acks before it syncs): when an event's version jumps past
//! the document's next one, the missing events are read from the event store first.
//!
//! A rebuild (requested through [`status`](StreamProjectionRunner::status), as for the change
//! feed) pauses the partitions between batches, loads a shadow model from the event store to its
//! head and swaps it in, replays the change feed from there to the head into the new model (for
//! what another process applied to the old one meanwhile), then lets them go on from their own
//! checkpoints: what the stream brings again of the events the model has, the version guard
//! skips. The live model keeps answering queries meanwhile, and falls behind by what arrives
//! during the rebuild.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::EventStream;
use nexus_core::{DomainEvent, EventStore, Projection, ReadDocument, ReadStore};
use tokio::sync::watch;

use crate::failure::{Parking, StepError};
use crate::notify::Notifier;
use crate::projections::{DocumentSnapshots, ProjectionRunner, ProjectionStatus, retry_in};

/// How much longer than its own wait a fetch from the stream may take before it counts as lost.
const FETCH_BOUND: Duration = Duration::from_secs(10);

pub struct StreamProjectionRunner {
    projection: Arc<dyn Projection>,
    stream: Arc<dyn EventStream>,
    events: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    notifier: Notifier,
    batch_size: usize,
    status: Arc<ProjectionStatus>,
    snapshots: Option<DocumentSnapshots>,
    /// Held shared by a partition applying a batch, exclusively by a rebuild.
    gate: tokio::sync::RwLock<()>,
    /// The events this projection's code failed on, retried and then parked (all partitions).
    parking: Arc<Parking>,
}

impl StreamProjectionRunner {
    pub fn new(
        projection: Arc<dyn Projection>,
        stream: Arc<dyn EventStream>,
        events: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        notifier: Notifier,
        batch_size: usize,
    ) -> Self {
        // A document fed by many aggregates needs their events in one order, which partitions
        // do not keep: such a projection tails the change feed.
        assert_eq!(
            projection.keying(),
            nexus_core::Keying::Aggregate,
            "projection {} keys its documents by its own ids; feed it from the change feed",
            projection.name()
        );
        let status = Arc::new(ProjectionStatus::default());
        status.fed_by(stream.clone());
        let parking = Arc::new(Parking::new(projection.name(), None, Duration::from_secs(1)));
        Self {
            projection,
            stream,
            events,
            read,
            notifier,
            batch_size,
            status,
            snapshots: None,
            gate: tokio::sync::RwLock::new(()),
            parking,
        }
    }

    /// Parks an event the projection's code keeps failing on, as the change-feed runner does
    /// (see [`ProjectionRunner::with_dead_letters`]).
    pub fn with_dead_letters(mut self, queue: Arc<dyn nexus_core::EventQueue>, retry_base: Duration) -> Self {
        self.parking = Arc::new(Parking::new(self.projection.name(), Some(queue), retry_base));
        self
    }

    /// Saves a snapshot of a document every `every` versions, as the change-feed runner does, so
    /// temporal queries start from the nearest one instead of the first event.
    pub fn with_snapshots(mut self, store: Arc<dyn nexus_core::SnapshotStore>, every: u64) -> Self {
        self.snapshots = DocumentSnapshots::for_projection(self.projection.as_ref(), store, every);
        self
    }

    /// What the admin API sees: checkpoint, backlog on the stream, errors, rebuilds.
    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// The read-store checkpoint of `projection` on `partition`.
    pub fn checkpoint_name(projection: &str, partition: u32) -> String {
        format!("{projection}@p{partition}")
    }

    /// Runs one task per partition, and rebuilds when asked, until `shutdown`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        // The checkpoint the last rebuild left, until a partition applies something newer.
        if let Ok(position) = this.read.checkpoint(this.projection.name()).await {
            this.status.applied_up_to(position);
        }
        let tasks: Vec<_> = (0..this.stream.partitions())
            .map(|partition| tokio::spawn(this.clone().run_partition(partition, shutdown.clone())))
            .collect();
        this.rebuild_when_asked(shutdown).await;
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Rebuilds whenever the status asks, with every partition paused, until `shutdown`.
    async fn rebuild_when_asked(&self, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name();
        let rebuilder = ProjectionRunner::new(
            self.projection.clone(),
            self.events.clone(),
            self.read.clone(),
            self.notifier.clone(),
            self.batch_size,
        )
        .with_status(self.status.clone())
        .with_parking(self.parking.clone());
        while !*shutdown.borrow() {
            if !self.status.take_rebuild_request() {
                tokio::select! {
                    _ = self.status.wait_for_rebuild_request() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // Waits for the batches under way to commit; no partition starts another until the
            // swap is done.
            let _paused = self.gate.write().await;
            let rebuilt = match rebuilder.rebuild(&shutdown).await {
                Ok(Some(position)) => self.catch_up(&rebuilder, position).await,
                other => other,
            };
            match rebuilt {
                Ok(Some(position)) => {
                    self.status.applied_up_to(position);
                    self.status.set_error(None);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(projection = name, %error, "rebuild failed; the live model stays");
                    self.status.set_error(Some(format!("rebuild failed: {error}")));
                }
            }
        }
    }

    /// After a swap, replays the change feed from the shadow's last position to the head into the
    /// new live model. Another process feeding this projection does not pause for this rebuild:
    /// an event it applied between the shadow's last read and the swap went to the retired model,
    /// and its stream acknowledgement means no partition brings it again. The version guard skips
    /// everything the new model has.
    async fn catch_up(&self, rebuilder: &ProjectionRunner, from: u64) -> Result<Option<u64>, StepError> {
        self.status.set_rebuilding(true);
        let replayed = async {
            let name = self.projection.name();
            let head = self.events.head().await?;
            let mut position = from;
            while position < head {
                let step = match rebuilder.step(name, position).await {
                    Err(StepError::Poison { event, error }) => {
                        self.parking.park_now(&event, &error).await?;
                        continue;
                    }
                    step => step?,
                };
                match step {
                    Some(next) => position = next,
                    None => break,
                }
            }
            Ok(Some(position))
        }
        .await;
        self.status.set_rebuilding(false);
        replayed
    }

    async fn run_partition(self: Arc<Self>, partition: u32, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name();
        let checkpoint_name = Self::checkpoint_name(name, partition);
        // How this partition's errors start, so that only its own success clears them.
        let origin = format!("partition {partition}: ");
        let mut backoff = Duration::from_millis(100);
        let mut checkpoint = None;
        while !*shutdown.borrow() {
            let step = match checkpoint {
                None => self.read.checkpoint(&checkpoint_name).await.map(Some).map_err(StepError::from),
                Some(at) => tokio::select! {
                    step = async {
                        let _open = self.gate.read().await;
                        let _applying = self.status.applying().read().await;
                        self.step(partition, &checkpoint_name, at).await
                    } => step,
                    _ = shutdown.changed() => continue,
                },
            };
            match step {
                Ok(Some(at)) => {
                    self.status.clear_error_from(&origin);
                    checkpoint = Some(at);
                    backoff = Duration::from_millis(100);
                }
                Ok(None) => {}
                Err(error) => {
                    let Some(delay) = retry_in(&self.parking, &error, backoff).await else {
                        continue; // parked: on to the next event
                    };
                    tracing::error!(projection = name, partition, kind = ?error.kind(), %error, "stream projection stalled; retrying");
                    self.status.set_error(Some(format!("{origin}{error}")));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    if !matches!(error, StepError::Poison { .. }) {
                        backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Applies the next fetched batch; returns the new checkpoint (the old one when nothing came).
    async fn step(
        &self,
        partition: u32,
        checkpoint_name: &str,
        checkpoint: u64,
    ) -> Result<Option<u64>, StepError> {
        let name = self.projection.name();
        // Bounded whatever the stream does: a request lost with a crashed server must not stall
        // the partition without an error.
        let wait = Duration::from_secs(1);
        let batch = tokio::time::timeout(
            wait + FETCH_BOUND,
            self.stream.fetch(name, partition, self.batch_size, wait),
        )
        .await
        .map_err(|_| {
            nexus_core::StoreError::Unavailable(
                format!("the stream did not answer a fetch within {:?}", wait + FETCH_BOUND).into(),
            )
        })??;
        let Some(last) = batch.last().map(|e| e.sequence) else { return Ok(Some(checkpoint)) };
        let fresh: Vec<&DomainEvent> =
            batch.iter().filter(|e| self.projection.handles(&e.event.event_type)).map(|e| &e.event).collect();
        let mut docs: HashMap<String, ReadDocument> = HashMap::new();
        let mut versions_before: HashMap<String, u64> = HashMap::new();
        let mut updates = Vec::new();
        if !fresh.is_empty() {
            let ids = fresh.iter().map(|e| e.aggregate_id.clone()).collect();
            docs = crate::projections::load_documents(self.read.as_ref(), name, ids).await?;
            if self.snapshots.is_some() {
                versions_before = docs.iter().map(|(id, doc)| (id.clone(), doc.version)).collect();
            }
            for event in fresh {
                let doc = docs
                    .entry(event.aggregate_id.clone())
                    .or_insert_with(|| ReadDocument::empty(&event.aggregate_id, &event.aggregate_id));
                if event.aggregate_version <= doc.version {
                    continue; // the version guard: a replay changes nothing
                }
                let mut pending = Vec::new();
                if event.aggregate_version > doc.version + 1 {
                    // A gap: the stream lost or has not yet delivered events; the store has them.
                    pending = self
                        .events
                        .read_stream(&event.aggregate_id, doc.version + 1, Some(event.aggregate_version - 1))
                        .await?;
                }
                pending.push(event.clone());
                for event in pending.iter().filter(|e| self.projection.handles(&e.event_type)) {
                    if self.parking.is_parked(event.position) {
                        // Passed by: the document goes on without it until the dead letter's retry.
                        doc.version = event.aggregate_version;
                    } else {
                        crate::projections::fold(self.projection.as_ref(), doc, event)
                            .map_err(|error| StepError::Poison { event: Box::new(event.clone()), error })?;
                    }
                    updates.push(crate::projections::update_of(name, &doc.id, doc.version, event));
                }
                // Events of other types fill the gap too: the document's version follows the
                // aggregate's.
                doc.version = doc.version.max(event.aggregate_version);
            }
        }
        let changed: std::collections::HashSet<&str> =
            updates.iter().map(|u| u.aggregate_id.as_str()).collect();
        let touched: Vec<ReadDocument> =
            docs.into_values().filter(|d| changed.contains(d.id.as_str())).collect();
        let snapshots = match &self.snapshots {
            Some(snapshots) => snapshots.due(name, &touched, &versions_before)?,
            None => Vec::new(),
        };
        let position = last.max(checkpoint);
        let committing = std::time::Instant::now();
        self.read.commit(checkpoint_name, name, touched, position).await?;
        crate::projections::record_commit(name, committing);
        self.stream.ack(name, partition, last).await?;
        if let Some(applied) = batch.iter().map(|e| e.event.position).max() {
            self.status.applied_in_partition(partition, applied);
        }
        metrics::counter!("nexus_projection_events_total", "projection" => name)
            .increment(updates.len() as u64);
        for update in updates {
            self.notifier.publish(update);
        }
        if let Some(store) = &self.snapshots {
            store.save(snapshots).await;
        }
        Ok(Some(position))
    }
}
