//! The event router publishing core events to a real JetStream: each aggregate's events arrive in
//! version order in its partition, and a router replaying from an older checkpoint (a crash
//! between publishing a batch and committing its checkpoint) duplicates nothing: `Nats-Msg-Id`.

use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::{EventQueue, EventStream, partition_of};
use nexus_core::{AppendRequest, EventMetadata, EventStore, NewEvent};
use nexus_nats::NatsEventStream;
use nexus_runtime::EventRouter;
use nexus_sqlite::{SqliteEventQueue, SqliteEventStore, SqliteReadStore};
use tokio::sync::watch;

fn url() -> String {
    std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn route(
    events: Arc<SqliteEventStore>,
    read: Arc<SqliteReadStore>,
    queue: Arc<SqliteEventQueue>,
    stream: Arc<NatsEventStream>,
    head: u64,
) -> (u64, u64, u64) {
    let router = EventRouter::new(events, read, queue, ["OrderPlaced".to_owned()], 7).with_stream(stream);
    let status = router.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(router.run(stopped));
    let started = std::time::Instant::now();
    while status.checkpoint() < head {
        assert!(started.elapsed() < Duration::from_secs(20), "router stuck at {}", status.checkpoint());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    status.routed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaying_router_duplicates_nothing_on_jetstream() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let queue = Arc::new(SqliteEventQueue::open(dir.path()).unwrap());
    queue.subscribe("hooks").await.unwrap();
    let aggregates: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    for version in 1..=20u64 {
        for aggregate in &aggregates {
            let event = NewEvent {
                event_id: format!("{aggregate}-{version}-{}", uuid::Uuid::new_v4().simple()),
                event_type: "OrderPlaced".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                payload: serde_json::json!({"v": version}).into(),
                metadata: EventMetadata::default(),
            };
            let request = AppendRequest {
                aggregate_id: aggregate.clone(),
                aggregate_type: "Order".into(),
                expected_version: version - 1,
                events: vec![event],
                command: None,
            };
            events.append(request).await.unwrap();
        }
    }
    let head = events.head().await.unwrap();
    assert_eq!(head, 200);
    let name = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let stream = Arc::new(
        NatsEventStream::connect(&url(), &name, 3)
            .await
            .unwrap_or_else(|e| panic!("NATS at {} is unreachable: {e}", url())),
    );
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    assert_eq!(route(events.clone(), read, queue.clone(), stream.clone(), head).await, (200, 0, 0));
    // The same events again, as after a crash before the checkpoint commit.
    let elsewhere = tempfile::tempdir().unwrap();
    let forgetful = Arc::new(SqliteReadStore::open(elsewhere.path()).unwrap());
    assert_eq!(route(events.clone(), forgetful, queue, stream.clone(), head).await, (200, 0, 0));

    let mut got = Vec::new();
    for partition in 0..3 {
        loop {
            let batch = stream.fetch("check", partition, 100, Duration::from_millis(200)).await.unwrap();
            let Some(last) = batch.last() else { break };
            stream.ack("check", partition, last.sequence).await.unwrap();
            got.extend(batch);
        }
    }
    assert_eq!(got.len(), 200, "every event once, none twice");
    for aggregate in &aggregates {
        let mine: Vec<_> = got.iter().filter(|e| &e.event.aggregate_id == aggregate).collect();
        assert!(mine.iter().all(|e| e.partition == partition_of(aggregate, 3)));
        let versions: Vec<u64> = mine.iter().map(|e| e.event.aggregate_version).collect();
        assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "{aggregate} in order");
    }
    stream.destroy().await.unwrap();
}
