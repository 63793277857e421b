//! Rehydration of a 1,000-event aggregate: a cold `CommandBus` (nothing cached) handles one
//! command on a `Product` that `AddStock` built up 1,000 times in a real `SqliteEventStore`.
//!
//! - `no_snapshot`: the bus reads and folds all 1,000 events;
//! - `snapshot_at_1000`: the bus loads the snapshot the command path took at version 1,000 and
//!   reads the (zero) events after it.
//!
//! The command is a `ReserveStock` of more than is in stock: the bus must rehydrate to decide,
//! and the rejection appends nothing, so every iteration sees the same 1,000-event aggregate and
//! the figure is rehydration plus one decision, without a commit's fsync in it. Building the bus
//! (compiling the command schemas) is setup, outside the timing.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nexus_core::SnapshotStore;
use nexus_runtime::{CommandBus, CommandError, CommandRequest, SnapshotPolicy};
use nexus_sqlite::SqliteEventStore;
use serde_json::json;

const EVENTS: u64 = 1000;
const PRODUCT: &str = "product-rehydration";
const POLICY: SnapshotPolicy = SnapshotPolicy { every_events: EVENTS, every_bytes: u64::MAX };

fn command(command_type: &str, payload: serde_json::Value) -> CommandRequest {
    CommandRequest {
        command_type: command_type.into(),
        aggregate_id: Some(PRODUCT.into()),
        payload,
        ..CommandRequest::default()
    }
}

fn rehydration(c: &mut Criterion) {
    let runtime = nexus_benches::runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteEventStore::open(dir.path()).expect("event store"));
    let domain = Arc::new(nexus_domain::domain());
    let cold_bus = |snapshots: bool| {
        let bus = CommandBus::new(domain.clone(), store.clone(), 1000).expect("schemas compile");
        if snapshots { bus.with_snapshots(store.clone(), POLICY) } else { bus }
    };

    runtime.block_on(async {
        let writer = cold_bus(true);
        for _ in 0..EVENTS {
            writer.handle(command("AddStock", json!({"quantity": 1}))).await.expect("AddStock");
        }
        // The 1,000th event crossed the trigger; the snapshot is saved in the background.
        let started = std::time::Instant::now();
        while store.latest(PRODUCT).await.expect("snapshot store").is_none_or(|s| s.version != EVENTS) {
            assert!(started.elapsed() < Duration::from_secs(10), "no snapshot at {EVENTS}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    let too_many = || command("ReserveStock", json!({"orderId": "order-1", "quantity": EVENTS + 1}));
    let mut group = c.benchmark_group("rehydrate_1000_events");
    for (name, snapshots) in [("no_snapshot", false), ("snapshot_at_1000", true)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                || cold_bus(snapshots),
                |bus| async move {
                    let outcome = bus.handle(too_many()).await;
                    assert!(matches!(outcome, Err(CommandError::Rejected(_))), "{outcome:?}");
                    bus
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, rehydration);
criterion_main!(benches);
