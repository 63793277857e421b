//! Queue-path throughput on the real broker: publish with batched confirms, then receive and
//! ack, one consumer. Prints the figures (run with `--nocapture`) and asserts a floor far below
//! them, so a noisy machine does not fail it but a regression to one round trip per message does.

use std::time::{Duration, Instant};

use nexus_conformance::event_queue::event;
use nexus_core::ports::EventQueue;
use nexus_rabbitmq::RabbitEventQueue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_per_second_with_batched_confirms() {
    let url = std::env::var("NEXUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let queue = RabbitEventQueue::connect(&url, &namespace)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {url} is unreachable: {e}"));
    queue.subscribe("bench").await.unwrap();
    const TOTAL: u64 = 20_000;
    const BATCH: u64 = 500;
    let events: Vec<_> = (1..=TOTAL).map(event).collect();

    let started = Instant::now();
    for chunk in events.chunks(BATCH as usize) {
        queue.publish(chunk).await.unwrap();
    }
    let publish = started.elapsed();

    let started = Instant::now();
    let mut received = 0;
    while received < TOTAL {
        let batch = queue.receive("bench", 256, Duration::from_secs(10)).await.unwrap();
        assert!(!batch.is_empty(), "stalled after {received} deliveries");
        for delivery in &batch {
            queue.ack(delivery).await.unwrap();
        }
        received += batch.len() as u64;
    }
    let consume = started.elapsed();
    let rate = |d: Duration| TOTAL as f64 / d.as_secs_f64();
    println!(
        "RabbitMQ queue path: {TOTAL} events; publish (confirms per {BATCH}) {:.0}/s; receive+ack {:.0}/s",
        rate(publish),
        rate(consume)
    );
    queue.unsubscribe("bench").await.unwrap();
    queue.destroy().await.unwrap();
    assert!(rate(publish) > 500.0 && rate(consume) > 500.0);
}
