//! Snapshots in the command path, against the real SQLite store: the trigger, the bounded
//! rehydration, and what is ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_core::ports::{AppendOutcome, AppendRequest, CommandRecord};
use nexus_core::{DomainEvent, EventStore, Snapshot, SnapshotStore, StoreError};
use nexus_runtime::{CommandBus, CommandRequest, SnapshotPolicy};
use nexus_sqlite::SqliteEventStore;
use serde_json::json;

/// The real store, counting the events the command path reads per aggregate stream.
struct Counting {
    inner: Arc<SqliteEventStore>,
    stream_events_read: AtomicU64,
}

#[async_trait]
impl EventStore for Counting {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.inner.append(request).await
    }
    async fn read_stream(
        &self,
        id: &str,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let events = self.inner.read_stream(id, from, to).await?;
        self.stream_events_read.fetch_add(events.len() as u64, Ordering::SeqCst);
        Ok(events)
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_by_type(
        &self,
        t: &str,
        s: &str,
        e: &str,
        l: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.read_by_type(t, s, e, l).await
    }
    async fn find_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.inner.find_command(id).await
    }
    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }
    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_past(after, timeout).await
    }
}

const POLICY: SnapshotPolicy = SnapshotPolicy { every_events: 1000, every_bytes: 1024 * 1024 };

fn bus(store: &Arc<SqliteEventStore>) -> (CommandBus, Arc<Counting>) {
    let counting = Arc::new(Counting { inner: store.clone(), stream_events_read: AtomicU64::new(0) });
    let bus = CommandBus::new(Arc::new(nexus_domain::domain()), counting.clone(), 1000)
        .unwrap()
        .with_snapshots(store.clone(), POLICY);
    (bus, counting)
}

fn command(command_type: &str, product: &str, payload: serde_json::Value) -> CommandRequest {
    CommandRequest {
        command_type: command_type.into(),
        aggregate_id: Some(product.into()),
        payload,
        ..CommandRequest::default()
    }
}

async fn wait_for_snapshot(store: &SqliteEventStore, id: &str, version: u64) -> Duration {
    let started = Instant::now();
    loop {
        if store.latest(id).await.unwrap().is_some_and(|s| s.version >= version) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no snapshot at {version} within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_event_aggregate_loads_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let (writer, _) = bus(&store);
    for n in 1..=5500u64 {
        let result = writer.handle(command("AddStock", "p-big", json!({"quantity": 1}))).await.unwrap();
        assert_eq!(result.version, n);
        if n % 1000 == 0 {
            // The threshold was crossed by this command: the snapshot follows within 5 s.
            let took = wait_for_snapshot(&store, "p-big", n).await;
            assert!(took < Duration::from_secs(5));
        }
    }
    assert_eq!(store.latest("p-big").await.unwrap().unwrap().version, 5000);

    // A process with a cold cache: loads snapshot 5000 and reads only the 500 events after it.
    let (cold, counting) = bus(&store);
    let result =
        cold.handle(command("ReserveStock", "p-big", json!({"orderId": "o1", "quantity": 5500}))).await;
    assert_eq!(result.unwrap().version, 5501, "the state restored from the snapshot is right");
    let read = counting.stream_events_read.load(Ordering::SeqCst);
    assert!(read <= 1000, "the command path read {read} events after the snapshot");
    assert_eq!(read, 500);
    let short = cold.handle(command("ReserveStock", "p-big", json!({"orderId": "o2", "quantity": 1}))).await;
    assert!(short.is_err(), "all 5500 units are reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_another_format_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let (writer, _) = bus(&store);
    for _ in 0..10 {
        writer.handle(command("AddStock", "p-old", json!({"quantity": 2}))).await.unwrap();
    }
    // A snapshot written by an older build, with a state shape this one cannot trust.
    store
        .save(Snapshot {
            aggregate_id: "p-old".into(),
            aggregate_type: "Product".into(),
            version: 10,
            schema_version: 0,
            state: json!({"available": 999_999}),
            taken_at: "2026-01-01T00:00:00.000Z".into(),
        })
        .await
        .unwrap();
    let (cold, counting) = bus(&store);
    let too_many =
        cold.handle(command("ReserveStock", "p-old", json!({"orderId": "o", "quantity": 21}))).await;
    assert!(too_many.is_err(), "state rebuilt from events: 20 available, not 999999");
    assert_eq!(counting.stream_events_read.load(Ordering::SeqCst), 10, "rebuilt from all events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_snapshots_aggregates_with_old_or_no_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let (writer, _) = bus(&store);
    for _ in 0..30 {
        writer.handle(command("AddStock", "p-swept", json!({"quantity": 1}))).await.unwrap();
    }
    writer.handle(command("AddStock", "p-tiny", json!({"quantity": 1}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let taken = writer.snapshot_stale(Duration::ZERO, 10).await.unwrap();
    assert_eq!(taken, 1);
    assert_eq!(store.latest("p-swept").await.unwrap().unwrap().version, 30);
    assert!(store.latest("p-tiny").await.unwrap().is_none(), "below min_events");
    assert_eq!(writer.snapshot_stale(Duration::ZERO, 10).await.unwrap(), 0, "nothing new since");
}
