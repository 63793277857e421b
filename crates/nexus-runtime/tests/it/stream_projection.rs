//! A projection fed by the core path applies every event exactly once and in order per aggregate:
//! through a lost stream message (filled from the event store) and a full redelivery (a replaying
//! router, a reader restarted before its acks), over the embedded stores.

use crate::common::Ledger;

use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::EventStream;
use nexus_core::{DomainEvent, EventStore, ReadStore};
use nexus_runtime::{MemoryEventStream, Notifier, StreamProjectionRunner};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const AGGREGATES: [&str; 5] = ["a", "b", "c", "d", "e"];

async fn run_until_done(
    stream: Arc<dyn EventStream>,
    events: Arc<SqliteEventStore>,
    read: Arc<SqliteReadStore>,
) {
    let runner =
        StreamProjectionRunner::new(Arc::new(Ledger), stream, events, read.clone(), Notifier::new(1024), 7);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    let started = std::time::Instant::now();
    'wait: loop {
        assert!(started.elapsed() < Duration::from_secs(10), "projection did not catch up");
        for id in AGGREGATES {
            if read.get("ledger", id).await.unwrap().is_none_or(|d| d.version < 10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue 'wait;
            }
        }
        break;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_applied_once_in_order_through_loss_and_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    append_ticks(&events, 1..=10).await;
    let all = events.read_all(0, 1000).await.unwrap();
    assert_eq!(all.len(), 50);

    // The stream lost a-5 and c-9: the projection reads them from the store.
    let stream = Arc::new(MemoryEventStream::new(3));
    let lossy: Vec<DomainEvent> =
        all.iter().filter(|e| e.event_id != "a-5" && e.event_id != "c-9").cloned().collect();
    stream.publish(&lossy).await.unwrap();
    run_until_done(stream, events.clone(), read.clone()).await;

    // Everything again on a fresh stream (sequences restart, nothing acked): no effect.
    let replay = Arc::new(MemoryEventStream::new(3));
    replay.publish(&all).await.unwrap();
    run_until_done(replay, events.clone(), read.clone()).await;

    let expected: Vec<Value> = (1..=10).map(|v| json!(v)).collect();
    for id in AGGREGATES {
        let doc = read.get("ledger", id).await.unwrap().unwrap();
        assert_eq!(doc.fields["seen"], Value::Array(expected.clone()), "{id}: once each, in order");
        assert_eq!(doc.version, 10);
    }
}

/// While set, applying an event waits for the test to clear it (at most 5 s, so a projection
/// that should not be applying anything makes the test fail rather than hang): a rebuild can be
/// stopped in the middle.
static HOLDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The ledger, held while `HOLDING`.
struct HeldLedger;

impl nexus_core::Projection for HeldLedger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn handles(&self, event_type: &str) -> bool {
        Ledger.handles(event_type)
    }

    fn apply(
        &self,
        doc: &mut nexus_core::ReadDocument,
        event: &DomainEvent,
    ) -> Result<(), nexus_core::ProjectionError> {
        let started = std::time::Instant::now();
        while HOLDING.load(std::sync::atomic::Ordering::Acquire) && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ledger.apply(doc, event)
    }
}

/// Appends versions `versions` of every aggregate, version by version.
async fn append_ticks(events: &SqliteEventStore, versions: std::ops::RangeInclusive<u64>) {
    for version in versions {
        for aggregate in AGGREGATES {
            let request = crate::common::tick(aggregate, version);
            events.append(request).await.unwrap();
        }
    }
}

/// Appends versions `versions` of every aggregate and publishes them; returns the store's head.
async fn tick(
    events: &SqliteEventStore,
    stream: &MemoryEventStream,
    versions: std::ops::RangeInclusive<u64>,
) -> u64 {
    let head = events.head().await.unwrap();
    append_ticks(events, versions).await;
    stream.publish(&events.read_all(head, 10_000).await.unwrap()).await.unwrap();
    events.head().await.unwrap()
}

/// Waits until `check` holds, for at most 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream-fed projection reports its backlog and rebuilds: its partitions pause while the
/// shadow loads (the live model stays as it was, the backlog grows), the shadow replaces the
/// live model (a document no event made is gone), and the partitions then go on, so what was
/// published during the rebuild is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_projection_rebuilds_with_its_partitions_paused() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let stream = Arc::new(MemoryEventStream::new(3));
    let head = tick(&events, &stream, 1..=10).await;
    let runner = StreamProjectionRunner::new(
        Arc::new(HeldLedger),
        stream.clone(),
        events.clone(),
        read.clone(),
        Notifier::new(1024),
        7,
    );
    let status = runner.status();
    assert_eq!(status.feed(), "stream");
    assert_eq!(status.lag("ledger", head).await.unwrap(), 50, "nothing applied yet");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    eventually("the backlog drains", || async { status.lag("ledger", head).await.unwrap() == 0 }).await;
    assert_eq!(status.checkpoint(), head);
    assert_eq!(status.stream_backlog("ledger").await.unwrap(), [0, 0, 0]);
    // A document no event made, as a hand edit would leave.
    read.commit("hand-edit", "ledger", vec![nexus_core::ReadDocument::empty("stray", "stray")], 0)
        .await
        .unwrap();

    HOLDING.store(true, std::sync::atomic::Ordering::Release);
    status.request_rebuild();
    eventually("the rebuild starts", || async { status.rebuild().is_some_and(|r| r.target > 0) }).await;
    let new_head = tick(&events, &stream, 11..=12).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status.lag("ledger", new_head).await.unwrap(), 10, "the partitions wait for the rebuild");
    for id in AGGREGATES {
        assert_eq!(
            read.get("ledger", id).await.unwrap().unwrap().version,
            10,
            "{id}: the live model as it was"
        );
    }
    assert!(read.get("ledger", "stray").await.unwrap().is_some());
    HOLDING.store(false, std::sync::atomic::Ordering::Release);

    eventually("the rebuild is swapped in", || async { status.rebuilds_completed() == 1 }).await;
    eventually("the backlog drains again", || async { status.lag("ledger", new_head).await.unwrap() == 0 })
        .await;
    assert_eq!(status.last_error(), None);
    assert_eq!(status.checkpoint(), new_head);
    assert!(read.get("ledger", "stray").await.unwrap().is_none(), "the rebuilt model is the events' only");
    let expected: Vec<Value> = (1..=12).map(|v| json!(v)).collect();
    for id in AGGREGATES {
        let doc = read.get("ledger", id).await.unwrap().unwrap();
        assert_eq!(doc.fields["seen"], Value::Array(expected.clone()), "{id}: once each, in order");
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// The read store, with another query process's work done just before each swap: it appends
/// `a`'s next version, consumes it from the shared stream (so this process never fetches it)
/// and applies it to the live model, which is about to be retired.
struct AnotherProcessBeforeTheSwap {
    inner: Arc<SqliteReadStore>,
    events: Arc<SqliteEventStore>,
}

#[async_trait::async_trait]
impl nexus_core::ReadStore for AnotherProcessBeforeTheSwap {
    async fn checkpoint(&self, projection: &str) -> Result<u64, nexus_core::StoreError> {
        self.inner.checkpoint(projection).await
    }

    async fn load(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<Vec<nexus_core::ReadDocument>, nexus_core::StoreError> {
        self.inner.load(resource, ids).await
    }

    async fn commit(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<nexus_core::ReadDocument>,
        position: u64,
    ) -> Result<(), nexus_core::StoreError> {
        self.inner.commit(projection, resource, docs, position).await
    }

    async fn replace(
        &self,
        projection: &str,
        resource: &str,
        docs: Vec<nexus_core::ReadDocument>,
        position: u64,
    ) -> Result<(), nexus_core::StoreError> {
        self.inner.replace(projection, resource, docs, position).await
    }

    async fn get(
        &self,
        resource: &str,
        id: &str,
    ) -> Result<Option<nexus_core::ReadDocument>, nexus_core::StoreError> {
        self.inner.get(resource, id).await
    }

    async fn list(
        &self,
        resource: &str,
        query: &nexus_core::ListQuery,
    ) -> Result<nexus_core::Page, nexus_core::StoreError> {
        self.inner.list(resource, query).await
    }

    async fn index_fields(&self, resource: &str, fields: &[&str]) -> Result<(), nexus_core::StoreError> {
        self.inner.index_fields(resource, fields).await
    }

    async fn clear(&self, resource: &str, projection: &str) -> Result<(), nexus_core::StoreError> {
        self.inner.clear(resource, projection).await
    }

    async fn swap(&self, live: &str, shadow: &str) -> Result<(), nexus_core::StoreError> {
        let mut doc = self.inner.get(live, "a").await?.expect("a is in the live model");
        let next = doc.version + 1;
        let request = crate::common::tick("a", next);
        self.events.append(request).await?;
        let event = self.events.read_stream("a", next, Some(next)).await?.remove(0);
        nexus_core::Projection::apply(&Ledger, &mut doc, &event).unwrap();
        doc.version = next;
        self.inner.commit("elsewhere", live, vec![doc], 0).await?;
        self.inner.swap(live, shadow).await
    }

    async fn search(
        &self,
        resource: &str,
        query: &nexus_core::SearchQuery,
    ) -> Result<nexus_core::SearchResults, nexus_core::StoreError> {
        self.inner.search(resource, query).await
    }

    async fn ping(&self) -> Result<(), nexus_core::StoreError> {
        self.inner.ping().await
    }
}

/// An event another process applied to the live model between the rebuild's last read and its
/// swap reaches the new model: the rebuild replays the store from its last read after the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_rebuild_keeps_what_another_process_applied_before_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let inner = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let read = Arc::new(AnotherProcessBeforeTheSwap { inner: inner.clone(), events: events.clone() });
    let stream = Arc::new(MemoryEventStream::new(3));
    let head = tick(&events, &stream, 1..=3).await;
    let runner = StreamProjectionRunner::new(
        Arc::new(Ledger),
        stream.clone(),
        events.clone(),
        read,
        Notifier::new(1024),
        7,
    );
    let status = runner.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    eventually("the backlog drains", || async { status.lag("ledger", head).await.unwrap() == 0 }).await;
    status.request_rebuild();
    eventually("the rebuild is swapped in", || async { status.rebuilds_completed() == 1 }).await;
    // The replay after the swap may still be under way: wait for it (it never comes without).
    eventually("a-4, applied elsewhere before the swap, is in the new model", || async {
        inner.get("ledger", "a").await.unwrap().unwrap().fields["seen"] == json!([1, 2, 3, 4])
    })
    .await;
    assert_eq!(status.last_error(), None);
    for id in AGGREGATES.iter().filter(|id| **id != "a") {
        assert_eq!(inner.get("ledger", id).await.unwrap().unwrap().fields["seen"], json!([1, 2, 3]), "{id}");
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A stream-fed projection saves read-model snapshots as the change-feed runner does, each the
/// document as it was at its version, so temporal queries start from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_projection_takes_snapshots() {
    use nexus_core::SnapshotStore;
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let stream = Arc::new(MemoryEventStream::new(3));
    let head = tick(&events, &stream, 1..=10).await;
    let runner =
        StreamProjectionRunner::new(Arc::new(Ledger), stream, events.clone(), read, Notifier::new(1024), 7)
            .with_snapshots(events.clone(), 4);
    let status = runner.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    eventually("the backlog drains", || async { status.lag("ledger", head).await.unwrap() == 0 }).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    for id in AGGREGATES {
        let key = nexus_runtime::ProjectionRunner::snapshot_key("ledger", id);
        let snapshot = events.latest(&key).await.unwrap().unwrap_or_else(|| panic!("{id} has no snapshot"));
        assert!(snapshot.version >= 8, "{id}: the version 8 was passed ({})", snapshot.version);
        let seen: Vec<Value> = (1..=snapshot.version).map(|v| json!(v)).collect();
        assert_eq!(snapshot.state["seen"], Value::Array(seen), "{id}: the document at its version");
    }
}
