//! A projection fed by the core path applies every event exactly once and in order per aggregate:
//! through a lost stream message (filled from the event store) and a full redelivery (a replaying
//! router, a reader restarted before its acks), over the embedded stores.

mod common;

use common::Ledger;

use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::EventStream;
use nexus_core::{AppendRequest, DomainEvent, EventMetadata, EventStore, NewEvent, ReadStore};
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
    for version in 1..=10u64 {
        for aggregate in AGGREGATES {
            let event = NewEvent {
                event_id: format!("{aggregate}-{version}"),
                event_type: "Tick".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                payload: json!({}),
                metadata: EventMetadata::default(),
            };
            let request = AppendRequest {
                aggregate_id: aggregate.into(),
                aggregate_type: "Clock".into(),
                expected_version: version - 1,
                events: vec![event],
                command: None,
            };
            events.append(request).await.unwrap();
        }
    }
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
