//! Measures what governance costs per event: validating a reference payload against its
//! registered schema (cached compiled validator), and upcasting a v1 event to v2.
//!
//! `cargo run --release -p nexus-registry --example validation_cost`

use std::sync::Arc;
use std::time::Instant;

use nexus_core::{DomainEvent, EventMetadata, EventValidator};
use nexus_registry::Registry;
use nexus_runtime::Upcasting;
use serde_json::json;

const ROUNDS: u32 = 200_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(nexus_sqlite::SqliteSchemaStore::open(dir.path()).unwrap());
    let registry = Registry::new(store);
    let domain = nexus_domain::domain();
    for spec in domain.events() {
        registry.set_compatibility(Some(spec.name), "NONE").await.unwrap();
        for upcaster in domain.upcasters().filter(|u| u.event_type == spec.name) {
            registry.register(spec.name, upcaster.from_schema, None).await.unwrap();
        }
        registry.register(spec.name, spec.schema, None).await.unwrap();
    }
    let payloads = [
        (
            "OrderPlaced",
            "1",
            json!({"customerId": "c-1", "items": [
            {"productId": "p-1", "quantity": 2, "unitPrice": 9.5},
            {"productId": "p-2", "quantity": 1, "unitPrice": 20.0}], "total": 39.0}),
        ),
        (
            "UserRegistered",
            "2",
            json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}),
        ),
        ("StockReserved", "1", json!({"orderId": "o-1", "quantity": 3})),
    ];
    for (event_type, version, payload) in &payloads {
        registry.validate(event_type, version, payload).await.expect("valid reference payload");
        let started = Instant::now();
        for _ in 0..ROUNDS {
            registry.validate(event_type, version, payload).await.unwrap();
        }
        let per_event = started.elapsed().as_nanos() as f64 / ROUNDS as f64;
        println!("validate {event_type:<15} {:>8.2} µs/event", per_event / 1000.0);
    }
    let v1 = DomainEvent {
        event_id: "e".into(),
        event_type: "UserRegistered".into(),
        aggregate_id: "u".into(),
        aggregate_version: 1,
        position: 1,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: json!({"fullName": "Ada King Lovelace", "email": "ada@example.com"}).into(),
        metadata: EventMetadata { schema_version: "1".into(), ..EventMetadata::default() },
    };
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let upcast = Upcasting::upcast(&domain, v1.clone());
        assert_eq!(upcast.metadata.schema_version, "2");
    }
    let with_clone = started.elapsed().as_nanos() as f64 / ROUNDS as f64;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(v1.clone());
    }
    let clone_only = started.elapsed().as_nanos() as f64 / ROUNDS as f64;
    println!(
        "upcast UserRegistered v1→v2 {:>6.2} µs/event (net of copying the event)",
        (with_clone - clone_only) / 1000.0
    );
}
