//! The reference domain: orders, users, inventory and payments, served by `nexus serve` out of the
//! box (contract §8).
//!
//! It is also the template for your own service, so it uses nothing but nexus-core's public API.
//! Each module is one aggregate and everything it owns:
//!
//! - the aggregate: a pure `decide` (state + command → events or a [`DomainError`]) and `apply`
//!   (state + event → state) over adjacently tagged serde enums;
//! - the JSON Schemas (draft 2020-12) of its command and event payloads, kept as files under
//!   `schemas/` and compiled in with `include_str!`, so the registry serves exactly what the code
//!   was written against;
//! - for orders and users, the [`Projection`](nexus_core::Projection) that builds its read model.
//!
//! [`customers`] is a read model keyed by customer, fed by the events of all of a customer's
//! orders.
//!
//! [`fulfillment`] is the reference saga as code: a [`ProcessManager`](nexus_core::ProcessManager)
//! that fulfils each placed order (reserve stock, charge, confirm) and cancels it when that fails.
//!
//! [`domain`] registers them all; that is the whole wiring.
//!
//! Architecture invariant: no I/O, no clock, no randomness. Ids, times and versions come from the
//! runtime. The runtime validates every payload against its schema before `decide` sees it, so the
//! aggregates check the business rules and only those shape rules whose breach would corrupt their
//! state (a zero quantity, a negative amount): `decide` is also called directly, by tests and tools.
//!
//! [`DomainError`]: nexus_core::DomainError

pub mod customers;
pub mod fulfillment;
pub mod inventory;
mod money;
pub mod orders;
pub mod payments;
#[cfg(test)]
mod testing;
pub mod users;

use nexus_core::{Domain, DomainEvent, ProjectionError, Upcaster};
use serde::de::DeserializeOwned;

pub use customers::CustomersProjection;
pub use fulfillment::OrderFulfillment;
pub use inventory::Product;
pub use orders::{Order, OrdersProjection};
pub use payments::Account;
pub use users::{User, UsersProjection};

/// The reference domain: the four aggregates, the `orders`, `customers` and `users` projections,
/// and the `order-fulfillment` process manager (run only when the server's configuration turns it
/// on). `UserRegistered` takes the queue path: nothing in the order flow waits on it, and
/// integrations (webhooks) consume it; every other event takes the ordered core path.
pub fn domain() -> Domain {
    Domain::new()
        .aggregate::<Order>()
        .aggregate::<User>()
        .aggregate::<Product>()
        .aggregate::<Account>()
        .projection(OrdersProjection)
        .projection(CustomersProjection)
        .projection(UsersProjection)
        .process_manager(OrderFulfillment)
        .queue_path(&["UserRegistered"])
        .upcaster(Upcaster {
            event_type: "UserRegistered",
            from_version: 1,
            from_schema: users::USER_REGISTERED_V1_SCHEMA,
            upcast: users::upcast_user_registered_v1,
        })
}

/// Reads a stored event as an aggregate's typed event enum. A projection that cannot read an event
/// it said it handles must stop, not skip it: the read model would silently drift.
fn read_event<E: DeserializeOwned>(event: &DomainEvent) -> Result<E, ProjectionError> {
    event.read_as().map_err(|e| {
        ProjectionError(format!("cannot read event {} ({}): {e}", event.event_id, event.event_type))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    const SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

    fn parse(what: &str, schema: &str) -> Value {
        let value: Value =
            serde_json::from_str(schema).unwrap_or_else(|e| panic!("schema of {what} is not JSON: {e}"));
        assert_eq!(value["$schema"], SCHEMA_DIALECT, "schema of {what}");
        assert_eq!(value["type"], "object", "schema of {what}");
        value
    }

    #[test]
    fn the_domain_registers_every_aggregate_and_projection_once() {
        // `Domain` panics on a duplicate command, event or projection name.
        let domain = domain();
        let kinds: Vec<_> = domain.aggregates().iter().map(|a| a.kind()).collect();
        assert_eq!(kinds, ["Order", "User", "Product", "Account"]);
        let projections: Vec<_> = domain.projections().iter().map(|p| p.name()).collect();
        assert_eq!(projections, ["orders", "customers", "users"]);
        assert!(!domain.is_core("UserRegistered") && domain.is_core("OrderPlaced"));
        assert_eq!(domain.commands().count(), 11);
        assert_eq!(domain.events().count(), 11);
    }

    /// Every command and event type is a variant of its aggregate's enum, and every schema has
    /// the shape the registry expects (the test kit's `check_domain`); the historical
    /// `UserRegistered` v1 schema too.
    #[test]
    fn the_registrations_match_the_code_and_the_schemas() {
        nexus_core::testing::check_domain(&domain());
        assert_eq!(
            parse("UserRegistered v1", users::USER_REGISTERED_V1_SCHEMA)["additionalProperties"],
            true
        );
        assert_eq!(domain().event("UserRegistered").map(|spec| spec.schema_version), Some(2));
    }

    #[test]
    fn every_schema_file_belongs_to_a_registered_type() {
        let domain = domain();
        let mut expected: BTreeSet<String> =
            domain.commands().map(|spec| format!("commands/{}.json", spec.name)).collect();
        expected.extend(
            domain.events().map(|spec| format!("events/{}.v{}.json", spec.name, spec.schema_version)),
        );
        expected.insert("events/UserRegistered.v1.json".to_owned());

        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut found = BTreeSet::new();
        for folder in ["commands", "events"] {
            for entry in std::fs::read_dir(root.join(folder)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                found.insert(format!("{folder}/{name}"));
            }
        }
        assert_eq!(found, expected);
    }
}
