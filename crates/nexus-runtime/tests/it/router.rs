//! The event router over real stores: the embedded event store, read store (its checkpoint),
//! queue and the schema registry. Non-core events reach the queue, core ones only while a consumer
//! wants their type, refused ones are dead-lettered with a `SCHEMA:` reason, and a restarted
//! router resumes from its checkpoint.

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
        payload: payload.into(),
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

/// A core event reaches the queue path too while a queue consumer wants its type, in position
/// order with the queue path's own events; an unwanted one does not, and a type wanted from some
/// moment on is copied from the next routed event on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanted_core_events_are_copied_to_the_queue_in_order() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let setup = Setup::new().await;
    setup.queue.subscribe("hooks").await.unwrap();
    let wanted = Arc::new(AtomicBool::new(false));
    let route = |wanted: Arc<AtomicBool>| {
        let router = EventRouter::new(
            setup.events.clone(),
            setup.read.clone(),
            setup.queue.clone(),
            ["Core".to_owned()],
            2,
        )
        .with_validator(setup.registry.clone())
        .with_queue_interest(move |event_type| event_type == "Core" && wanted.load(Ordering::SeqCst));
        let status = router.status();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(router.run(stopped));
        let events = setup.events.clone();
        async move {
            let head = events.head().await.unwrap();
            let started = std::time::Instant::now();
            while status.checkpoint() < head {
                assert!(started.elapsed() < Duration::from_secs(10), "router stuck");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.send(true).unwrap();
            task.await.unwrap();
            status.routed()
        }
    };
    let names = |got: &[nexus_core::ports::Delivery]| {
        got.iter().map(|d| d.event.payload["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };

    append(&setup.events, "a", "Core", json!({"name": "a1"})).await;
    append(&setup.events, "b", "Loose", json!({"name": "b1"})).await;
    assert_eq!(route(wanted.clone()).await, (1, 1, 0), "nobody wants core events yet");
    let got = setup.queue.receive("hooks", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(names(&got), ["b1"]);
    for delivery in &got {
        setup.queue.ack(delivery).await.unwrap();
    }

    wanted.store(true, Ordering::SeqCst);
    append(&setup.events, "a", "Core", json!({"name": "a2"})).await;
    append(&setup.events, "b", "Loose", json!({"name": "b2"})).await;
    append(&setup.events, "a", "Core", json!({"name": "a3"})).await;
    append(&setup.events, "c", "Other", json!({"name": "c1"})).await; // refused: no schema
    // A core event copied to the queue path counts on both paths.
    assert_eq!(route(wanted.clone()).await, (2, 3, 1), "(core, queue, dead-lettered)");
    let got = setup.queue.receive("hooks", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(names(&got), ["a2", "b2", "a3"], "in position order");
    assert!(got.iter().all(|d| d.attempt == 1));
}

/// The DLQ processor decides by the kind each dead letter's reason starts with, and by nothing
/// else: transient ones go back to their consumer, schema, permanent and foreign ones are
/// archived, the rest wait for an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_processor_acts_on_the_kind_of_failure() {
    let setup = Setup::new().await;
    append(&setup.events, "a", "Loose", json!({"name": "a"})).await;
    let event = setup.events.read_all(0, 1).await.unwrap().remove(0);
    setup.queue.subscribe("hooks").await.unwrap();
    for reason in [
        "TRANSIENT: no answer from the endpoint (unavailable, timeout)",
        "PERMANENT: cannot build the request",
        "SCHEMA: Loose v1 validation failed",
        "FOREIGN: published by store x",
        "REJECTED: HTTP 503 from the endpoint, which says unavailable",
        "PROJECTION: projection:ledger failed on event a",
    ] {
        setup.queue.dead_letter("hooks", &event, reason).await.unwrap();
    }
    let pass = process_dead_letters(setup.queue.as_ref(), 100).await.unwrap();
    assert_eq!(pass, DlqPass { retried: 1, skipped: 3, manual: 2 });
    let waiting: Vec<String> =
        setup.queue.dead_letters(10).await.unwrap().into_iter().map(|l| l.failure_reason).collect();
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(waiting.iter().all(|r| r.starts_with("REJECTED:") || r.starts_with("PROJECTION:")));
    let retried = setup.queue.receive("hooks", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(retried.len(), 1, "the transient one is back on its consumer's queue");
}
