//! Events/s from the store through the router and JetStream into a projection's read model
//! (catch-up: 20,000 events already in the store). Prints the figure (`--nocapture`) and asserts
//! a floor far below it, so a noisy machine does not fail it but a per-event round trip does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::ports::EventQueue;
use nexus_core::{
    AppendRequest, DomainEvent, EventMetadata, EventStore, NewEvent, Projection, ProjectionError,
    ReadDocument, ReadStore,
};
use nexus_nats::NatsEventStream;
use nexus_runtime::{EventRouter, Notifier, StreamProjectionRunner};
use nexus_sqlite::{SqliteEventQueue, SqliteEventStore, SqliteReadStore};
use tokio::sync::watch;

struct Counter;

impl Projection for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "Tick"
    }

    fn apply(&self, doc: &mut ReadDocument, _event: &DomainEvent) -> Result<(), ProjectionError> {
        let n = doc.fields.get("n").and_then(|n| n.as_u64()).unwrap_or(0);
        doc.set("n", n + 1);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_per_second_through_nats_to_a_projection() {
    const AGGREGATES: usize = 200;
    const PER_AGGREGATE: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let queue = Arc::new(SqliteEventQueue::open(dir.path()).unwrap());
    queue.subscribe("none").await.unwrap();
    for a in 0..AGGREGATES {
        let batch = (1..=PER_AGGREGATE)
            .map(|v| NewEvent {
                event_id: format!("t{a}-{v}-{}", uuid::Uuid::new_v4().simple()),
                event_type: "Tick".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                payload: serde_json::json!({}).into(),
                metadata: EventMetadata::default(),
            })
            .collect();
        let request = AppendRequest {
            aggregate_id: format!("clock-{a}"),
            aggregate_type: "Clock".into(),
            expected_version: 0,
            events: batch,
            command: None,
        };
        events.append(request).await.unwrap();
    }
    let url = std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let name = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let stream = Arc::new(NatsEventStream::connect(&url, &name, 4).await.unwrap());
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let router = EventRouter::new(events.clone(), read.clone(), queue, ["Tick".to_owned()], 1000)
        .with_stream(stream.clone());
    let router = tokio::spawn(router.run(stopped.clone()));
    let runner = StreamProjectionRunner::new(
        Arc::new(Counter),
        stream.clone(),
        events.clone(),
        read.clone(),
        Notifier::new(1024),
        1000,
    );
    let runner = tokio::spawn(runner.run(stopped));
    'wait: loop {
        assert!(started.elapsed() < Duration::from_secs(120), "projection did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for a in (0..AGGREGATES).step_by(7).chain([AGGREGATES - 1]) {
            if read
                .get("counter", &format!("clock-{a}"))
                .await
                .unwrap()
                .is_none_or(|d| d.version < PER_AGGREGATE)
            {
                continue 'wait;
            }
        }
        let ids: Vec<String> = (0..AGGREGATES).map(|a| format!("clock-{a}")).collect();
        if read.load("counter", &ids).await.unwrap().iter().filter(|d| d.version == PER_AGGREGATE).count()
            == AGGREGATES
        {
            break;
        }
    }
    let elapsed = started.elapsed();
    let total = AGGREGATES as f64 * PER_AGGREGATE as f64;
    println!(
        "store → router → JetStream → projection: {total} events in {:.2} s = {:.0} events/s (debug build)",
        elapsed.as_secs_f64(),
        total / elapsed.as_secs_f64()
    );
    stop.send(true).unwrap();
    router.await.unwrap();
    runner.await.unwrap();
    for doc in read.load("counter", &["clock-0".to_owned()]).await.unwrap() {
        assert_eq!(doc.fields["n"], PER_AGGREGATE, "each event applied once");
    }
    stream.destroy().await.unwrap();
    assert!(total / elapsed.as_secs_f64() > 500.0);
}
