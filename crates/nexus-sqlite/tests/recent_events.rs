//! The change feed's tail served from memory is the feed the database holds: the same events,
//! field for field, and never a range with a hole in it.

use nexus_core::ports::{AppendRequest, NewEvent};
use nexus_core::{EventMetadata, EventStore};
use nexus_sqlite::SqliteEventStore;
use serde_json::json;

fn append(aggregate: &str, expected_version: u64, payloads: &[serde_json::Value]) -> AppendRequest {
    let events = payloads
        .iter()
        .enumerate()
        .map(|(index, payload)| NewEvent {
            event_id: format!("{aggregate}-{}", expected_version + index as u64 + 1),
            event_type: "OrderPlaced".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: payload.clone().into(),
            metadata: EventMetadata {
                correlation_id: "c-1".into(),
                causation_id: "k-1".into(),
                user_id: "u-1".into(),
                schema_version: "1".into(),
            },
        })
        .collect();
    AppendRequest {
        aggregate_id: aggregate.into(),
        aggregate_type: "Order".into(),
        expected_version,
        events,
        command: None,
    }
}

#[tokio::test]
async fn the_tail_read_from_memory_equals_the_tail_read_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = [
        json!({"total": 39.0, "unitPrice": 9.5, "big": 9007199254740993u64, "neg": -1, "tiny": 1e-7}),
        json!({"text": "naïve \"quoted\" \u{1F600}", "nested": {"list": [1, 2.5, null, true]}}),
    ];
    let store = SqliteEventStore::open(dir.path()).unwrap();
    store.append(append("order-1", 0, &payloads)).await.unwrap();
    store.append(append("order-2", 0, &payloads[..1])).await.unwrap();
    // A refused append takes no position: the tail stays contiguous.
    assert!(store.append(append("order-1", 0, &payloads[..1])).await.is_err());
    store.append(append("order-1", 2, &payloads[1..])).await.unwrap();
    let from_memory = store.read_all(0, 100).await.unwrap();
    assert_eq!(from_memory.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(store.read_all(2, 1).await.unwrap(), from_memory[2..3]);
    assert!(store.read_all(4, 100).await.unwrap().is_empty());
    drop(store);

    // A store opened again holds nothing in memory: every read is the database's.
    let store = SqliteEventStore::open(dir.path()).unwrap();
    let from_database = store.read_all(0, 100).await.unwrap();
    assert_eq!(from_memory, from_database);
    // Its first commit starts the tail over, and reads that reach before it go to the database.
    store.append(append("order-3", 0, &payloads[..1])).await.unwrap();
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all[..4], from_database[..]);
    assert_eq!(all[4].position, 5);
    assert_eq!(store.read_all(4, 100).await.unwrap(), all[4..]);
}
