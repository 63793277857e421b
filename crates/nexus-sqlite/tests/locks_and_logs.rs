//! Who holds SQLite's locks, and how large its logs get: a commit waits for a write lock held
//! elsewhere instead of failing with "database is locked"; each `-wal` file stays bounded while
//! reads and writes never stop; a store that is dropped leaves no log behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_core::ports::{AppendRequest, NewEvent};
use nexus_core::{EventStore, ListQuery, ReadDocument, ReadStore};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};
use rusqlite::{Connection, TransactionBehavior};

fn document(id: &str, version: u64, text: &str) -> ReadDocument {
    let mut doc = ReadDocument::empty(id, id);
    doc.version = version;
    doc.status = "PLACED".into();
    doc.searchable_text = text.into();
    doc
}

fn append(aggregate: &str, payload: serde_json::Value) -> AppendRequest {
    let event = NewEvent {
        event_id: format!("{aggregate}-1"),
        event_type: "OrderPlaced".into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: payload.into(),
        metadata: Default::default(),
    };
    AppendRequest {
        aggregate_id: aggregate.into(),
        aggregate_type: "Order".into(),
        expected_version: 0,
        events: vec![event],
        command: None,
    }
}

/// Holds `file`'s write lock from another connection for `hold`, as a checkpoint that resets the
/// log does (or a reader repairing a torn log header); answers once the lock is taken.
fn hold_write_lock(file: std::path::PathBuf, hold: Duration) -> std::thread::JoinHandle<()> {
    let (taken, is_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut conn = Connection::open(file).unwrap();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        taken.send(()).unwrap();
        std::thread::sleep(hold);
        tx.commit().unwrap();
    });
    is_taken.recv().unwrap();
    holder
}

/// A projection commit reads first (where the model is stored), then writes. Begun deferred, it
/// met a write lock held elsewhere in that gap and failed at once, without waiting: SQLite
/// cannot let a reader wait for the write lock. Begun `IMMEDIATE`, it waits.
#[tokio::test]
async fn a_read_model_commit_waits_for_a_write_lock_held_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReadStore::open(dir.path()).unwrap();
    store.commit("orders", "orders", vec![document("o-1", 1, "first")], 1).await.unwrap();

    let started = Instant::now();
    let holder = hold_write_lock(dir.path().join("read.db"), Duration::from_millis(300));
    store
        .commit("orders", "orders", vec![document("o-2", 1, "second")], 2)
        .await
        .expect("waits for the lock");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it could not have written while the lock was held"
    );
    holder.join().unwrap();
    assert_eq!(store.checkpoint("orders").await.unwrap(), 2);
    assert!(store.get("orders", "o-2").await.unwrap().is_some());
}

#[tokio::test]
async fn an_append_waits_for_a_write_lock_held_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path()).unwrap();
    store.append(append("o-1", serde_json::json!({"n": 1}))).await.unwrap();

    let holder = hold_write_lock(dir.path().join("events.db"), Duration::from_millis(300));
    store.append(append("o-2", serde_json::json!({"n": 2}))).await.expect("waits for the lock");
    holder.join().unwrap();
    assert_eq!(store.head().await.unwrap(), 2);
}

fn wal_size(dir: &std::path::Path, database: &str) -> u64 {
    std::fs::metadata(dir.join(format!("{database}-wal"))).map_or(0, |m| m.len())
}

/// Readers that never stop used to keep SQLite from ever writing the log from its start again,
/// so it grew by everything written. Here 120 MB of documents go through while reads run back to
/// back, and the log never passes its bound by much; dropped, the store leaves no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_log_stays_bounded_while_reads_never_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let query = ListQuery { filters: vec![], sort: None, limit: 5, offset: 0 };
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    store.list("orders", &query).await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let text = "word ".repeat(4_000); // 20 kB a document
    let mut largest = 0;
    for batch in 0..120u64 {
        let docs = (0..50).map(|n| document(&format!("o-{batch}-{n}"), 1, &text)).collect();
        store.commit("orders", "orders", docs, batch + 1).await.unwrap();
        largest = largest.max(wal_size(dir.path(), "read.db"));
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    // 32 MiB to reset at, plus one commit (1 MB of documents, and their index).
    assert!(largest < 48 << 20, "the log reached {largest} bytes");

    drop(Arc::into_inner(store).expect("no other handle on the store"));
    assert_eq!(wal_size(dir.path(), "read.db"), 0, "a dropped store leaves no log");
    let reopened = SqliteReadStore::open(dir.path()).unwrap();
    assert_eq!(reopened.checkpoint("orders").await.unwrap(), 120);
}

/// The event store's writer commits what is queued before the store is gone, and the log is
/// emptied after it: nothing acknowledged is lost, nothing is left to replay at the next start.
#[tokio::test]
async fn a_dropped_event_store_leaves_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path()).unwrap();
    for n in 0..200 {
        store.append(append(&format!("o-{n}"), serde_json::json!({"n": n}))).await.unwrap();
    }
    assert!(wal_size(dir.path(), "events.db") > 0);
    drop(store);
    assert_eq!(wal_size(dir.path(), "events.db"), 0);
    let reopened = SqliteEventStore::open(dir.path()).unwrap();
    assert_eq!(reopened.head().await.unwrap(), 200);
}
