//! A poison event, on both feeds (the change feed and the core stream): the projection tries it
//! 5 times, parks it in the dead-letter queue as `projection:{name}` and goes on with every later
//! event, its document included; `reapply_parked` then applies it once, however often it is
//! called.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use nexus_core::ports::{EventQueue, EventStream};
use nexus_core::{DomainEvent, EventStore, Projection, ProjectionError, ReadDocument, ReadStore};
use nexus_runtime::{
    MemoryEventStream, Notifier, ProjectionRunner, ProjectionStatus, Reapplied, StepError,
    StreamProjectionRunner, reapply_parked,
};
use nexus_sqlite::{SqliteEventQueue, SqliteEventStore, SqliteReadStore};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The ledger of `common`, failing on event `c-5` while `fault` is on.
struct Picky {
    fault: Arc<AtomicBool>,
    attempts: Arc<AtomicU32>,
}

impl Projection for Picky {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "Tick"
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        if event.event_id == "c-5" {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.fault.load(Ordering::SeqCst) {
                return Err(ProjectionError("c-5 is poison".into()));
            }
        }
        let mut seen = doc.fields.get("seen").cloned().unwrap_or(json!([]));
        seen.as_array_mut().unwrap().push(json!(event.aggregate_version));
        doc.set("seen", seen);
        Ok(())
    }
}

enum Feed {
    ChangeFeed,
    Stream,
}

async fn parks_and_goes_on(feed: Feed) {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let queue = Arc::new(SqliteEventQueue::open(dir.path()).unwrap());
    for version in 1..=8 {
        for aggregate in ["a", "b", "c"] {
            events.append(crate::common::tick(aggregate, version)).await.unwrap();
        }
    }
    let (fault, attempts) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
    let projection = Arc::new(Picky { fault: fault.clone(), attempts: attempts.clone() });
    let (stop, stopped) = watch::channel(false);
    let base = Duration::from_millis(5);
    let (status, task): (Arc<ProjectionStatus>, _) = match feed {
        Feed::ChangeFeed => {
            let runner =
                ProjectionRunner::new(projection.clone(), events.clone(), read.clone(), Notifier::new(64), 4)
                    .with_dead_letters(queue.clone(), base);
            (runner.status(), tokio::spawn(runner.run(stopped)))
        }
        Feed::Stream => {
            let stream = Arc::new(MemoryEventStream::new(2));
            stream.publish(&events.read_all(0, 1000).await.unwrap()).await.unwrap();
            let runner = StreamProjectionRunner::new(
                projection.clone(),
                stream as Arc<dyn EventStream>,
                events.clone(),
                read.clone(),
                Notifier::new(64),
                4,
            )
            .with_dead_letters(queue.clone(), base);
            (runner.status(), tokio::spawn(runner.run(stopped)))
        }
    };

    // Every document reaches version 8: c goes on past its 5th event.
    let started = std::time::Instant::now();
    'wait: loop {
        assert!(started.elapsed() < Duration::from_secs(10), "the projection did not go on");
        for id in ["a", "b", "c"] {
            if read.get("ledger", id).await.unwrap().is_none_or(|doc| doc.version < 8) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue 'wait;
            }
        }
        break;
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 5, "parked after its 5th attempt");
    let letters = queue.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].consumer, "projection:ledger");
    assert_eq!(letters[0].event.event_id, "c-5");
    assert!(letters[0].failure_reason.starts_with("PROJECTION: "), "{}", letters[0].failure_reason);
    let c = read.get("ledger", "c").await.unwrap().unwrap();
    assert_eq!(c.fields["seen"], json!([1, 2, 3, 4, 6, 7, 8]), "every event but the parked one");

    // Still failing: nothing changes. Cleared: applied once, at the document's own version.
    let parked = letters[0].event.clone();
    let refused = reapply_parked(projection.as_ref(), read.as_ref(), &status, &parked).await;
    assert!(matches!(refused, Err(StepError::Poison { .. })), "{refused:?}");
    fault.store(false, Ordering::SeqCst);
    let applied = reapply_parked(projection.as_ref(), read.as_ref(), &status, &parked).await.unwrap();
    assert_eq!(applied, Reapplied::Applied);
    let again = reapply_parked(projection.as_ref(), read.as_ref(), &status, &parked).await.unwrap();
    assert_eq!(again, Reapplied::AlreadyApplied);
    let c = read.get("ledger", "c").await.unwrap().unwrap();
    let seen: Vec<Value> = c.fields["seen"].as_array().unwrap().clone();
    assert_eq!(seen, [1, 2, 3, 4, 6, 7, 8, 5].map(|v| json!(v)), "applied late, once");
    assert_eq!(c.version, 8);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_parks_a_poison_event_and_goes_on() {
    parks_and_goes_on(Feed::ChangeFeed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_stream_parks_a_poison_event_and_goes_on() {
    parks_and_goes_on(Feed::Stream).await;
}
