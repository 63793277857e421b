//! Rehydration of a 5,000-event aggregate with and without a snapshot, through the command path
//! of a process with a cold cache (one command = load + decide + append).
//!
//! `cargo run --release -p nexus-runtime --example rehydration -- [sqlite|postgres]` (PostgreSQL: a
//! schema `rehydrate_<pid>` is left behind; drop it with `DROP SCHEMA … CASCADE`)

use std::sync::Arc;
use std::time::Instant;

use nexus_core::{EventStore, SnapshotStore};
use nexus_runtime::{CommandBus, CommandRequest, SnapshotPolicy};
use serde_json::json;

fn add_stock(id: &str) -> CommandRequest {
    CommandRequest {
        command_type: "AddStock".into(),
        aggregate_id: Some(id.into()),
        payload: json!({"quantity": 1}),
        ..CommandRequest::default()
    }
}

#[tokio::main]
async fn main() {
    let backend = std::env::args().nth(1).unwrap_or_else(|| "sqlite".into());
    let dir = tempfile::tempdir().unwrap();
    let (events, snapshots): (Arc<dyn EventStore>, Arc<dyn SnapshotStore>) = match backend.as_str() {
        "sqlite" => {
            let store = Arc::new(nexus_sqlite::SqliteEventStore::open(dir.path()).unwrap());
            (store.clone(), store)
        }
        _ => {
            let url = std::env::var("NEXUS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let backend =
                nexus_postgres::PostgresBackend::connect(&url, &format!("rehydrate_{}", std::process::id()))
                    .await
                    .unwrap();
            (backend.event_store(), backend.snapshot_store())
        }
    };
    let domain = Arc::new(nexus_domain::domain());
    // 5,000 events, then one snapshot at 5,000.
    let writer = CommandBus::new(domain.clone(), events.clone(), 10).unwrap();
    for _ in 0..5000 {
        writer.handle(add_stock("snapped")).await.unwrap();
    }
    let policy = SnapshotPolicy { every_events: 1_000_000, every_bytes: u64::MAX };
    let snapshotter = CommandBus::new(domain.clone(), events.clone(), 10)
        .unwrap()
        .with_snapshots(snapshots.clone(), policy);
    snapshotter.snapshot_stale(std::time::Duration::ZERO, 5000).await.unwrap();
    assert_eq!(snapshots.latest("snapped").await.unwrap().unwrap().version, 5000);

    for (label, use_snapshots) in [("without a snapshot", false), ("with a snapshot at 5,000", true)] {
        let mut times = Vec::new();
        for _ in 0..20 {
            // A cold cache every time: a new bus, loading from event 1 or from the snapshot.
            let bus = CommandBus::new(domain.clone(), events.clone(), 10).unwrap();
            let bus = if use_snapshots { bus.with_snapshots(snapshots.clone(), policy) } else { bus };
            let started = Instant::now();
            let outcome = bus
                .handle(CommandRequest {
                    command_type: "ReserveStock".into(),
                    aggregate_id: Some("snapped".into()),
                    // Refused (one more than available) so the aggregate stays at 5,000 events.
                    payload: json!({"orderId": "o", "quantity": 5001}),
                    ..CommandRequest::default()
                })
                .await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let error = outcome.expect_err("5,001 is one more than available").to_string();
            assert!(error.contains("5000 available"), "the state is rebuilt right: {error}");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{backend}: first command on a 5,000-event aggregate {label}: median {:.2} ms, max {:.2} ms",
            times[10], times[19]
        );
    }
}
