//! The port conformance suites against PostgreSQL, each case on a fresh schema.

mod common;

use nexus_conformance::{
    SnapshotSubject, Subject, event_store_suite, read_store_suite, schema_store_suite, snapshot_store_suite,
};
use nexus_core::{EventStore, ReadStore, SchemaStore};

async fn event_store() -> Subject<dyn EventStore> {
    let (backend, guard) = common::backend().await;
    // The store first, then the guard: the schema is dropped after the store is released.
    Subject { store: backend.event_store(), guard: Box::new(guard) }
}

async fn read_store() -> Subject<dyn ReadStore> {
    let (backend, guard) = common::backend().await;
    Subject { store: backend.read_store(), guard: Box::new(guard) }
}

async fn snapshot_store() -> SnapshotSubject {
    let (backend, guard) = common::backend().await;
    SnapshotSubject {
        events: backend.event_store(),
        snapshots: backend.snapshot_store(),
        guard: Box::new(guard),
    }
}

async fn schema_store() -> Subject<dyn SchemaStore> {
    let (backend, guard) = common::backend().await;
    Subject { store: backend.schema_store(), guard: Box::new(guard) }
}

event_store_suite!(event_store);
schema_store_suite!(schema_store);
read_store_suite!(read_store);
snapshot_store_suite!(snapshot_store);
