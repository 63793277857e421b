//! The event-queue conformance suite against the embedded queue, plus what only it can show:
//! state survives a reopen, and a delivery never acknowledged comes back.

use std::sync::Arc;
use std::time::Duration;

use nexus_conformance::{Subject, event_queue::event, event_queue_suite};
use nexus_core::ports::EventQueue;
use nexus_sqlite::SqliteEventQueue;

async fn event_queue() -> Subject<dyn EventQueue> {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteEventQueue::open(dir.path()).unwrap();
    Subject { store: Arc::new(queue), guard: Box::new(dir) }
}

event_queue_suite!(event_queue);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_dead_letters_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = SqliteEventQueue::open(dir.path()).unwrap();
        queue.subscribe("c").await.unwrap();
        queue.publish(&[event(1), event(2)]).await.unwrap();
        queue.dead_letter("c", &event(3), "SCHEMA: bad").await.unwrap();
    }
    let queue = SqliteEventQueue::open(dir.path()).unwrap();
    let got = queue.receive("c", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.event.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(queue.dead_letters(10).await.unwrap().len(), 1);
    queue.publish(&[event(4)]).await.unwrap();
    assert_eq!(queue.depths().await.unwrap(), [("c".to_owned(), 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_delivery_comes_back_after_the_visibility_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteEventQueue::open_with_visibility(dir.path(), Duration::from_millis(200)).unwrap();
    queue.subscribe("c").await.unwrap();
    queue.publish(&[event(1)]).await.unwrap();
    let first = queue.receive("c", 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        queue.receive("c", 10, Duration::from_millis(50)).await.unwrap().is_empty(),
        "invisible meanwhile"
    );
    let again = queue.receive("c", 10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1, "redelivered after the visibility timeout");
    assert_eq!(again[0].attempt, 2);
}
