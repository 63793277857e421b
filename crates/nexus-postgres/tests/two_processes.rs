//! Several processes on one database, simulated by separate backends (each its own pool,
//! appender and listener): no lost update, gap-free versions, and a change feed that skips
//! nothing across processes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
use nexus_core::{EventStore, StoreError};
use serde_json::json;
use tokio::time::Instant;

const AGGREGATES: usize = 4;
const TASKS_PER_PROCESS: usize = 8;
const APPENDS_PER_TASK: usize = 25;

fn events(process: usize, task: usize, n: usize) -> Vec<NewEvent> {
    // One or two events per append, so batches of different sizes interleave.
    (0..1 + n % 2)
        .map(|i| NewEvent {
            event_id: format!("p{process}-t{task}-n{n}-{i}"),
            event_type: "Counted".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: json!({"process": process, "task": task, "n": n}).into(),
            metadata: Default::default(),
        })
        .collect()
}

/// Appends like a command handler: read the stream, decide on the version seen, retry on conflict.
async fn writer(store: Arc<dyn EventStore>, process: usize, task: usize) -> (usize, usize) {
    let (mut written, mut conflicts) = (0, 0);
    for n in 0..APPENDS_PER_TASK {
        let aggregate_id = format!("shared-{}", (task + n) % AGGREGATES);
        loop {
            let seen = store.read_stream(&aggregate_id, 1, None).await.unwrap();
            let version = seen.last().map_or(0, |e| e.aggregate_version);
            let request = AppendRequest {
                aggregate_id: aggregate_id.clone(),
                aggregate_type: "Counter".into(),
                expected_version: version,
                events: events(process, task, n),
                command: None,
            };
            match store.append(request).await {
                Ok(AppendOutcome::Committed(stored)) => {
                    written += stored.len();
                    break;
                }
                Err(StoreError::WrongExpectedVersion { .. }) => conflicts += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    (written, conflicts)
}

/// Reads the change feed from the start until `expected_total` events.
async fn tail(store: Arc<dyn EventStore>, expected_total: usize) -> Vec<nexus_core::DomainEvent> {
    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < expected_total {
        assert!(Instant::now() < deadline, "tailer saw {} of {expected_total}", seen.len());
        let batch = store.read_all(after, 50).await.unwrap();
        match batch.last() {
            Some(last) => {
                after = last.position;
                seen.extend(batch);
            }
            None => {
                store.wait_past(after, Duration::from_secs(1)).await.unwrap();
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_the_same_aggregates_lose_nothing_and_the_feed_skips_nothing() {
    let (first, guard) = common::backend().await;
    let second = common::another(&guard).await;
    let tailing = common::another(&guard).await;
    let expected_total: usize =
        (0..2 * TASKS_PER_PROCESS).map(|_| (0..APPENDS_PER_TASK).map(|n| 1 + n % 2).sum::<usize>()).sum();

    // One tailer in a process that only reads (every read from the database), one in a process
    // that appends too (reads of its own commits answered from its memory, the others' from the
    // database): both must see the same feed.
    let tailer = tokio::spawn(tail(tailing.event_store(), expected_total));
    let tailer_in_writer = tokio::spawn(tail(first.event_store(), expected_total));

    let mut writers = Vec::new();
    for (process, backend) in [&first, &second].into_iter().enumerate() {
        for task in 0..TASKS_PER_PROCESS {
            let store: Arc<dyn EventStore> = backend.event_store();
            writers.push(tokio::spawn(writer(store, process, task)));
        }
    }
    let (mut written, mut conflicts) = (0, 0);
    for task in writers {
        let (w, c) = task.await.unwrap();
        written += w;
        conflicts += c;
    }
    assert_eq!(written, expected_total);
    assert!(conflicts > 0, "the writers really raced (no conflict at all means the test tests nothing)");

    // Versions: gap-free per aggregate, and every append is there (no lost update).
    let store = first.event_store();
    let mut stored = 0;
    for aggregate in 0..AGGREGATES {
        let stream = store.read_stream(&format!("shared-{aggregate}"), 1, None).await.unwrap();
        let versions: Vec<u64> = stream.iter().map(|e| e.aggregate_version).collect();
        assert_eq!(versions, (1..=stream.len() as u64).collect::<Vec<_>>(), "shared-{aggregate}");
        stored += stream.len();
    }
    assert_eq!(stored, expected_total);

    // The feed, seen from the third process: every position once, in order, none skipped.
    let seen = tailer.await.unwrap();
    assert_eq!(tailer_in_writer.await.unwrap(), seen, "the appending process sees the same feed");
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=expected_total as u64).collect::<Vec<_>>());
    let ids: HashSet<&str> = seen.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), expected_total, "no event delivered twice");
    let mut per_aggregate: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &seen {
        per_aggregate.entry(&event.aggregate_id).or_default().push(event.aggregate_version);
    }
    for (aggregate, versions) in per_aggregate {
        assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "{aggregate}: versions in feed order");
    }
    eprintln!("{written} events, {conflicts} conflicts retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_when_another_process_appends_even_without_its_listener() {
    let (waiting, guard) = common::backend().await;
    let appending = common::another(&guard).await;
    let append = |id: &str, expected| {
        let store = appending.event_store();
        let request = AppendRequest {
            aggregate_id: id.into(),
            aggregate_type: "Test".into(),
            expected_version: expected,
            events: events(9, 9, expected as usize).into_iter().take(1).collect(),
            command: None,
        };
        async move { store.append(request).await.unwrap() }
    };
    let store = waiting.event_store();

    // With the listener: woken promptly by the notification.
    let head = store.head().await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_past(head, Duration::from_secs(10)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    append("x", 0).await;
    assert!(waiter.await.unwrap() > head);
    assert!(started.elapsed() < Duration::from_secs(2), "woken by the notification");

    // Without it: the listeners' connections are killed; the waiter still wakes, by polling.
    let raw = common::raw_client(&guard).await;
    let listener = format!("nexus-listener/{}", guard.schema);
    let killed_at: String = raw.query_one("SELECT clock_timestamp()::text", &[]).await.unwrap().get(0);
    let killed = raw
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&listener],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 2, "one listener per backend");
    let head = store.head().await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_past(head, Duration::from_secs(10)).await.unwrap() }
    });
    let started = Instant::now();
    append("x", 1).await;
    assert!(waiter.await.unwrap() > head);
    assert!(started.elapsed() < Duration::from_secs(2), "woken within the poll interval, not the timeout");

    // The listeners come back by themselves (connected again, past LISTEN and the head query).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = raw
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND backend_start > $2::text::timestamptz \
                 AND state = 'idle' AND query LIKE 'SELECT COALESCE(MAX(position)%'",
                &[&listener, &killed_at],
            )
            .await
            .unwrap();
        if back.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the listeners reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the listener can deliver this head (polling reads the real one), so a prompt wake
    // with it shows the new LISTEN session works. It leaves the feed ahead of the store: last step.
    let head = store.head().await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.wait_past(head, Duration::from_secs(10)).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.query("SELECT pg_notify('nexus_events', $1)", &[&format!("{} 1000000", guard.schema)]).await.unwrap();
    raw.query("SELECT pg_notify('nexus_events', 'some_other_schema 2000000')", &[]).await.unwrap();
    assert_eq!(waiter.await.unwrap(), 1_000_000, "the notification of this schema, not another's");
}
