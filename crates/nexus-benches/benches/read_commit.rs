//! Read-store commits as the reference domain's projections make them under `nexus bench`: per
//! round, one commit of 128 new `orders` documents and one of the 128 `customers` documents
//! their orders change (updates of 10,000 customers, at random), each with its checkpoint, on the
//! embedded store with the fields both models declare indexed, as the server does. Documents
//! are built by the projections themselves from `OrderPlaced` events. The figure is the time per
//! round, so per order it is this over 128: the read side's share of a `PlaceOrder`.
//!
//! The store starts with 50,000 orders and every customer, so the indexes have the depth of a
//! store that has been running a while.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use nexus_core::{DomainEvent, Projection, ReadDocument, ReadStore};
use nexus_domain::{CustomersProjection, OrdersProjection};
use nexus_sqlite::SqliteReadStore;

const BATCH: u64 = 128;
const CUSTOMERS: u64 = 10_000;
const ORDERS_BEFORE: u64 = 50_000;

/// The `OrderPlaced` at `position` (order `n`), by a customer picked by a fixed-seed generator.
fn placed(position: u64, seed: &mut u64) -> DomainEvent {
    // xorshift: the same customers, in the same order, every run.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let mut payload = nexus_benches::order_placed_payload(position);
    payload["customerId"] = format!("customer-{}", *seed % CUSTOMERS).into();
    nexus_benches::stored_event("OrderPlaced", &format!("order-{position:012}"), position, "1", payload)
}

/// The model state the bench keeps beside the store: the customers' documents, as a runner would
/// load them.
struct Models {
    customers: HashMap<String, ReadDocument>,
    position: u64,
    seed: u64,
}

impl Models {
    /// The next round's documents: `BATCH` orders and the customers they change.
    fn round(&mut self) -> (Vec<ReadDocument>, Vec<ReadDocument>, u64) {
        let mut orders = Vec::with_capacity(BATCH as usize);
        let mut changed: HashMap<String, ReadDocument> = HashMap::new();
        for _ in 0..BATCH {
            self.position += 1;
            let event = placed(self.position, &mut self.seed);
            let mut order = ReadDocument::empty(event.aggregate_id.clone(), event.aggregate_id.clone());
            OrdersProjection.apply(&mut order, &event).expect("order applies");
            order.version = 1;
            orders.push(order);
            let id = CustomersProjection.document_ids(&event).remove(0);
            let customer = self
                .customers
                .entry(id.clone())
                .or_insert_with(|| ReadDocument::empty(id.clone(), id.clone()));
            CustomersProjection.apply(customer, &event).expect("customer applies");
            customer.version = self.position;
            changed.insert(id, customer.clone());
        }
        (orders, changed.into_values().collect(), self.position)
    }
}

fn read_commit(c: &mut Criterion) {
    let runtime = nexus_benches::runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteReadStore::open(dir.path()).expect("read store");
    let mut models = Models { customers: HashMap::new(), position: 0, seed: 0x2545_f491_4f6c_dd1d };
    runtime.block_on(async {
        store.index_fields("orders", OrdersProjection.list_fields()).await.expect("orders indexes");
        store.index_fields("customers", CustomersProjection.list_fields()).await.expect("customers indexes");
        while models.position < ORDERS_BEFORE {
            let (orders, customers, position) = models.round();
            store.commit("orders", "orders", orders, position).await.expect("orders commit");
            store.commit("customers", "customers", customers, position).await.expect("customers commit");
        }
    });
    let mut group = c.benchmark_group("read_commit");
    group.sample_size(30).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    group.throughput(criterion::Throughput::Elements(BATCH));
    group.bench_function("orders_and_customers_128", |b| {
        b.iter_custom(|rounds| {
            let mut spent = Duration::ZERO;
            for _ in 0..rounds {
                let (orders, customers, position) = models.round();
                let started = Instant::now();
                runtime.block_on(async {
                    store.commit("orders", "orders", orders, position).await.expect("orders commit");
                    store
                        .commit("customers", "customers", customers, position)
                        .await
                        .expect("customers commit");
                });
                spent += started.elapsed();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, read_commit);
criterion_main!(benches);
