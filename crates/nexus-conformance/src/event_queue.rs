//! Event queue cases: fan-out, acknowledgement, delayed redelivery, dead-lettering after
//! [`MAX_DELIVERIES`], and the dead-letter queue's retry and skip.
//!
//! Every case names its consumers with `prefix`, so a shared broker's queues of other runs (or
//! other cases) never interfere; the factory's guard deletes what the case created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::ports::{EventQueue, MAX_DELIVERIES};
use nexus_core::{DomainEvent, EventMetadata};
use serde_json::json;

/// How long a case waits for something that should arrive before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

pub fn event(n: u64) -> DomainEvent {
    DomainEvent {
        event_id: format!("evt-{n}"),
        event_type: "MemberJoined".into(),
        aggregate_id: format!("user-{n}"),
        aggregate_version: 1,
        position: n,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: json!({"n": n}).into(),
        metadata: EventMetadata { schema_version: "2".into(), ..EventMetadata::default() },
    }
}

/// Receives until `count` deliveries arrived (acking each) or the patience runs out.
async fn drain(queue: &Arc<dyn EventQueue>, consumer: &str, count: usize) -> Vec<DomainEvent> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < count && started.elapsed() < PATIENCE {
        for delivery in queue.receive(consumer, 100, Duration::from_millis(500)).await.unwrap() {
            queue.ack(&delivery).await.unwrap();
            got.push(delivery.event);
        }
    }
    got
}

pub async fn fan_out_reaches_every_subscriber_once(queue: Arc<dyn EventQueue>, prefix: &str) {
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    queue.subscribe(&a).await.unwrap();
    queue.subscribe(&b).await.unwrap();
    queue.subscribe(&a).await.unwrap(); // idempotent
    let events: Vec<_> = (1..=20).map(event).collect();
    queue.publish(&events).await.unwrap();
    for consumer in [&a, &b] {
        let mut got: Vec<u64> = drain(&queue, consumer, 20).await.iter().map(|e| e.position).collect();
        got.sort_unstable();
        assert_eq!(got, (1..=20).collect::<Vec<_>>(), "{consumer} gets every event once");
        assert_eq!(got.len(), 20);
        let more = queue.receive(consumer, 10, Duration::from_millis(200)).await.unwrap();
        assert!(more.is_empty(), "acked deliveries are gone: {more:?}");
    }
    queue.unsubscribe(&a).await.unwrap();
    queue.unsubscribe(&b).await.unwrap();
}

pub async fn only_subscribers_at_publish_time_receive(queue: Arc<dyn EventQueue>, prefix: &str) {
    let late = format!("{prefix}-late");
    let early = format!("{prefix}-early");
    queue.subscribe(&early).await.unwrap();
    queue.publish(&[event(1)]).await.unwrap();
    queue.subscribe(&late).await.unwrap();
    queue.publish(&[event(2)]).await.unwrap();
    let got: Vec<u64> = drain(&queue, &late, 1).await.iter().map(|e| e.position).collect();
    assert_eq!(got, [2]);
    assert_eq!(drain(&queue, &early, 2).await.len(), 2);
    queue.unsubscribe(&late).await.unwrap();
    queue.unsubscribe(&early).await.unwrap();
}

pub async fn nack_redelivers_after_the_delay_and_counts_attempts(queue: Arc<dyn EventQueue>, prefix: &str) {
    let consumer = format!("{prefix}-retry");
    queue.subscribe(&consumer).await.unwrap();
    queue.publish(&[event(7)]).await.unwrap();
    let first = queue.receive(&consumer, 10, PATIENCE).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert_eq!(first[0].event, event(7), "the event arrives intact");
    let nacked = Instant::now();
    queue.nack(&first[0], "HTTP 500", Duration::from_millis(300)).await.unwrap();
    let second = queue.receive(&consumer, 10, PATIENCE).await.unwrap();
    let waited = nacked.elapsed();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2, "the delivery count grows");
    assert!(waited >= Duration::from_millis(250), "redelivered after the delay, not before ({waited:?})");
    assert!(waited < Duration::from_secs(5), "redelivered soon after the delay ({waited:?})");
    queue.ack(&second[0]).await.unwrap();
    assert!(queue.receive(&consumer, 10, Duration::from_millis(300)).await.unwrap().is_empty());
    queue.unsubscribe(&consumer).await.unwrap();
}

pub async fn dead_letters_after_max_deliveries_then_retry_and_skip(queue: Arc<dyn EventQueue>, prefix: &str) {
    let consumer = format!("{prefix}-dlq");
    queue.subscribe(&consumer).await.unwrap();
    queue.publish(&[event(1), event(2)]).await.unwrap();
    let mut attempts = std::collections::HashMap::<u64, u32>::new();
    let started = Instant::now();
    while attempts.values().sum::<u32>() < 2 * MAX_DELIVERIES && started.elapsed() < PATIENCE {
        for delivery in queue.receive(&consumer, 10, Duration::from_millis(500)).await.unwrap() {
            let seen = attempts.entry(delivery.event.position).or_default();
            *seen += 1;
            assert_eq!(delivery.attempt, *seen, "attempt numbers count every delivery");
            queue
                .nack(&delivery, &format!("HTTP 500 on attempt {seen}"), Duration::from_millis(20))
                .await
                .unwrap();
        }
    }
    assert_eq!(attempts.get(&1), Some(&MAX_DELIVERIES));
    assert_eq!(attempts.get(&2), Some(&MAX_DELIVERIES));
    assert!(
        queue.receive(&consumer, 10, Duration::from_millis(300)).await.unwrap().is_empty(),
        "no delivery after the last allowed one"
    );
    let mine = |letters: Vec<nexus_core::DeadLetter>| -> Vec<nexus_core::DeadLetter> {
        letters.into_iter().filter(|d| d.consumer == consumer).collect()
    };
    let letters = mine(queue.dead_letters(1000).await.unwrap());
    assert_eq!(letters.len(), 2, "both events are dead letters: {letters:?}");
    for letter in &letters {
        assert_eq!(letter.retry_count, MAX_DELIVERIES);
        assert_eq!(letter.failure_reason, format!("HTTP 500 on attempt {MAX_DELIVERIES}"));
        assert!(
            !letter.first_failure_time.is_empty() && letter.first_failure_time <= letter.last_failure_time
        );
    }
    let (retried, skipped) = (&letters[0], &letters[1]);
    assert!(queue.retry(&retried.id).await.unwrap());
    assert!(!queue.retry(&retried.id).await.unwrap(), "a retried dead letter is no longer waiting");
    let again = queue.receive(&consumer, 10, PATIENCE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event, retried.event);
    assert_eq!(again[0].attempt, 1, "a retry starts a fresh delivery count");
    queue.ack(&again[0]).await.unwrap();
    assert!(queue.skip(&skipped.id).await.unwrap());
    assert!(!queue.skip(&skipped.id).await.unwrap());
    assert!(mine(queue.dead_letters(1000).await.unwrap()).is_empty(), "nothing left waiting");
    assert!(queue.receive(&consumer, 10, Duration::from_millis(300)).await.unwrap().is_empty());
    queue.unsubscribe(&consumer).await.unwrap();
}

pub async fn dead_letter_puts_an_event_straight_in_the_dlq(queue: Arc<dyn EventQueue>, prefix: &str) {
    let consumer = format!("{prefix}-direct");
    queue.subscribe(&consumer).await.unwrap();
    queue.dead_letter(&consumer, &event(9), "SCHEMA: payload does not match").await.unwrap();
    let letters: Vec<_> =
        queue.dead_letters(1000).await.unwrap().into_iter().filter(|d| d.consumer == consumer).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event, event(9));
    assert_eq!(letters[0].failure_reason, "SCHEMA: payload does not match");
    assert!(queue.retry(&letters[0].id).await.unwrap());
    assert_eq!(drain(&queue, &consumer, 1).await, [event(9)]);
    assert!(!queue.skip("no-such-id").await.unwrap());
    assert!(!queue.retry("no-such-id").await.unwrap());
    queue.unsubscribe(&consumer).await.unwrap();
}
