//! Shared fixtures of the criterion benchmarks under `benches/` (run them with
//! `cargo bench -p nexus-benches`; BENCHMARKS.md says what each figure means and the ceiling it
//! is read against).
//!
//! - `rehydration`: a cold `CommandBus` loading a 1,000-event `Product`, with and without a
//!   snapshot.
//! - `append`: `SqliteEventStore` and `PostgresEventStore` appends of 1–1,000 events, each beside
//!   the raw insert of as many rows in one durable commit of the same database.
//! - `validation`: `PayloadValidator::check` of a valid and an invalid `PlaceOrder`.
//! - `upcasting`: `Upcasting::upcast` of a `UserRegistered` v1 to v2, and of a current event.
//! - `projection`: `OrdersProjection::apply` of an `OrderPlaced`.
//! - `read_commit`: `SqliteReadStore` commits of 128 new `orders` documents and the `customers`
//!   documents their orders change, as the projections make them under `nexus bench`.
//!
//! Architecture invariant: measurement only. Nothing here is used by another crate, and nothing
//! here is built by `cargo test` (no test targets), so criterion stays out of CI builds.

use nexus_core::ports::NewEvent;
use nexus_core::{DomainEvent, EventMetadata};
use serde_json::{Value, json};

/// The PostgreSQL the benches use: `NEXUS_TEST_POSTGRES_URL`, as the tests do, or the local
/// default; the flag tells whether the variable was set (then an unreachable server is fatal).
pub fn postgres_url() -> (String, bool) {
    match std::env::var("NEXUS_TEST_POSTGRES_URL") {
        Ok(url) => (url, true),
        Err(_) => ("postgres://postgres@127.0.0.1:5432/test".to_owned(), false),
    }
}

/// A multi-thread runtime like the server's (one worker per core).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// An `OrderPlaced` payload of the size the reference domain writes (~200 bytes of JSON).
pub fn order_placed_payload(n: u64) -> Value {
    json!({
        "customerId": format!("customer-{}", n % 10_000),
        "items": [
            {"productId": format!("product-{}", n % 1000), "quantity": 2, "unitPrice": 9.5},
            {"productId": format!("product-{}", (n + 7) % 1000), "quantity": 1, "unitPrice": 20.0}
        ],
        "total": 39.0
    })
}

/// `count` new events for one append, as the command bus builds them.
pub fn new_events(aggregate_id: &str, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|i| NewEvent {
            event_id: format!("{aggregate_id}-{i}"),
            event_type: "OrderPlaced".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: order_placed_payload(i as u64).into(),
            metadata: EventMetadata {
                correlation_id: "bench".into(),
                causation_id: "bench".into(),
                user_id: "bench".into(),
                schema_version: "1".into(),
            },
        })
        .collect()
}

/// A stored event of `event_type` at version 1 of `aggregate_id`, at `position`, with `payload`
/// written at `schema_version`.
pub fn stored_event(
    event_type: &str,
    aggregate_id: &str,
    position: u64,
    schema_version: &str,
    payload: Value,
) -> DomainEvent {
    DomainEvent {
        event_id: format!("0190a0c0-0000-7000-8000-{position:012}"),
        event_type: event_type.into(),
        aggregate_id: aggregate_id.into(),
        aggregate_version: 1,
        position,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: payload.into(),
        metadata: EventMetadata {
            correlation_id: "c".into(),
            causation_id: "c".into(),
            user_id: "u".into(),
            schema_version: schema_version.into(),
        },
    }
}
