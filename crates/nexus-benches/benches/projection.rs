//! Projection apply: `OrdersProjection::apply` of an `OrderPlaced` into an empty `ReadDocument`
//! (reading the typed event from its JSON, the searchable text, the document fields). The
//! runner's read-store commit is not in it: that is the append benches' kind of cost.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nexus_core::{Projection, ReadDocument};
use nexus_domain::OrdersProjection;

fn projection(c: &mut Criterion) {
    let event =
        nexus_benches::stored_event("OrderPlaced", "order-1", 1, "1", nexus_benches::order_placed_payload(1));
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
