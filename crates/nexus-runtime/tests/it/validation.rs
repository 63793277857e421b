//! Command payloads checked against the reference domain's schemas.

use nexus_runtime::PayloadValidator;
use serde_json::json;

#[test]
fn every_bad_field_of_the_reference_domain_is_named() {
    let validator = PayloadValidator::for_commands(&nexus_domain::domain()).unwrap();
    let errors = validator.check(
        "PlaceOrder",
        &json!({"items": [{"productId": "p1", "quantity": 0}, {"quantity": "two"}], "extra": 1}),
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in ["customerId", "items[0].quantity", "items[1].productId", "items[1].quantity", "extra"] {
        assert!(fields.contains(&expected), "{expected} missing from {errors:?}");
    }
}
