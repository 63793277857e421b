//! Event store cases.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexus_core::ports::{AppendOutcome, AppendRequest, CommandRecord, NewEvent};
use nexus_core::{CommandResult, EventMetadata, EventStore, StoreError};
use serde_json::json;

/// Event ids must be unique across the whole store, whatever the test.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn event(n: u64, event_type: &str, timestamp: &str) -> NewEvent {
    let unique = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    NewEvent {
        event_id: format!("evt-{event_type}-{n}-{unique}"),
        event_type: event_type.to_owned(),
        timestamp: timestamp.to_owned(),
        payload: json!({"n": n}).into(),
        metadata: EventMetadata {
            correlation_id: "corr".into(),
            causation_id: "cause".into(),
            user_id: "tester".into(),
            schema_version: "1".into(),
        },
    }
}

fn request(aggregate_id: &str, expected: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type: "Test".into(),
        expected_version: expected,
        events,
        command: None,
    }
}

fn committed(outcome: AppendOutcome) -> Vec<nexus_core::DomainEvent> {
    match outcome {
        AppendOutcome::Committed(events) => events,
        AppendOutcome::Duplicate(record) => panic!("unexpected duplicate {record:?}"),
    }
}

const T0: &str = "2026-01-01T00:00:00.000Z";

pub async fn append_assigns_versions_and_positions(store: Arc<dyn EventStore>) {
    let events = (1..=3).map(|n| event(n, "Happened", T0)).collect();
    let stored = committed(store.append(request("agg-1", 0, events)).await.unwrap());
    assert_eq!(stored.iter().map(|e| e.aggregate_version).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position), "positions increase");
    let more = committed(store.append(request("agg-1", 3, vec![event(4, "Happened", T0)])).await.unwrap());
    assert_eq!(more[0].aggregate_version, 4);
    assert!(more[0].position > stored[2].position);

    let all = store.read_stream("agg-1", 1, None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], stored[0], "read back exactly what was stored");
    let middle = store.read_stream("agg-1", 2, Some(3)).await.unwrap();
    assert_eq!(middle.iter().map(|e| e.aggregate_version).collect::<Vec<_>>(), [2, 3]);
    assert!(store.read_stream("nobody", 1, None).await.unwrap().is_empty());
    assert_eq!(store.head().await.unwrap(), more[0].position);
}

pub async fn wrong_expected_version_appends_nothing(store: Arc<dyn EventStore>) {
    committed(store.append(request("agg-2", 0, vec![event(1, "Happened", T0)])).await.unwrap());
    let error = store.append(request("agg-2", 0, vec![event(2, "Happened", T0)])).await.unwrap_err();
    match error {
        StoreError::WrongExpectedVersion { expected, actual, .. } => assert_eq!((expected, actual), (0, 1)),
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    let error = store.append(request("agg-2", 5, vec![event(3, "Happened", T0)])).await.unwrap_err();
    assert!(matches!(error, StoreError::WrongExpectedVersion { actual: 1, .. }));
    assert_eq!(store.read_stream("agg-2", 1, None).await.unwrap().len(), 1);
}

pub async fn only_one_of_two_racing_appends_wins(store: Arc<dyn EventStore>) {
    for round in 0..20 {
        let id = format!("race-{round}");
        let a = store.append(request(&id, 0, vec![event(1, "A", T0)]));
        let b = store.append(request(&id, 0, vec![event(2, "B", T0)]));
        let (a, b) = tokio::join!(a, b);
        assert!(a.is_ok() != b.is_ok(), "exactly one racing append wins (round {round})");
        assert_eq!(store.read_stream(&id, 1, None).await.unwrap().len(), 1);
    }
}

pub async fn duplicate_command_id_returns_the_first_record(store: Arc<dyn EventStore>) {
    let record = CommandRecord {
        command_id: "cmd-1".into(),
        fingerprint: "fp-1".into(),
        result: CommandResult {
            success: true,
            command_id: "cmd-1".into(),
            aggregate_id: "agg-3".into(),
            version: 1,
            position: 0,
            event_ids: vec!["e".into()],
        },
    };
    let mut first = request("agg-3", 0, vec![event(1, "Happened", T0)]);
    first.command = Some(record.clone());
    committed(store.append(first).await.unwrap());
    assert_eq!(store.find_command("cmd-1").await.unwrap(), Some(record.clone()));
    assert_eq!(store.find_command("cmd-2").await.unwrap(), None);

    let mut again = request("agg-3", 1, vec![event(2, "Happened", T0)]);
    again.command = Some(CommandRecord { fingerprint: "fp-other".into(), ..record.clone() });
    match store.append(again).await.unwrap() {
        AppendOutcome::Duplicate(found) => {
            assert_eq!(found, record, "the first record is returned as stored")
        }
        AppendOutcome::Committed(_) => panic!("a recorded command id must not append again"),
    }
    assert_eq!(store.read_stream("agg-3", 1, None).await.unwrap().len(), 1);
}

pub async fn failed_append_in_a_batch_leaves_others_intact(store: Arc<dyn EventStore>) {
    committed(store.append(request("busy", 0, vec![event(1, "Happened", T0)])).await.unwrap());
    // Fire many appends at once so backends that batch put good and bad ones in one transaction.
    let mut tasks = Vec::new();
    for n in 0..50u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (id, expected) = if n % 5 == 0 { ("busy".to_owned(), 0) } else { (format!("ok-{n}"), 0) };
            store.append(request(&id, expected, vec![event(n, "Happened", T0)])).await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if n % 5 == 0 {
            assert!(
                matches!(result, Err(StoreError::WrongExpectedVersion { .. })),
                "append {n} must conflict"
            );
        } else {
            committed(result.unwrap());
            assert_eq!(store.read_stream(&format!("ok-{n}"), 1, None).await.unwrap().len(), 1);
        }
    }
    assert_eq!(store.read_stream("busy", 1, None).await.unwrap().len(), 1);
}

pub async fn change_feed_is_gap_free_under_concurrent_writers(store: Arc<dyn EventStore>) {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 150;
    let start = store.head().await.unwrap();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let id = format!("writer-{writer}");
            let mut version = 0;
            for n in 0..APPENDS {
                // One to three events per append, so batches of different sizes interleave.
                let count = 1 + (writer + n) % 3;
                let events = (0..count).map(|i| event(n * 10 + i, "Fed", T0)).collect();
                let stored = committed(store.append(request(&id, version, events)).await.unwrap());
                version += stored.len() as u64;
            }
            version
        }));
    }
    // Tail while the writers run, the way a projection does.
    let tailer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = start;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let batch = store.read_all(after, 100).await.unwrap();
                match batch.last() {
                    Some(last) => {
                        after = last.position;
                        seen.extend(batch.into_iter().map(|e| (e.position, e.event_id)));
                    }
                    None => {
                        if store.head().await.unwrap() == after && seen.len() as u64 >= expected_total() {
                            return seen;
                        }
                        store.wait_past(after, Duration::from_millis(50)).await.unwrap();
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "tailer did not finish");
            }
        })
    };
    fn expected_total() -> u64 {
        (0..WRITERS).map(|w| (0..APPENDS).map(|n| 1 + (w + n) % 3).sum::<u64>()).sum()
    }
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert_eq!(written, expected_total());
    let seen = tailer.await.unwrap();
    let positions: Vec<u64> = seen.iter().map(|(p, _)| *p).collect();
    let expected: Vec<u64> = (start + 1..=start + written).collect();
    assert_eq!(positions, expected, "every position exactly once, in order, none skipped");
    let ids: HashSet<&String> = seen.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len() as u64, written, "no event delivered twice");
}

pub async fn read_by_type_filters_type_and_time(store: Arc<dyn EventStore>) {
    let times = ["2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z"];
    for (n, at) in times.iter().enumerate() {
        let events = vec![event(n as u64, "Timed", at), event(n as u64, "Other", at)];
        committed(store.append(request(&format!("timed-{n}"), 0, events)).await.unwrap());
    }
    let found = store.read_by_type("Timed", times[1], times[2], 10).await.unwrap();
    assert_eq!(found.iter().map(|e| e.timestamp.as_str()).collect::<Vec<_>>(), [times[1], times[2]]);
    assert!(found.iter().all(|e| e.event_type == "Timed"));
    assert_eq!(store.read_by_type("Timed", times[0], times[2], 1).await.unwrap().len(), 1, "limit holds");
    assert!(store.read_by_type("Missing", times[0], times[2], 10).await.unwrap().is_empty());
}

pub async fn wait_past_wakes_on_append(store: Arc<dyn EventStore>) {
    let head = store.head().await.unwrap();
    assert_eq!(store.wait_past(head, Duration::from_millis(20)).await.unwrap(), head, "times out at head");
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_past(head, Duration::from_secs(10)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = tokio::time::Instant::now();
    committed(store.append(request("wake", 0, vec![event(1, "Happened", T0)])).await.unwrap());
    let woke_at = waiter.await.unwrap();
    assert!(woke_at > head);
    assert!(started.elapsed() < Duration::from_secs(5), "the waiter woke on the append, not the timeout");
}
