//! A rebuild over many batches, with commits in flight while the next batches are applied,
//! applies every event to its document exactly once and in order, and ends equal to the live
//! model it replaces.

use crate::common::{Ledger, tick};

use std::sync::Arc;
use std::time::Duration;

use nexus_core::{EventStore, ReadDocument, ReadStore};
use nexus_runtime::{Notifier, ProjectionRunner};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const AGGREGATES: u64 = 40;
const VERSIONS: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_rebuild_applies_each_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    // Interleaved: every batch of 16 holds 16 aggregates, each met again two batches on, while
    // the commit that wrote it may still be in flight.
    for version in 1..=VERSIONS {
        for n in 0..AGGREGATES {
            let request = tick(&format!("a-{n}"), version);
            events.append(request).await.unwrap();
        }
    }
    let runner =
        ProjectionRunner::new(Arc::new(Ledger), events.clone(), read.clone(), Notifier::new(16), 100)
            .with_rebuild_batch_size(16);
    let status = runner.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    let head = events.head().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status.checkpoint() < head {
        assert!(std::time::Instant::now() < deadline, "the projection did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live: Vec<ReadDocument> = read.load("ledger", &ids()).await.unwrap();

    status.request_rebuild();
    while status.rebuilds_completed() < 1 {
        assert_eq!(status.last_error(), None);
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();

    let expected: Vec<Value> = (1..=VERSIONS).map(|v| json!(v)).collect();
    let mut rebuilt = read.load("ledger", &ids()).await.unwrap();
    assert_eq!(rebuilt.len(), AGGREGATES as usize);
    for doc in &rebuilt {
        assert_eq!(doc.fields["seen"], Value::Array(expected.clone()), "{}: once each, in order", doc.id);
        assert_eq!(doc.version, VERSIONS);
    }
    let mut live = live;
    live.sort_by(|a, b| a.id.cmp(&b.id));
    rebuilt.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(rebuilt, live, "the rebuilt model equals the one it replaced");
    assert_eq!(read.checkpoint("ledger").await.unwrap(), head);
    let query = nexus_core::SearchQuery {
        text: format!("tick {VERSIONS}"),
        filters: vec![],
        facets: vec![],
        limit: 100,
        offset: 0,
    };
    assert_eq!(read.search("ledger", &query).await.unwrap().total, AGGREGATES, "indexed by the last version");
}

fn ids() -> Vec<String> {
    (0..AGGREGATES).map(|n| format!("a-{n}")).collect()
}
