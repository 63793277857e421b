//! Command payload validation: `PayloadValidator::check` of a `PlaceOrder`, valid and invalid,
//! with the schemas compiled once (as the `CommandBus` does at start-up).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nexus_runtime::PayloadValidator;
use serde_json::json;

fn validation(c: &mut Criterion) {
    let validator = PayloadValidator::for_commands(&nexus_domain::domain()).expect("schemas compile");
    let valid = json!({
        "customerId": "customer-42",
        "items": [
            {"productId": "product-1", "quantity": 2, "unitPrice": 9.5},
            {"productId": "product-2", "quantity": 1, "unitPrice": 20}
        ]
    });
    // Three violations: a missing required field, a quantity below 1, an unknown field.
    let invalid = json!({
        "items": [
            {"productId": "product-1", "quantity": 0, "unitPrice": 9.5},
            {"productId": "product-2", "quantity": 1, "colour": "red"}
        ]
    });
    assert!(validator.check("PlaceOrder", &valid).is_empty());
    assert_eq!(validator.check("PlaceOrder", &invalid).len(), 3);

    let mut group = c.benchmark_group("validate_place_order");
    group.bench_function("valid", |b| b.iter(|| validator.check("PlaceOrder", black_box(&valid))));
    group.bench_function("invalid", |b| b.iter(|| validator.check("PlaceOrder", black_box(&invalid))));
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
