//! Inventory: the stock of one product (aggregate id = product id), reserved per order.

use std::collections::BTreeMap;

use nexus_core::{Aggregate, CommandSpec, DomainError, EventSpec};
use serde::{Deserialize, Serialize};

/// A product's stock: what is available, and what each order holds reserved.
///
/// There is no creating command: the first `AddStock` brings a product into existence, so a
/// warehouse feed can add stock without registering products first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Product {
    available: u64,
    /// Order id → quantity that order holds. A BTreeMap, not a HashMap, so the state's `Debug`
    /// output is deterministic.
    reserved: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum ProductCommand {
    AddStock(AddStock),
    ReserveStock(ReserveStock),
    ReleaseStock(ReleaseStock),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddStock {
    pub quantity: u64,
}

/// Reserving again for the same order adds to its reservation: an order may hold several lines of
/// one product.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveStock {
    pub order_id: String,
    pub quantity: u64,
}

/// Releases everything the order holds (the compensation of its `ReserveStock`s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStock {
    pub order_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum ProductEvent {
    StockAdded(StockAdded),
    StockReserved(StockReserved),
    StockReleased(StockReleased),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockAdded {
    pub quantity: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReserved {
    pub order_id: String,
    pub quantity: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    pub order_id: String,
    /// Everything the order held, now available again.
    pub quantity: u64,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "AddStock",
        creates: false,
        schema: include_str!("../schemas/commands/AddStock.json"),
    },
    CommandSpec {
        name: "ReserveStock",
        creates: false,
        schema: include_str!("../schemas/commands/ReserveStock.json"),
    },
    CommandSpec {
        name: "ReleaseStock",
        creates: false,
        schema: include_str!("../schemas/commands/ReleaseStock.json"),
    },
];

const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "StockAdded",
        schema_version: 1,
        schema: include_str!("../schemas/events/StockAdded.v1.json"),
    },
    EventSpec {
        name: "StockReserved",
        schema_version: 1,
        schema: include_str!("../schemas/events/StockReserved.v1.json"),
    },
    EventSpec {
        name: "StockReleased",
        schema_version: 1,
        schema: include_str!("../schemas/events/StockReleased.v1.json"),
    },
];

impl Aggregate for Product {
    const KIND: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        let event = match command {
            ProductCommand::AddStock(AddStock { quantity }) => {
                at_least_one(quantity)?;
                // Refused here so that `apply`, which cannot fail, never has to overflow.
                if self.available.checked_add(quantity).is_none() {
                    return Err(DomainError::rule("stock would exceed the largest storable quantity"));
                }
                ProductEvent::StockAdded(StockAdded { quantity })
            }
            ProductCommand::ReserveStock(ReserveStock { order_id, quantity }) => {
                at_least_one(quantity)?;
                if self.available < quantity {
                    return Err(DomainError::rule(format!(
                        "insufficient stock: {} available, {quantity} requested",
                        self.available
                    )));
                }
                ProductEvent::StockReserved(StockReserved { order_id, quantity })
            }
            ProductCommand::ReleaseStock(ReleaseStock { order_id }) => {
                let Some(&quantity) = self.reserved.get(&order_id) else {
                    return Err(DomainError::rule(format!("order {order_id} has no stock reserved")));
                };
                ProductEvent::StockReleased(StockReleased { order_id, quantity })
            }
        };
        Ok(vec![event])
    }

    // Saturating arithmetic: `decide` never produces an event that would overflow or underflow,
    // and `apply` must accept any stored event without panicking.
    fn apply(&mut self, event: ProductEvent) {
        match event {
            ProductEvent::StockAdded(StockAdded { quantity }) => {
                self.available = self.available.saturating_add(quantity);
            }
            ProductEvent::StockReserved(StockReserved { order_id, quantity }) => {
                self.available = self.available.saturating_sub(quantity);
                let held = self.reserved.entry(order_id).or_default();
                *held = held.saturating_add(quantity);
            }
            ProductEvent::StockReleased(StockReleased { order_id, quantity }) => {
                self.reserved.remove(&order_id);
                self.available = self.available.saturating_add(quantity);
            }
        }
    }

    /// Snapshots are the state's serde form; bump `SNAPSHOT_VERSION` when its fields change.
    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn restore(snapshot: serde_json::Value) -> Option<Self> {
        serde_json::from_value(snapshot).ok()
    }
}

fn at_least_one(quantity: u64) -> Result<(), DomainError> {
    if quantity < 1 {
        return Err(DomainError::rule("quantity must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{check, command, event};

    fn added(quantity: u64) -> Value {
        event("StockAdded", json!({"quantity": quantity}))
    }

    fn reserved(order_id: &str, quantity: u64) -> Value {
        event("StockReserved", json!({"orderId": order_id, "quantity": quantity}))
    }

    fn released(order_id: &str, quantity: u64) -> Value {
        event("StockReleased", json!({"orderId": order_id, "quantity": quantity}))
    }

    fn reserve(order_id: &str, quantity: u64) -> Value {
        command("ReserveStock", json!({"orderId": order_id, "quantity": quantity}))
    }

    fn release(order_id: &str) -> Value {
        command("ReleaseStock", json!({"orderId": order_id}))
    }

    #[test]
    fn stock_is_added_to_new_and_known_products() {
        let add = command("AddStock", json!({"quantity": 5}));
        check::<Product>(&[], add.clone(), Ok(vec![added(5)]));
        check::<Product>(&[added(3)], add, Ok(vec![added(5)]));
        check::<Product>(
            &[],
            command("AddStock", json!({"quantity": 0})),
            Err("quantity must be at least 1"),
        );
        check::<Product>(
            &[added(u64::MAX)],
            command("AddStock", json!({"quantity": 1})),
            Err("stock would exceed the largest storable quantity"),
        );
    }

    #[test]
    fn stock_is_reserved_while_enough_is_available() {
        check::<Product>(&[added(5)], reserve("o-1", 5), Ok(vec![reserved("o-1", 5)]));
        check::<Product>(&[added(5), reserved("o-1", 2)], reserve("o-1", 3), Ok(vec![reserved("o-1", 3)]));
        check::<Product>(
            &[added(5), reserved("o-1", 2)],
            reserve("o-2", 4),
            Err("insufficient stock: 3 available, 4 requested"),
        );
        check::<Product>(&[], reserve("o-1", 1), Err("insufficient stock: 0 available, 1 requested"));
        check::<Product>(&[added(5)], reserve("o-1", 0), Err("quantity must be at least 1"));
    }

    #[test]
    fn releasing_returns_everything_the_order_reserved() {
        let given = [added(10), reserved("o-1", 2), reserved("o-2", 1), reserved("o-1", 3)];
        check::<Product>(&given, release("o-1"), Ok(vec![released("o-1", 5)]));
        check::<Product>(&given, release("o-3"), Err("order o-3 has no stock reserved"));
        check::<Product>(
            &[added(10), reserved("o-1", 2), released("o-1", 2)],
            release("o-1"),
            Err("order o-1 has no stock reserved"),
        );
        // Released stock is available again: 10 - 1 held by o-2.
        check::<Product>(
            &[added(10), reserved("o-1", 5), reserved("o-2", 1), released("o-1", 5)],
            reserve("o-3", 10),
            Err("insufficient stock: 9 available, 10 requested"),
        );
    }
}
