//! The event router over real stores: the embedded event store, read store (its checkpoint),
//! queue and the schema registry. Non-core events reach the queue, core ones do not, refused ones
//! are dead-lettered with a `SCHEMA:` reason, and a restarted router resumes from its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::EventQueue;
use nexus_core::{AppendRequest, EventMetadata, EventStore, NewEvent, ReadStore};
use nexus_registry::Registry;
use nexus_runtime::{DlqPass, EventRouter, ROUTER_CHECKPOINT, process_dead_letters};
use nexus_sqlite::{SqliteEventQueue, SqliteEventStore, SqliteReadStore, SqliteSchemaStore};
use serde_json::json;
use tokio::sync::watch;

const OPEN_SCHEMA: &str =
    r#"{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}"#;

async fn append(store: &SqliteEventStore, aggregate: &str, event_type: &str, payload: serde_json::Value) {
    let expected = store.read_stream(aggregate, 1, None).await.unwrap().len() as u64;
    let event = NewEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload,
        metadata: EventMetadata { schema_version: "1".into(), ..EventMetadata::default() },
    };
    let request = AppendRequest {
        aggregate_id: aggregate.into(),
        aggregate_type: "Thing".into(),
        expected_version: expected,
        events: vec![event],
        command: None,
    };
    store.append(request).await.unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    events: Arc<SqliteEventStore>,
    read: Arc<SqliteReadStore>,
    queue: Arc<SqliteEventQueue>,
    registry: Arc<Registry>,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::new(Arc::new(SqliteSchemaStore::open(dir.path()).unwrap())));
        for subject in ["Core", "Loose"] {
            registry.register(subject, OPEN_SCHEMA, Some("JSON")).await.unwrap();
        }
        Self {
            events: Arc::new(SqliteEventStore::open(dir.path()).unwrap()),
            read: Arc::new(SqliteReadStore::open(dir.path()).unwrap()),
            queue: Arc::new(SqliteEventQueue::open(dir.path()).unwrap()),
            registry,
            _dir: dir,
        }
    }

    /// Runs a router until its checkpoint reaches the store's head, then stops it.
    async fn route(&self) -> (u64, u64, u64) {
        let router = EventRouter::new(
            self.events.clone(),
            self.read.clone(),
            self.queue.clone(),
            ["Core".to_owned()],
            2, // small batches: several checkpoints per run
        )
        .with_validator(self.registry.clone());
        let status = router.status();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(router.run(stopped));
        let head = self.events.head().await.unwrap();
        let started = std::time::Instant::now();
        while status.checkpoint() < head {
            assert!(started.elapsed() < Duration::from_secs(10), "router stuck at {}", status.checkpoint());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        status.routed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_class_dead_letters_refusals_and_resumes_from_its_checkpoint() {
    let setup = Setup::new().await;
    setup.queue.subscribe("hooks").await.unwrap();
    append(&setup.events, "a", "Core", json!({"name": "x"})).await;
    append(&setup.events, "b", "Loose", json!({"name": "y"})).await;
    append(&setup.events, "c", "Loose", json!({"name": 42})).await; // invalid payload
    append(&setup.events, "d", "Unknown", json!({})).await; // no schema at all
    append(&setup.events, "a", "Core", json!({"name": "z"})).await;

    assert_eq!(setup.route().await, (2, 1, 2), "(core, queue, dead-lettered)");
    assert_eq!(setup.read.checkpoint(ROUTER_CHECKPOINT).await.unwrap(), 5, "durable checkpoint");
    let got = setup.queue.receive("hooks", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.event.aggregate_id.as_str()).collect::<Vec<_>>(), ["b"]);
    setup.queue.ack(&got[0]).await.unwrap();
    let letters = setup.queue.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.consumer == "router" && l.failure_reason.starts_with("SCHEMA:")));
    assert!(letters[0].failure_reason.contains("payload.name"), "{}", letters[0].failure_reason);

    // A restart resumes after the checkpoint: only the new event is routed.
    append(&setup.events, "e", "Loose", json!({"name": "w"})).await;
    assert_eq!(setup.route().await, (0, 1, 0));
    let got = setup.queue.receive("hooks", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.event.aggregate_id.as_str()).collect::<Vec<_>>(), ["e"]);

    // The seed's DLQ processor archives schema failures.
    let pass = process_dead_letters(setup.queue.as_ref(), 100).await.unwrap();
    assert_eq!(pass, DlqPass { retried: 0, skipped: 2, manual: 0 });
    assert!(setup.queue.dead_letters(10).await.unwrap().is_empty());
}

/// Core events go to the ordered stream, one aggregate's in version order; a router that starts
/// again from an older checkpoint (here: a read store that lost it) duplicates nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_events_reach_the_stream_in_order_and_a_replay_duplicates_nothing() {
    use nexus_core::ports::{EventStream, partition_of};
    let setup = Setup::new().await;
    for version in 1..=5 {
        for aggregate in ["a", "b", "c"] {
            append(&setup.events, aggregate, "Core", json!({"name": format!("{aggregate}{version}")})).await;
        }
    }
    append(&setup.events, "u", "Loose", json!({"name": "u"})).await;
    let stream = Arc::new(nexus_runtime::MemoryEventStream::new(2));
    let route = |read: Arc<SqliteReadStore>| {
        let router =
            EventRouter::new(setup.events.clone(), read, setup.queue.clone(), ["Core".to_owned()], 4)
                .with_validator(setup.registry.clone())
                .with_stream(stream.clone());
        let status = router.status();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(router.run(stopped));
        async move {
            let started = std::time::Instant::now();
            while status.checkpoint() < 16 {
                assert!(started.elapsed() < Duration::from_secs(10), "router stuck");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.send(true).unwrap();
            task.await.unwrap();
            status.routed()
        }
    };
    assert_eq!(route(setup.read.clone()).await, (15, 1, 0));
    let elsewhere = tempfile::tempdir().unwrap();
    let forgetful = Arc::new(SqliteReadStore::open(elsewhere.path()).unwrap());
    assert_eq!(route(forgetful).await, (15, 1, 0), "the replay routes everything again");
    let mut got = Vec::new();
    for partition in 0..2 {
        got.extend(stream.fetch("check", partition, 100, Duration::from_millis(100)).await.unwrap());
    }
    for aggregate in ["a", "b", "c"] {
        let mine: Vec<_> = got.iter().filter(|e| e.event.aggregate_id == aggregate).collect();
        assert!(mine.iter().all(|e| e.partition == partition_of(aggregate, 2)));
        let versions: Vec<u64> = mine.iter().map(|e| e.event.aggregate_version).collect();
        assert_eq!(versions, [1, 2, 3, 4, 5], "{aggregate}: once each, in order");
    }
    assert_eq!(got.len(), 15);
}
