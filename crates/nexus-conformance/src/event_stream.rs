//! Event stream (core path) cases: per-aggregate order within one partition, de-duplication by
//! event id, durable readers that resume after what they acknowledged, independently.
//!
//! Each case names its readers with `prefix`; the factory gives a fresh, empty stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::ports::{EventStream, StreamEvent, partition_of};
use nexus_core::{DomainEvent, EventMetadata};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(10);

fn event(aggregate: &str, version: u64) -> DomainEvent {
    DomainEvent {
        event_id: format!("{aggregate}-v{version}"),
        event_type: "ItemAdded".into(),
        aggregate_id: aggregate.into(),
        aggregate_version: version,
        position: 0,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: json!({"v": version}).into(),
        metadata: EventMetadata::default(),
    }
}

/// Reads every partition for `reader`, acking each batch, until `count` events arrived.
async fn read_all(stream: &Arc<dyn EventStream>, reader: &str, count: usize) -> Vec<StreamEvent> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < count && started.elapsed() < PATIENCE {
        for partition in 0..stream.partitions() {
            let batch = stream.fetch(reader, partition, 50, Duration::from_millis(50)).await.unwrap();
            if let Some(last) = batch.last() {
                stream.ack(reader, partition, last.sequence).await.unwrap();
            }
            got.extend(batch);
        }
    }
    got
}

pub async fn an_aggregate_keeps_its_order_in_its_partition(stream: Arc<dyn EventStream>, prefix: &str) {
    let aggregates: Vec<String> = (0..8).map(|i| format!("{prefix}-agg-{i}")).collect();
    // Interleaved, in several publishes.
    for version in 1..=10 {
        let batch: Vec<_> = aggregates.iter().map(|a| event(a, version)).collect();
        stream.publish(&batch).await.unwrap();
    }
    let got = read_all(&stream, &format!("{prefix}-r"), 80).await;
    assert_eq!(got.len(), 80, "every event once");
    let mut by_aggregate: BTreeMap<String, Vec<(u32, u64, u64)>> = BTreeMap::new();
    for item in &got {
        by_aggregate.entry(item.event.aggregate_id.clone()).or_default().push((
            item.partition,
            item.sequence,
            item.event.aggregate_version,
        ));
    }
    for (aggregate, items) in by_aggregate {
        let expected = partition_of(&aggregate, stream.partitions());
        assert!(items.iter().all(|(p, _, _)| *p == expected), "{aggregate} stays in partition {expected}");
        let versions: Vec<u64> = items.iter().map(|(_, _, v)| *v).collect();
        assert_eq!(versions, (1..=10).collect::<Vec<_>>(), "{aggregate} in order");
        assert!(items.windows(2).all(|w| w[0].1 < w[1].1), "sequences increase within a partition");
    }
}

pub async fn a_republished_event_id_is_not_appended_again(stream: Arc<dyn EventStream>, prefix: &str) {
    let first: Vec<_> = (1..=5).map(|v| event(&format!("{prefix}-a"), v)).collect();
    stream.publish(&first).await.unwrap();
    // A router restarted from an older checkpoint publishes the same events again, and more.
    let mut again = first.clone();
    again.push(event(&format!("{prefix}-a"), 6));
    stream.publish(&again).await.unwrap();
    let reader = format!("{prefix}-r");
    let got = read_all(&stream, &reader, 6).await;
    let versions: Vec<u64> = got.iter().map(|e| e.event.aggregate_version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    let partition = partition_of(&format!("{prefix}-a"), stream.partitions());
    let more = stream.fetch(&reader, partition, 50, Duration::from_millis(300)).await.unwrap();
    assert!(more.is_empty(), "nothing duplicated: {more:?}");
}

pub async fn readers_are_independent_and_resume_after_their_acks(stream: Arc<dyn EventStream>, prefix: &str) {
    let aggregate = format!("{prefix}-x");
    let partition = partition_of(&aggregate, stream.partitions());
    stream.publish(&(1..=4).map(|v| event(&aggregate, v)).collect::<Vec<_>>()).await.unwrap();
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let first = stream.fetch(&a, partition, 2, PATIENCE).await.unwrap();
    assert_eq!(first.iter().map(|e| e.event.aggregate_version).collect::<Vec<_>>(), [1, 2]);
    stream.ack(&a, partition, first[1].sequence).await.unwrap();
    let rest = stream.fetch(&a, partition, 10, PATIENCE).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.event.aggregate_version).collect::<Vec<_>>(), [3, 4]);
    stream.ack(&a, partition, rest[1].sequence).await.unwrap();
    assert!(stream.fetch(&a, partition, 10, Duration::from_millis(200)).await.unwrap().is_empty());
    let all_b = stream.fetch(&b, partition, 10, PATIENCE).await.unwrap();
    assert_eq!(all_b.len(), 4, "another reader starts from the beginning");
    stream.ack(&b, partition, all_b[3].sequence).await.unwrap();
    // A fetch waiting for the next event wakes when it is published.
    let waiter = {
        let stream = stream.clone();
        let a = a.clone();
        tokio::spawn(async move { stream.fetch(&a, partition, 10, PATIENCE).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    stream.publish(&[event(&aggregate, 5)]).await.unwrap();
    let woken = waiter.await.unwrap();
    assert_eq!(woken.iter().map(|e| e.event.aggregate_version).collect::<Vec<_>>(), [5]);
    assert!(started.elapsed() < Duration::from_secs(2), "woken promptly ({:?})", started.elapsed());
}

/// Waits until `reader`'s backlog on `partition` is `expected` (an acknowledgement may reach the
/// backend a moment after `ack` returns), and fails naming the last value seen.
async fn backlog_becomes(stream: &Arc<dyn EventStream>, reader: &str, partition: u32, expected: u64) {
    let started = Instant::now();
    loop {
        let backlog = stream.backlog(reader, partition).await.unwrap();
        if backlog == expected {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{reader}'s backlog is {backlog}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn the_backlog_is_what_a_reader_has_not_acknowledged(stream: Arc<dyn EventStream>, prefix: &str) {
    let aggregate = format!("{prefix}-x");
    let partition = partition_of(&aggregate, stream.partitions());
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    backlog_becomes(&stream, &a, partition, 0).await;
    stream.publish(&(1..=5).map(|v| event(&aggregate, v)).collect::<Vec<_>>()).await.unwrap();
    backlog_becomes(&stream, &a, partition, 5).await;
    // Fetched is not done: only an acknowledgement takes an event off the backlog.
    let first = stream.fetch(&a, partition, 2, PATIENCE).await.unwrap();
    assert_eq!(first.len(), 2);
    backlog_becomes(&stream, &a, partition, 5).await;
    stream.ack(&a, partition, first[1].sequence).await.unwrap();
    backlog_becomes(&stream, &a, partition, 3).await;
    backlog_becomes(&stream, &b, partition, 5).await;
    let rest = stream.fetch(&a, partition, 10, PATIENCE).await.unwrap();
    assert_eq!(rest.len(), 3);
    stream.ack(&a, partition, rest[2].sequence).await.unwrap();
    backlog_becomes(&stream, &a, partition, 0).await;
    // Other partitions hold none of this aggregate's events.
    for other in (0..stream.partitions()).filter(|p| *p != partition) {
        backlog_becomes(&stream, &a, other, 0).await;
    }
}
