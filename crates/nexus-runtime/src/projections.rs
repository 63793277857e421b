//! The projection runner: change feed → read model, exactly once in effect.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_core::ports::EventStream;
use nexus_core::{
    DomainEvent, EventStore, Keying, Projection, ReadDocument, ReadStore, SnapshotStore, StoreError,
};
use tokio::sync::watch;

use crate::failure::{Attempt, Parking, StepError};
use crate::notify::{Notifier, ProjectionUpdate};

/// Applies one event to its document and stamps the document with its guard (the event's
/// aggregate version, or its store position for a document keyed by anything else) and time.
/// Both runners (change feed and core stream) fold this way.
pub(crate) fn fold(
    projection: &dyn Projection,
    doc: &mut ReadDocument,
    event: &nexus_core::DomainEvent,
) -> Result<(), nexus_core::ProjectionError> {
    projection.apply(doc, event)?;
    doc.version = guard_of(projection.keying(), event);
    doc.last_updated.clone_from(&event.timestamp);
    Ok(())
}

/// What a document records of the last event applied to it, and what a replay is recognised by:
/// at or below it, the event is already in the document.
pub(crate) fn guard_of(keying: Keying, event: &nexus_core::DomainEvent) -> u64 {
    match keying {
        Keying::Aggregate => event.aggregate_version,
        Keying::Custom => event.position,
    }
}

/// The ids of the documents `event` changes in `projection`'s model.
pub(crate) fn targets(projection: &dyn Projection, event: &nexus_core::DomainEvent) -> Vec<String> {
    match projection.keying() {
        Keying::Aggregate => vec![event.aggregate_id.clone()],
        Keying::Custom => projection.document_ids(event),
    }
}

/// What the notifier announces of `event` applied to document `id` of `resource`, now at
/// `version`.
pub(crate) fn update_of(
    resource: &str,
    id: &str,
    version: u64,
    event: &nexus_core::DomainEvent,
) -> ProjectionUpdate {
    ProjectionUpdate {
        resource: resource.to_owned(),
        aggregate_id: id.to_owned(),
        version,
        event_id: event.event_id.clone(),
        timestamp: event.timestamp.clone(),
    }
}

/// One event applied to one document, which is now at `version`.
pub(crate) struct Applied<'e> {
    pub(crate) id: String,
    pub(crate) version: u64,
    pub(crate) event: &'e DomainEvent,
}

/// The `aggregateId` of a new document `id`: the aggregate's own, or for a document keyed by
/// anything else its id (it has no one aggregate).
fn aggregate_of<'a>(keying: Keying, id: &'a str, event: &'a DomainEvent) -> &'a str {
    match keying {
        Keying::Aggregate => &event.aggregate_id,
        Keying::Custom => id,
    }
}

/// What the admin API and readiness checks see of a running projection.
#[derive(Default)]
pub struct ProjectionStatus {
    checkpoint: AtomicU64,
    last_error: Mutex<Option<String>>,
    rebuild_requested: AtomicBool,
    rebuilding: AtomicBool,
    rebuild_position: AtomicU64,
    rebuild_target: AtomicU64,
    rebuilds_completed: AtomicU64,
    /// Wakes the runner when it waits for events, so a rebuild request starts at once.
    wake: tokio::sync::Notify,
    /// The stream feeding the projection when the core path does (see `StreamProjectionRunner`).
    stream: std::sync::OnceLock<Arc<dyn EventStream>>,
    /// Fed by the core path: per partition, the highest store position this process applied.
    partitions: Mutex<Vec<u64>>,
    /// Held shared while a batch is applied, exclusively while a parked event is applied late
    /// ([`reapply_parked`]): the two never write the same documents at once in this process.
    applying: tokio::sync::RwLock<()>,
}

/// Where a rebuild stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildProgress {
    pub position: u64,
    pub target: u64,
}

impl ProjectionStatus {
    /// Asks the runner to rebuild the read model from the first event, beside the live one.
    pub fn request_rebuild(&self) {
        self.rebuild_requested.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// How many rebuilds were swapped in since the process started.
    pub fn rebuilds_completed(&self) -> u64 {
        self.rebuilds_completed.load(Ordering::Acquire)
    }

    /// `Some` while a rebuild is requested or running.
    pub fn rebuild(&self) -> Option<RebuildProgress> {
        let active =
            self.rebuilding.load(Ordering::Acquire) || self.rebuild_requested.load(Ordering::Acquire);
        active.then(|| RebuildProgress {
            position: self.rebuild_position.load(Ordering::Acquire),
            target: self.rebuild_target.load(Ordering::Acquire),
        })
    }

    /// The store position the projection has applied up to. Fed by the core path, its
    /// partitions move independently: the highest position any of them has applied.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// `"changeFeed"` when the projection tails the store, `"stream"` when the core path feeds it.
    pub fn feed(&self) -> &'static str {
        if self.stream.get().is_some() { "stream" } else { "changeFeed" }
    }

    /// Per partition of the core path, the events `projection` has not applied yet (empty when
    /// the projection tails the change feed).
    pub async fn stream_backlog(&self, projection: &str) -> Result<Vec<u64>, StoreError> {
        let Some(stream) = self.stream.get() else { return Ok(Vec::new()) };
        let mut backlog = Vec::new();
        for partition in 0..stream.partitions() {
            backlog.push(stream.backlog(projection, partition).await?);
        }
        Ok(backlog)
    }

    /// Events `projection` has yet to apply: the store's `head` minus the checkpoint on the
    /// change feed; on the core path, what its readers have not acknowledged on the stream.
    pub async fn lag(&self, projection: &str, head: u64) -> Result<u64, StoreError> {
        Ok(self.lag_by_partition(projection, head).await?.0)
    }

    /// [`lag`](Self::lag), and the [`stream_backlog`](Self::stream_backlog) it was summed from,
    /// asked of the stream once.
    pub async fn lag_by_partition(&self, projection: &str, head: u64) -> Result<(u64, Vec<u64>), StoreError> {
        let backlog = self.stream_backlog(projection).await?;
        let lag = if self.stream.get().is_some() {
            backlog.iter().sum()
        } else {
            head.saturating_sub(self.checkpoint())
        };
        Ok((lag, backlog))
    }

    /// Whether the projection has applied every event it handles up to store `position` (what
    /// `?minPosition=` waits for). On the change feed: its checkpoint has passed it. Fed by the
    /// core path, whose partitions move independently: each partition has either applied an
    /// event past it here or has nothing left unacknowledged (so whoever read it committed it);
    /// the caller makes sure the router has published up to `position` first.
    pub async fn has_applied(&self, projection: &str, position: u64) -> Result<bool, StoreError> {
        let Some(stream) = self.stream.get() else { return Ok(self.checkpoint() >= position) };
        let applied = self.partitions.lock().expect("status poisoned").clone();
        for partition in 0..stream.partitions() {
            if applied.get(partition as usize).is_some_and(|&at| at >= position) {
                continue;
            }
            if stream.backlog(projection, partition).await? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records that `partition` of the core path has applied events up to `position` here.
    pub(crate) fn applied_in_partition(&self, partition: u32, position: u64) {
        let mut partitions = self.partitions.lock().expect("status poisoned");
        let at = partition as usize;
        if partitions.len() <= at {
            partitions.resize(at + 1, 0);
        }
        partitions[at] = partitions[at].max(position);
        drop(partitions);
        self.applied_up_to(position);
    }

    pub(crate) fn fed_by(&self, stream: Arc<dyn EventStream>) {
        let _ = self.stream.set(stream);
    }

    /// Records that the projection has applied events up to `position` (never moves back).
    pub(crate) fn applied_up_to(&self, position: u64) {
        self.checkpoint.fetch_max(position, Ordering::AcqRel);
    }

    /// Marks a rebuild as under way (or not) beyond the runner's own swap: a stream-fed
    /// projection's replay after the swap is part of its rebuild.
    pub(crate) fn set_rebuilding(&self, rebuilding: bool) {
        self.rebuilding.store(rebuilding, Ordering::Release);
    }

    /// Takes a pending rebuild request, if any.
    pub(crate) fn take_rebuild_request(&self) -> bool {
        self.rebuild_requested.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a rebuild is requested (or was, before the call).
    pub(crate) async fn wait_for_rebuild_request(&self) {
        self.wake.notified().await
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("status poisoned").clone()
    }

    /// Clears the last error if it starts with `origin`.
    pub(crate) fn clear_error_from(&self, origin: &str) {
        let mut error = self.last_error.lock().expect("status poisoned");
        if error.as_deref().is_some_and(|e| e.starts_with(origin)) {
            *error = None;
        }
    }

    /// See [`reapply_parked`].
    pub(crate) fn applying(&self) -> &tokio::sync::RwLock<()> {
        &self.applying
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("status poisoned") = error;
    }
}

/// Runs one projection: reads the change feed after its checkpoint in batches, applies the events
/// it handles to the documents they touch, and commits documents and the new checkpoint in one
/// read-store transaction. A crash between two commits replays the uncommitted batch, and the
/// version guard makes that replay a no-op for documents already written.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    events: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    notifier: Notifier,
    batch_size: usize,
    rebuild_batch_size: usize,
    status: Arc<ProjectionStatus>,
    snapshots: Option<DocumentSnapshots>,
    /// The batch after a full one, read while that one is applied and committed.
    prefetched: Mutex<Option<Prefetch>>,
    /// Paces the live model's checkpoint-only commits.
    pacer: CheckpointPacer,
    /// The events this projection's code failed on, retried and then parked.
    parking: Arc<Parking>,
    /// Least time from the start of a step that found events to the next step, unless that one
    /// read a full batch (see [`with_commit_interval`](Self::with_commit_interval)).
    commit_interval: Duration,
    /// Whether the last step read a full batch: then the next one starts at once.
    last_batch_full: std::sync::atomic::AtomicBool,
}

/// Paces commits that would only move a checkpoint past events the consumer does not handle:
/// at most one a second, and the one left over when the consumer goes idle or stops. Skipping
/// them is safe because every commit that does write (documents, publishes) carries the
/// checkpoint too, so a crash only re-reads at most a second of events the consumer ignores;
/// under load they were a commit (and a WAL write) per batch per consumer.
pub(crate) struct CheckpointPacer {
    /// When the last commit was, and the position a skipped commit would have saved.
    state: Mutex<(std::time::Instant, Option<u64>)>,
}

impl CheckpointPacer {
    const EVERY: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self { state: Mutex::new((std::time::Instant::now(), None)) }
    }

    /// Whether a checkpoint-only commit of `position` is due now; if not, it is remembered.
    pub(crate) fn due(&self, position: u64) -> bool {
        let mut state = self.state.lock().expect("pacer poisoned");
        if state.0.elapsed() < Self::EVERY {
            state.1 = Some(position);
            return false;
        }
        true
    }

    /// A commit happened (with the checkpoint in it).
    pub(crate) fn committed(&self) {
        *self.state.lock().expect("pacer poisoned") = (std::time::Instant::now(), None);
    }

    /// Commits the checkpoint a skipped commit left unsaved, if any (when idle, and when
    /// stopping); a failure is logged and the position stays unsaved for the next try.
    pub(crate) async fn save_unsaved(&self, read: &dyn ReadStore, checkpoint: &str, resource: &str) {
        let unsaved = self.state.lock().expect("pacer poisoned").1;
        if let Some(position) = unsaved {
            match read.commit(checkpoint, resource, Vec::new(), position).await {
                Ok(()) => self.committed(),
                Err(error) => tracing::warn!(checkpoint, %error, "checkpoint not saved; retrying later"),
            }
        }
    }
}

/// The documents `ids` of `resource`, keyed by id (those not stored yet are absent).
pub(crate) async fn load_documents(
    read: &dyn ReadStore,
    resource: &str,
    mut ids: Vec<String>,
) -> Result<HashMap<String, ReadDocument>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let docs = read.load(resource, &ids).await?;
    Ok(docs.into_iter().map(|doc| (doc.id.clone(), doc)).collect())
}

/// Snapshots of read-model documents for temporal queries: one of a document whenever its version
/// passes a multiple of `every`. Both runners (change feed and core stream) take them.
pub(crate) struct DocumentSnapshots {
    store: Arc<dyn SnapshotStore>,
    every: u64,
}

impl DocumentSnapshots {
    /// Snapshots for `projection`'s documents, if it is keyed by aggregate: a temporal query
    /// replays one aggregate's events, so only a document keyed by one is ever read back. A
    /// [`Keying::Custom`](nexus_core::Keying::Custom) document's version is a store position, which
    /// passes a multiple of `every` at nearly each of its changes: snapshotting it wrote a row to
    /// the event store for most events (8,758 in a 48,267-command run), none of them ever read.
    pub(crate) fn for_projection(
        projection: &dyn Projection,
        store: Arc<dyn SnapshotStore>,
        every: u64,
    ) -> Option<Self> {
        (projection.keying() == nexus_core::Keying::Aggregate).then(|| Self { store, every: every.max(1) })
    }

    /// The snapshots `touched` documents of `resource` are due, given each one's version before
    /// the batch (a document not in `before` is new).
    pub(crate) fn due(
        &self,
        resource: &str,
        touched: &[ReadDocument],
        before: &HashMap<String, u64>,
    ) -> Result<Vec<nexus_core::Snapshot>, StoreError> {
        touched
            .iter()
            .filter(|doc| doc.version / self.every > before.get(&doc.id).copied().unwrap_or(0) / self.every)
            .map(|doc| {
                Ok(nexus_core::Snapshot {
                    aggregate_id: ProjectionRunner::snapshot_key(resource, &doc.id),
                    aggregate_type: format!("projection:{resource}"),
                    version: doc.version,
                    schema_version: 1,
                    state: serde_json::to_value(doc).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    taken_at: doc.last_updated.clone(),
                })
            })
            .collect()
    }

    /// Saves `snapshots` (after the commit of their documents). A failure is logged: temporal
    /// reads then start from an older snapshot.
    pub(crate) async fn save(&self, snapshots: Vec<nexus_core::Snapshot>) {
        for snapshot in snapshots {
            let id = snapshot.aggregate_id.clone();
            if let Err(error) = self.store.save(snapshot).await {
                tracing::warn!(%error, id, "read-model snapshot failed; temporal reads fall back");
            }
        }
    }
}

/// Events a rebuild reads, applies and commits at a time unless the runner's batch size is
/// larger: on the embedded store, 20,000 per commit rebuilt 15 % faster than 5,000 (50,000 was
/// no better).
const REBUILD_BATCH: usize = 20_000;

/// A rebuild's commits under way at once: one writing while the next is prepared.
const REBUILD_COMMITS_IN_FLIGHT: usize = 2;

/// A change-feed read started ahead of its turn.
struct Prefetch {
    after: u64,
    limit: usize,
    batch: tokio::task::JoinHandle<Result<Vec<DomainEvent>, StoreError>>,
}

impl ProjectionRunner {
    pub fn new(
        projection: Arc<dyn Projection>,
        events: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        notifier: Notifier,
        batch_size: usize,
    ) -> Self {
        let parking = Arc::new(Parking::new(projection.name(), None, Duration::from_secs(1)));
        Self {
            projection,
            events,
            read,
            notifier,
            batch_size,
            rebuild_batch_size: batch_size.max(REBUILD_BATCH),
            status: Arc::default(),
            snapshots: None,
            prefetched: Mutex::new(None),
            pacer: CheckpointPacer::new(),
            parking,
            commit_interval: Duration::ZERO,
            last_batch_full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts a step at most once per `interval` while the projection keeps up (its last batch
    /// was not full): under steady load, the events of `interval` share one commit instead of
    /// each commit taking the few that arrived since the last. A projection that is behind (full
    /// batches) steps without waiting, and so does one whose last step found nothing new, so a
    /// lone command's lag does not grow. Zero (the default) never waits.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Parks an event the projection's code keeps failing on in `queue` (as consumer
    /// `projection:{name}`) after [`MAX_DELIVERIES`](nexus_core::ports::MAX_DELIVERIES) attempts
    /// `retry_base` apart (doubling), and goes on; without it, such an event stalls the projection.
    pub fn with_dead_letters(mut self, queue: Arc<dyn nexus_core::EventQueue>, retry_base: Duration) -> Self {
        self.parking = Arc::new(Parking::new(self.projection.name(), Some(queue), retry_base));
        self
    }

    /// Shares `parking` (a stream-fed projection's rebuilder parks with its partitions).
    pub(crate) fn with_parking(mut self, parking: Arc<Parking>) -> Self {
        self.parking = parking;
        self
    }

    /// Events a rebuild reads, applies and commits at a time (default: the batch size, at least
    /// 20,000).
    pub fn with_rebuild_batch_size(mut self, size: usize) -> Self {
        self.rebuild_batch_size = size.max(1);
        self
    }

    /// Saves a snapshot of a document every `every` versions (at the time of that version's
    /// event), so temporal queries start from the nearest one instead of the first event.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, every: u64) -> Self {
        self.snapshots = DocumentSnapshots::for_projection(self.projection.as_ref(), store, every);
        self
    }

    /// The snapshot-store key of a read-model document's snapshots.
    pub fn snapshot_key(resource: &str, id: &str) -> String {
        format!("{resource}|{id}")
    }

    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// Reports to `status` instead of a status of its own.
    pub(crate) fn with_status(mut self, status: Arc<ProjectionStatus>) -> Self {
        self.status = status;
        self
    }

    /// Runs until `shutdown` turns true. Every committed batch is a saved checkpoint, so stopping
    /// between batches loses nothing.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name();
        let mut backoff = Duration::from_millis(100);
        let mut checkpoint = None;
        // When the last step that found events started; `None` after one that found none.
        let mut busy_since: Option<tokio::time::Instant> = None;
        while !*shutdown.borrow() {
            let step = match checkpoint {
                None => self.read.checkpoint(name).await.map(Some).map_err(StepError::from),
                Some(_) if self.status.take_rebuild_request() => self.rebuild(&shutdown).await,
                Some(position) => {
                    if let Some(started) = busy_since
                        && !self.commit_interval.is_zero()
                        && !self.last_batch_full.load(Ordering::Relaxed)
                    {
                        tokio::select! {
                            _ = tokio::time::sleep_until(started + self.commit_interval) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                    let started = tokio::time::Instant::now();
                    let _applying = self.status.applying.read().await;
                    let step = self.step(name, position).await;
                    busy_since = matches!(step, Ok(Some(_))).then_some(started);
                    step
                }
            };
            match step {
                Ok(Some(position)) => {
                    checkpoint = Some(position);
                    self.status.checkpoint.store(position, Ordering::Release);
                    self.status.set_error(None);
                    backoff = Duration::from_millis(100);
                }
                Ok(None) => {
                    self.pacer
                        .save_unsaved(self.read.as_ref(), self.projection.name(), self.projection.name())
                        .await;
                    let position = checkpoint.unwrap_or(0);
                    tokio::select! {
                        _ = self.events.wait_past(position, Duration::from_secs(1)) => {}
                        _ = self.status.wake.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    let delay = match retry_in(&self.parking, &error, backoff).await {
                        Some(delay) => delay,
                        None => continue, // parked: on to the next event
                    };
                    tracing::error!(projection = name, kind = ?error.kind(), %error, "projection stalled; retrying");
                    self.status.set_error(Some(error.to_string()));
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
        self.pacer.save_unsaved(self.read.as_ref(), self.projection.name(), self.projection.name()).await;
        tracing::debug!(projection = name, "projection stopped");
    }

    /// Rebuilds the read model from the first event into a shadow resource beside the live one
    /// (which keeps answering queries), then swaps it in atomically. Returns the new checkpoint;
    /// `None` when stopped before finishing (the live model is untouched).
    pub(crate) async fn rebuild(&self, shutdown: &watch::Receiver<bool>) -> Result<Option<u64>, StepError> {
        let name = self.projection.name();
        let shadow = format!("{name}~rebuild");
        let started = std::time::Instant::now();
        self.status.rebuilding.store(true, Ordering::Release);
        self.status.rebuild_position.store(0, Ordering::Release);
        let outcome = async {
            self.read.clear(&shadow, &shadow).await?;
            let Some(position) = self.load_shadow(&shadow, shutdown).await? else { return Ok(None) };
            self.read.swap(name, &shadow).await?;
            self.status.rebuilds_completed.fetch_add(1, Ordering::AcqRel);
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                projection = name,
                events = position,
                seconds,
                rate = position as f64 / seconds.max(1e-9),
                "projection rebuilt and swapped in"
            );
            Ok(Some(position))
        }
        .await;
        self.status.rebuilding.store(false, Ordering::Release);
        outcome
    }

    /// Applies every event to the (cleared) `shadow`, batch by batch, up to the head; `None` when
    /// stopped first. Up to [`REBUILD_COMMITS_IN_FLIGHT`] commits run while the next batch is
    /// read, loaded and applied, so the store writes all the time (it is the slower half) and
    /// prepares one commit while it writes another; the documents of the commits in flight stand
    /// in for the stored copies they have not written yet. Commits may land out of order: the
    /// version guard keeps the newest document and checkpoints only move forward, and a shadow
    /// is only read once every commit has landed.
    async fn load_shadow(
        &self,
        shadow: &str,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<u64>, StepError> {
        type Commit = tokio::task::JoinHandle<Result<(), StoreError>>;
        async fn finish(commit: Commit) -> Result<(), StepError> {
            Ok(commit.await??)
        }
        let limit = self.rebuild_batch_size;
        let mut position = 0;
        // Oldest first, each commit's documents sorted by id.
        let mut in_flight: std::collections::VecDeque<(Commit, Arc<[ReadDocument]>)> = Default::default();
        // The shadow started empty, so only a document this rebuild wrote can be in it: the
        // hashes of their ids (8 bytes a document; a collision only costs a lookup) spare the
        // store a lookup per new document.
        let hasher = std::hash::RandomState::new();
        let mut written: HashSet<u64> = HashSet::new();
        loop {
            if *shutdown.borrow() {
                for (commit, _) in in_flight {
                    finish(commit).await?;
                }
                return Ok(None);
            }
            let head = self.events.head().await?;
            self.status.rebuild_target.store(head, Ordering::Release);
            let batch = self.next_batch(position, limit).await?;
            let Some(last_position) = batch.last().map(|e| e.position) else { break };
            let relevant: Vec<_> = batch
                .iter()
                .filter(|e| self.projection.handles(&e.event_type))
                .map(|e| (targets(self.projection.as_ref(), e), e))
                .collect();
            // The newest copy of a document still being committed.
            let pending = |id: &str| {
                in_flight.iter().rev().find_map(|(_, docs)| {
                    docs.binary_search_by(|doc| doc.id.as_str().cmp(id)).ok().map(|at| &docs[at])
                })
            };
            // A document this rebuild has written is in a commit still in flight or else stored;
            // one it has not starts empty, with no lookup at all.
            let mut in_commits = HashMap::new();
            let mut stored = Vec::new();
            for id in relevant.iter().flat_map(|(ids, _)| ids) {
                if !written.contains(&hasher.hash_one(id)) || in_commits.contains_key(id) {
                    continue;
                }
                match pending(id) {
                    Some(doc) => {
                        in_commits.insert(id.clone(), doc.clone());
                    }
                    None => stored.push(id.clone()),
                }
            }
            let mut docs = load_documents(self.read.as_ref(), shadow, stored).await?;
            docs.extend(in_commits);
            let applied = match self.apply(&mut docs, relevant) {
                Ok(applied) => applied,
                Err(StepError::Poison { event, error }) => {
                    // The same code fails the same way on the same event: parked at once, and the
                    // batch applied again from the stored documents, without it.
                    self.parking.park_now(&event, &error).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            // Nothing is announced of a shadow: no update is made, only the ids are counted.
            let changed: HashSet<&str> = applied.iter().map(|a| a.id.as_str()).collect();
            let mut touched = Vec::with_capacity(changed.len());
            touched.extend(docs.into_values().filter(|doc| changed.contains(doc.id.as_str())));
            // By a copy of each id: sorting the documents themselves moved them around many times.
            touched.sort_by_cached_key(|doc| doc.id.clone());
            // Shared with the commit, not copied: the store only reads them.
            let touched: Arc<[ReadDocument]> = touched.into();
            if in_flight.len() == REBUILD_COMMITS_IN_FLIGHT
                && let Some((commit, _)) = in_flight.pop_front()
            {
                finish(commit).await?;
            }
            let (read, name, batch) = (self.read.clone(), shadow.to_owned(), touched.clone());
            let commit =
                tokio::spawn(async move { read.commit_shared(&name, &name, batch, last_position).await });
            written.extend(touched.iter().map(|doc| hasher.hash_one(&doc.id)));
            in_flight.push_back((commit, touched));
            // What has certainly landed: everything before the commits still in flight.
            self.status.rebuild_position.store(position, Ordering::Release);
            position = last_position;
        }
        for (commit, _) in in_flight {
            finish(commit).await?;
        }
        self.status.rebuild_position.store(position, Ordering::Release);
        Ok(Some(position))
    }

    /// Applies each event to the documents it targets in `docs` (a document not there starts
    /// empty), skipping those that have already seen it, and counts them; what was applied, in
    /// order.
    fn apply<'e>(
        &self,
        docs: &mut HashMap<String, ReadDocument>,
        events: Vec<(Vec<String>, &'e DomainEvent)>,
    ) -> Result<Vec<Applied<'e>>, StepError> {
        // Every document already here is one of the events': at most this many are new.
        docs.reserve(events.len().saturating_sub(docs.len()));
        let keying = self.projection.keying();
        let mut applied = Vec::with_capacity(events.len());
        for (ids, event) in events {
            let guard = guard_of(keying, event);
            for id in ids {
                let doc = match docs.entry(id) {
                    std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        let doc = ReadDocument::empty(
                            entry.key().as_str(),
                            aggregate_of(keying, entry.key(), event),
                        );
                        entry.insert(doc)
                    }
                };
                if guard <= doc.version {
                    continue; // already applied: the guard makes replays harmless
                }
                if self.parking.is_parked(event.position) {
                    // Passed by: the document goes on without it until the dead letter's retry.
                    doc.version = guard;
                } else {
                    fold(self.projection.as_ref(), doc, event)
                        .map_err(|error| StepError::Poison { event: Box::new(event.clone()), error })?;
                }
                applied.push(Applied { id: doc.id.clone(), version: doc.version, event });
            }
        }
        metrics::counter!("nexus_projection_events_total", "projection" => self.projection.name())
            .increment(applied.len() as u64);
        Ok(applied)
    }

    /// The change feed after `after`, one batch. After a full batch the next one is read at once,
    /// on another thread, while this one is applied and committed: catching up and rebuilding
    /// then read and write at the same time.
    async fn next_batch(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        let prefetched = self.prefetched.lock().expect("prefetch poisoned").take();
        let batch = match prefetched {
            Some(prefetch) if prefetch.after == after && prefetch.limit == limit => {
                prefetch.batch.await.map_err(|e| StoreError::Unavailable(Box::new(e)))??
            }
            other => {
                if let Some(stale) = other {
                    stale.batch.abort();
                }
                self.events.read_all(after, limit).await?
            }
        };
        if batch.len() == limit
            && let Some(last) = batch.last()
        {
            let (events, after) = (self.events.clone(), last.position);
            let batch = tokio::spawn(async move { events.read_all(after, limit).await });
            *self.prefetched.lock().expect("prefetch poisoned") = Some(Prefetch { after, limit, batch });
        }
        Ok(batch)
    }

    /// Applies the next batch after `checkpoint` to the live model `name` and commits its
    /// checkpoint with it, then notifies and snapshots; `None` when there is nothing new.
    pub(crate) async fn step(&self, name: &str, checkpoint: u64) -> Result<Option<u64>, StepError> {
        let batch = self.next_batch(checkpoint, self.batch_size).await?;
        self.last_batch_full.store(batch.len() == self.batch_size, Ordering::Relaxed);
        let Some(last) = batch.last() else { return Ok(None) };
        let last_position = last.position;
        let relevant: Vec<_> = batch
            .iter()
            .filter(|e| self.projection.handles(&e.event_type))
            .map(|e| (targets(self.projection.as_ref(), e), e))
            .collect();

        let mut docs: HashMap<String, ReadDocument> = HashMap::new();
        let mut versions_before: HashMap<String, u64> = HashMap::new();
        let mut updates = Vec::new();
        if !relevant.is_empty() {
            let ids = relevant.iter().flat_map(|(ids, _)| ids.iter().cloned()).collect();
            docs = load_documents(self.read.as_ref(), name, ids).await?;
            versions_before = docs.iter().map(|(id, doc)| (id.clone(), doc.version)).collect();
            updates = self
                .apply(&mut docs, relevant)?
                .into_iter()
                .map(|a| update_of(name, &a.id, a.version, a.event))
                .collect();
        }
        let changed: HashSet<&str> = updates.iter().map(|u| u.aggregate_id.as_str()).collect();
        let touched: Vec<ReadDocument> =
            docs.into_values().filter(|d| changed.contains(d.id.as_str())).collect();
        // Taken before the commit consumes the documents, saved after it.
        let snapshots = match &self.snapshots {
            Some(snapshots) => snapshots.due(name, &touched, &versions_before)?,
            None => Vec::new(),
        };
        if touched.is_empty() && !self.pacer.due(last_position) {
            return Ok(Some(last_position));
        }
        let committing = std::time::Instant::now();
        self.read.commit(name, name, touched, last_position).await?;
        record_commit(self.projection.name(), committing);
        self.pacer.committed();

        if let Ok(at) = DateTime::parse_from_rfc3339(&last.timestamp) {
            let lag = (Utc::now() - at.to_utc()).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            metrics::histogram!("nexus_projection_lag_seconds", "projection" => self.projection.name())
                .record(lag);
        }
        for update in updates {
            self.notifier.publish(update);
        }
        if let Some(store) = &self.snapshots {
            store.save(snapshots).await;
        }
        Ok(Some(last_position))
    }
}

/// Records how long a projection's read-model commit took, its wait for the store's writer
/// included: the part of the lag a projection does not control.
pub(crate) fn record_commit(projection: &'static str, started: std::time::Instant) {
    metrics::histogram!("nexus_projection_commit_seconds", "projection" => projection)
        .record(started.elapsed().as_secs_f64());
}

/// How long a loop waits before it tries a failed step again; `None` when it need not wait (the
/// step failed on a poison event that is now parked). A backend's failure waits `backoff`; a
/// poison event waits out the queue path's retry delay of its attempt.
pub(crate) async fn retry_in(parking: &Parking, error: &StepError, backoff: Duration) -> Option<Duration> {
    let StepError::Poison { event, error } = error else { return Some(backoff) };
    match parking.failed(event, error).await {
        Ok(Attempt::RetryAfter(delay)) => Some(delay),
        Ok(Attempt::Parked) => None,
        Err(store) => {
            tracing::warn!(%store, "cannot park a poison event; retrying");
            Some(backoff)
        }
    }
}

/// What a retry of a parked event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reapplied {
    /// Applied to the documents it targets.
    Applied,
    /// An earlier retry applied it already: nothing changed.
    AlreadyApplied,
}

/// Applies a parked event to `projection`'s documents: the retry of its dead letter, once. The
/// documents it targets take it as they are now (they went on without it) and keep their
/// versions; a marker checkpoint committed with them records that it is done, so a second retry
/// changes nothing. Serialized with this process's runner of the projection through `status`.
/// A projection that still fails on the event answers [`StepError::Poison`] and changes nothing.
pub async fn reapply_parked(
    projection: &dyn Projection,
    read: &dyn ReadStore,
    status: &ProjectionStatus,
    event: &DomainEvent,
) -> Result<Reapplied, StepError> {
    let name = projection.name();
    let marker = format!("{name}~parked~{}", event.event_id);
    let _exclusive = status.applying.write().await;
    if read.checkpoint(&marker).await? > 0 {
        return Ok(Reapplied::AlreadyApplied);
    }
    let keying = projection.keying();
    let ids = if projection.handles(&event.event_type) { targets(projection, event) } else { Vec::new() };
    let mut docs = load_documents(read, name, ids.clone()).await?;
    for id in ids {
        let doc =
            docs.entry(id).or_insert_with_key(|id| ReadDocument::empty(id, aggregate_of(keying, id, event)));
        let version = doc.version.max(guard_of(keying, event));
        projection
            .apply(doc, event)
            .map_err(|error| StepError::Poison { event: Box::new(event.clone()), error })?;
        doc.version = version;
        if doc.last_updated < event.timestamp {
            doc.last_updated.clone_from(&event.timestamp);
        }
    }
    read.replace(&marker, name, docs.into_values().collect(), event.position.max(1)).await?;
    Ok(Reapplied::Applied)
}
