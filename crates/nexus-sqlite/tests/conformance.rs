//! The port conformance suites against the SQLite backend, plus what only SQLite can show.

use std::sync::Arc;

use nexus_conformance::{
    SnapshotSubject, Subject, event_store_suite, read_store_suite, schema_store_suite, snapshot_store_suite,
};
use nexus_core::{EventStore, ReadStore, SchemaStore};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore, SqliteSchemaStore};

async fn event_store() -> Subject<dyn EventStore> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path()).unwrap();
    Subject { store: Arc::new(store), guard: Box::new(dir) }
}

async fn read_store() -> Subject<dyn ReadStore> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteReadStore::open(dir.path()).unwrap();
    Subject { store: Arc::new(store), guard: Box::new(dir) }
}

async fn snapshot_store() -> SnapshotSubject {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
    SnapshotSubject { events: store.clone(), snapshots: store, guard: Box::new(dir) }
}

async fn schema_store() -> Subject<dyn SchemaStore> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteSchemaStore::open(dir.path()).unwrap();
    Subject { store: Arc::new(store), guard: Box::new(dir) }
}

event_store_suite!(event_store);
schema_store_suite!(schema_store);
snapshot_store_suite!(snapshot_store);
read_store_suite!(read_store);

#[tokio::test]
async fn the_database_refuses_update_and_delete_of_events() {
    use nexus_core::ports::{AppendRequest, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path()).unwrap();
    let event = NewEvent {
        event_id: "e1".into(),
        event_type: "Happened".into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: serde_json::json!({}).into(),
        metadata: Default::default(),
    };
    let request = AppendRequest {
        aggregate_id: "a".into(),
        aggregate_type: "Test".into(),
        expected_version: 0,
        events: vec![event],
        command: None,
    };
    store.append(request).await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    let update = conn.execute("UPDATE events SET payload = '{}' WHERE position = 1", []).unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = conn.execute("DELETE FROM events", []).unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1);
}
