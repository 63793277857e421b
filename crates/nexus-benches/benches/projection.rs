//! Projection apply: `OrdersProjection::apply` of an `OrderPlaced` into an empty `ReadDocument`
//! (reading the typed event from its JSON, the searchable text, the document fields). The
//! runner's read-store commit is not in it: that is the append benches' kind of cost.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nexus_core::{DomainEvent, EventMetadata, Projection, ReadDocument};
use nexus_domain::OrdersProjection;

fn projection(c: &mut Criterion) {
    let event = DomainEvent {
        event_id: "0190a0c0-0000-7000-8000-000000000001".into(),
        event_type: "OrderPlaced".into(),
        aggregate_id: "order-1".into(),
        aggregate_version: 1,
        position: 1,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: nexus_benches::order_placed_payload(1).into(),
        metadata: EventMetadata {
            correlation_id: "c".into(),
            causation_id: "c".into(),
            user_id: "u".into(),
            schema_version: "1".into(),
        },
    };
    c.bench_function("project_order_placed", |b| {
        b.iter_batched(
            || ReadDocument::empty("order-1", "order-1"),
            |mut doc| {
                OrdersProjection.apply(&mut doc, black_box(&event)).expect("applies");
                doc
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, projection);
criterion_main!(benches);
