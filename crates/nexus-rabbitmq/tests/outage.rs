//! A broker outage, simulated by cutting a TCP proxy between the queue and the real broker
//! (`NEXUS_TEST_AMQP_URL`): every operation answers `Unavailable` while it lasts, and once the
//! proxy lets connections through again the same `RabbitEventQueue` publishes and receives with
//! nothing lost: what its lost channel held unacknowledged is delivered again, and an ack of a
//! delivery from that channel never settles another message.

mod common;

// The chaos suite's proxy (tokio only), shared rather than copied.
#[path = "../../nexus/tests/chaos/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Cleanup, url};
use nexus_conformance::event_queue::event;
use nexus_core::StoreError;
use nexus_core::ports::{Delivery, EventQueue};
use nexus_rabbitmq::RabbitEventQueue;
use proxy::Proxy;

const CONSUMER: &str = "hook";

/// Receives (without acking) until `count` deliveries arrived; fails after 10 s.
async fn receive(queue: &RabbitEventQueue, count: usize) -> Vec<Delivery> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < count {
        assert!(started.elapsed() < Duration::from_secs(10), "only {} of {count} deliveries", got.len());
        got.extend(queue.receive(CONSUMER, count - got.len(), Duration::from_secs(1)).await.unwrap());
    }
    got
}

fn ids(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries.iter().map(|d| d.event.event_id.clone()).collect()
}

fn is_unavailable<T: std::fmt::Debug>(outcome: Result<T, StoreError>) -> bool {
    matches!(outcome, Err(StoreError::Unavailable(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_unavailable_then_recovered_with_nothing_lost() {
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = Cleanup { namespace: namespace.clone(), consumer: Some(CONSUMER) };
    let (proxy, proxied) = Proxy::in_front_of(&url(), 5672).await;
    let queue = RabbitEventQueue::connect_for_store(&proxied, &namespace, "store-a")
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {} is unreachable: {e}", url()));
    queue.subscribe(CONSUMER).await.unwrap();
    queue.publish(&[event(1), event(2)]).await.unwrap();
    let before = receive(&queue, 2).await;
    let (acked, held) = (&before[0], &before[1]);
    queue.ack(acked).await.unwrap();

    proxy.cut();
    // The waiting consumer sees its channel go; everything after fails fast, as the broker is
    // still unreachable (each call tries to connect again, and the proxy closes it).
    let started = Instant::now();
    let outcome = queue.receive(CONSUMER, 10, Duration::from_secs(10)).await;
    assert!(is_unavailable(outcome), "a receive on a lost connection is Unavailable");
    assert!(started.elapsed() < Duration::from_secs(5), "the loss is seen at once, not at a timeout");
    assert!(is_unavailable(queue.publish(&[event(3)]).await));
    assert!(is_unavailable(queue.receive(CONSUMER, 10, Duration::from_secs(1)).await));
    assert!(is_unavailable(queue.ack(held).await));
    assert!(is_unavailable(queue.dead_letters(10).await));

    proxy.restore();
    // Concurrent callers after the outage: one reconnection serves them all.
    let publishes = (3..=6).map(|n| {
        let queue = &queue;
        async move { queue.publish(&[event(n)]).await }
    });
    for outcome in futures_util::future::join_all(publishes).await {
        outcome.expect("a publish after the broker came back succeeds");
    }
    // An AMQP ack is not confirmed: the one sent just before the cut may have been lost with the
    // connection, and then evt-1 comes again too (at least once). Nothing else may.
    let expected: BTreeSet<String> = (2..=6).map(|n| format!("evt-{n}")).collect();
    let started = Instant::now();
    let mut after = Vec::new();
    while !ids(&after).is_superset(&expected) {
        assert!(started.elapsed() < Duration::from_secs(10), "only {:?} came again", ids(&after));
        after.extend(queue.receive(CONSUMER, 10, Duration::from_secs(1)).await.unwrap());
    }
    let extra: Vec<String> = ids(&after).difference(&expected).cloned().collect();
    assert!(extra.is_empty() || extra == ["evt-1"], "unexpected deliveries: {extra:?}");
    assert_eq!(after.len(), expected.len() + extra.len(), "each delivered once: {:?}", ids(&after));
    // The held delivery's tag may be the number the new channel gave another message: its ack
    // must not settle that one (which then could not be acked below: a double ack closes the
    // channel).
    assert!(is_unavailable(queue.ack(held).await));
    for delivery in &after {
        queue.ack(delivery).await.unwrap();
    }
    let rest = queue.receive(CONSUMER, 10, Duration::from_secs(2)).await.unwrap();
    assert!(rest.is_empty(), "every delivery was acked once: {:?}", ids(&rest));
    assert!(queue.dead_letters(10).await.unwrap().is_empty());
}
