//! Upcasting on read: `Upcasting::upcast` of a stored `UserRegistered` v1 (`{fullName, email}`)
//! to v2 (`{firstName, lastName, email}`) through the reference domain's chain, and of an event
//! already at its current version (the pass-through every other read pays). Cloning the stored
//! event is setup, outside the timing.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nexus_core::DomainEvent;
use nexus_runtime::Upcasting;
use serde_json::json;

fn stored(event_type: &str, schema_version: &str, payload: serde_json::Value) -> DomainEvent {
    nexus_benches::stored_event(event_type, "user-1", 1, schema_version, payload)
}

fn upcasting(c: &mut Criterion) {
    let domain = nexus_domain::domain();
    let v1 =
        stored("UserRegistered", "1", json!({"fullName": "Ada King Lovelace", "email": "ada@example.com"}));
    let upcast = Upcasting::upcast(&domain, v1.clone());
    assert_eq!(upcast.metadata.schema_version, "2");
    assert_eq!(upcast.payload["lastName"], "King Lovelace");
    let current = stored("OrderPlaced", "1", nexus_benches::order_placed_payload(1));

    let mut group = c.benchmark_group("upcast");
    group.bench_function("user_registered_v1_to_v2", |b| {
        b.iter_batched(|| v1.clone(), |e| Upcasting::upcast(black_box(&domain), e), BatchSize::SmallInput)
    });
    group.bench_function("current_version_pass_through", |b| {
        b.iter_batched(
            || current.clone(),
            |e| Upcasting::upcast(black_box(&domain), e),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, upcasting);
criterion_main!(benches);
