//! The event-queue conformance suite against a real RabbitMQ (`NEXUS_TEST_AMQP_URL`, default the
//! local broker). Each case gets a fresh namespace, deleted at the end. An unreachable broker fails
//! the tests: they never pass silently.

mod common;

use std::sync::Arc;

use common::{Cleanup, url};
use nexus_conformance::{Subject, event_queue_suite};
use nexus_core::ports::EventQueue;
use nexus_rabbitmq::RabbitEventQueue;

async fn event_queue() -> Subject<dyn EventQueue> {
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let queue = RabbitEventQueue::connect(&url(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {} is unreachable: {e}", url()));
    Subject { store: Arc::new(queue), guard: Box::new(Cleanup { namespace, consumer: None }) }
}

event_queue_suite!(event_queue);

/// What only the broker does: a message redelivered `x-delivery-limit` times without an ack
/// (its consumer died each time) is dead-lettered by RabbitMQ itself, and the DLQ API sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_dead_letters_a_message_no_consumer_survives() {
    use std::time::Duration;
    let subject = event_queue().await;
    let namespace = &subject.guard.downcast_ref::<Cleanup>().unwrap().namespace.clone();
    let queue = subject.store.clone();
    queue.subscribe("crashy").await.unwrap();
    queue.publish(&[nexus_conformance::event_queue::event(1)]).await.unwrap();
    for attempt in 1..=nexus_core::ports::MAX_DELIVERIES {
        // A consumer process that receives and dies before acknowledging.
        let dying = RabbitEventQueue::connect(&url(), namespace).await.unwrap();
        let got = dying.receive("crashy", 10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].attempt, attempt, "the broker's delivery count is the attempt number");
        dying.close().await;
    }
    let started = std::time::Instant::now();
    let letters = loop {
        let letters = queue.dead_letters(10).await.unwrap();
        if !letters.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "dead-lettered by the broker");
    assert_eq!(letters[0].consumer, "crashy");
    assert!(letters[0].failure_reason.starts_with("TRANSIENT:"), "{}", letters[0].failure_reason);
    assert!(queue.retry(&letters[0].id).await.unwrap());
    let again = queue.receive("crashy", 10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1);
    queue.ack(&again[0]).await.unwrap();
    queue.unsubscribe("crashy").await.unwrap();
}
