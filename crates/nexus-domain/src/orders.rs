//! Orders: an order is placed, maybe confirmed, then shipped, or cancelled before it ships; and
//! the `orders` read model.

use std::fmt;

use nexus_core::{
    Aggregate, CommandSpec, DomainError, DomainEvent, EventSpec, Projection, ProjectionError, ReadDocument,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{money, read_event};

/// An order's lifecycle: `PLACED` → (`CONFIRMED` →) `SHIPPED`, or `CANCELLED` before it ships.
///
/// The state holds the status, which the rules look at, and the customer and total, which a
/// cancellation repeats so that readers of `OrderCancelled` (the `customers` read model) need no
/// other event. The items live in the events and the read model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Order {
    /// `None` until the order is placed.
    status: Option<OrderStatus>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    total: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    /// The status as the read model and the error messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Confirmed => "CONFIRMED",
            Self::Shipped => "SHIPPED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum OrderCommand {
    PlaceOrder(PlaceOrder),
    ConfirmOrder(ConfirmOrder),
    ShipOrder(ShipOrder),
    CancelOrder(CancelOrder),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    pub customer_id: String,
    pub items: Vec<OrderItem>,
}

/// One line of an order. In a command `unitPrice` may be omitted (0); the `OrderPlaced` event always
/// carries it, so the total can be recomputed from the event alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_id: String,
    pub quantity: u64,
    #[serde(default)]
    pub unit_price: f64,
}

/// No fields: the payload is `{}`. A braced struct, not a unit struct, because serde reads a unit
/// struct from `null` only, and serializes it as `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfirmOrder {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShipOrder {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelOrder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum OrderEvent {
    OrderPlaced(OrderPlaced),
    OrderConfirmed(OrderConfirmed),
    OrderShipped(OrderShipped),
    OrderCancelled(OrderCancelled),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    /// Sum of `quantity * unitPrice` over the items.
    pub total: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {}

/// The order's customer and total are repeated from `OrderPlaced` (absent from events older
/// than that).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "PlaceOrder",
        creates: true,
        schema: include_str!("../schemas/commands/PlaceOrder.json"),
    },
    CommandSpec {
        name: "ConfirmOrder",
        creates: false,
        schema: include_str!("../schemas/commands/ConfirmOrder.json"),
    },
    CommandSpec {
        name: "ShipOrder",
        creates: false,
        schema: include_str!("../schemas/commands/ShipOrder.json"),
    },
    CommandSpec {
        name: "CancelOrder",
        creates: false,
        schema: include_str!("../schemas/commands/CancelOrder.json"),
    },
];

const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "OrderPlaced",
        schema_version: 1,
        schema: include_str!("../schemas/events/OrderPlaced.v1.json"),
    },
    EventSpec {
        name: "OrderConfirmed",
        schema_version: 1,
        schema: include_str!("../schemas/events/OrderConfirmed.v1.json"),
    },
    EventSpec {
        name: "OrderShipped",
        schema_version: 1,
        schema: include_str!("../schemas/events/OrderShipped.v1.json"),
    },
    EventSpec {
        name: "OrderCancelled",
        schema_version: 1,
        schema: include_str!("../schemas/events/OrderCancelled.v1.json"),
    },
];

impl Aggregate for Order {
    const KIND: &'static str = "Order";
    /// 2: the state holds the customer and total.
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        let event = match command {
            OrderCommand::PlaceOrder(place) => OrderEvent::OrderPlaced(self.place(place)?),
            OrderCommand::ConfirmOrder(ConfirmOrder {}) => match self.existing()? {
                OrderStatus::Placed => OrderEvent::OrderConfirmed(OrderConfirmed {}),
                status => {
                    return Err(DomainError::rule(format!(
                        "order is {status}; only a PLACED order can be confirmed"
                    )));
                }
            },
            OrderCommand::ShipOrder(ShipOrder {}) => match self.existing()? {
                OrderStatus::Placed | OrderStatus::Confirmed => OrderEvent::OrderShipped(OrderShipped {}),
                status => {
                    return Err(DomainError::rule(format!(
                        "order is {status}; only a PLACED or CONFIRMED order can be shipped"
                    )));
                }
            },
            OrderCommand::CancelOrder(CancelOrder { reason }) => match self.existing()? {
                OrderStatus::Placed | OrderStatus::Confirmed => OrderEvent::OrderCancelled(OrderCancelled {
                    reason,
                    customer_id: self.customer_id.clone(),
                    total: Some(self.total),
                }),
                OrderStatus::Shipped => {
                    return Err(DomainError::rule("order is SHIPPED and can no longer be cancelled"));
                }
                OrderStatus::Cancelled => return Err(DomainError::rule("order is already CANCELLED")),
            },
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: OrderEvent) {
        self.status = Some(match event {
            OrderEvent::OrderPlaced(placed) => {
                self.customer_id = Some(placed.customer_id);
                self.total = placed.total;
                OrderStatus::Placed
            }
            OrderEvent::OrderConfirmed(_) => OrderStatus::Confirmed,
            OrderEvent::OrderShipped(_) => OrderStatus::Shipped,
            OrderEvent::OrderCancelled(_) => OrderStatus::Cancelled,
        });
    }

    /// Snapshots are the state's serde form; bump `SNAPSHOT_VERSION` when its fields change.
    fn snapshot(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self).ok()
    }

    fn restore(snapshot: serde_json::Value) -> Option<Self> {
        serde_json::from_value(snapshot).ok()
    }
}

impl Order {
    /// The order's status; `None` before it is placed.
    pub fn status(&self) -> Option<OrderStatus> {
        self.status
    }

    fn existing(&self) -> Result<OrderStatus, DomainError> {
        self.status.ok_or_else(|| DomainError::rule("order does not exist"))
    }

    fn place(&self, PlaceOrder { customer_id, items }: PlaceOrder) -> Result<OrderPlaced, DomainError> {
        if self.status.is_some() {
            return Err(DomainError::rule("order already exists"));
        }
        if items.is_empty() {
            return Err(DomainError::rule("an order needs at least one item"));
        }
        for (i, item) in items.iter().enumerate() {
            if item.quantity < 1 {
                return Err(DomainError::rule(format!("items[{i}].quantity must be at least 1")));
            }
            if item.unit_price.is_nan() || item.unit_price < 0.0 {
                return Err(DomainError::rule(format!("items[{i}].unitPrice must not be negative")));
            }
        }
        let total = money::round(items.iter().map(|item| item.quantity as f64 * item.unit_price).sum());
        // A non-finite total would be written as JSON `null` and break every reader of the event.
        if !total.is_finite() {
            return Err(DomainError::rule("order total is too large"));
        }
        Ok(OrderPlaced { customer_id, items, total })
    }
}

/// Orders at or above this total are tagged `high-value`, so searches can facet on big orders.
pub const HIGH_VALUE_TOTAL: f64 = 1000.0;

/// Builds the `orders` read model from the `Order` events.
///
/// Document fields: `customerId`, `items`, `total`, and `cancelReason` when a cancellation gave
/// one. `status` is the order's status; `searchableText` holds the order id, the customer id and
/// the product ids; `tags` is `["high-value"]` when the total is at least [`HIGH_VALUE_TOTAL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OrdersProjection;

impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn handles(&self, event_type: &str) -> bool {
        EVENTS.iter().any(|spec| spec.name == event_type)
    }

    /// Orders by value, and a customer's orders.
    fn list_fields(&self) -> &'static [&'static str] {
        &["total", "customerId"]
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        match read_event::<OrderEvent>(event)? {
            OrderEvent::OrderPlaced(placed) => {
                let items = serde_json::to_value(&placed.items)
                    .map_err(|e| ProjectionError(format!("cannot write the items: {e}")))?;
                doc.status = OrderStatus::Placed.to_string();
                doc.searchable_text = searchable_text(&event.aggregate_id, &placed);
                doc.tags =
                    if placed.total >= HIGH_VALUE_TOTAL { vec!["high-value".to_owned()] } else { vec![] };
                doc.set("customerId", placed.customer_id);
                doc.set("items", items);
                doc.set("total", placed.total);
            }
            OrderEvent::OrderConfirmed(_) => doc.status = OrderStatus::Confirmed.to_string(),
            OrderEvent::OrderShipped(_) => doc.status = OrderStatus::Shipped.to_string(),
            OrderEvent::OrderCancelled(OrderCancelled { reason, .. }) => {
                doc.status = OrderStatus::Cancelled.to_string();
                if let Some(reason) = reason {
                    doc.set("cancelReason", Value::String(reason));
                }
            }
        }
        Ok(())
    }
}

/// The order id, the customer id and each product id once, in order of appearance.
fn searchable_text(order_id: &str, placed: &OrderPlaced) -> String {
    let mut words = vec![order_id, placed.customer_id.as_str()];
    for item in &placed.items {
        if !words.contains(&item.product_id.as_str()) {
            words.push(&item.product_id);
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{check, command, event, stored};

    fn placed() -> Value {
        event(
            "OrderPlaced",
            json!({
                "customerId": "c-1",
                "items": [{"productId": "p-1", "quantity": 2, "unitPrice": 10.5}],
                "total": 21.0
            }),
        )
    }

    fn confirmed() -> Value {
        event("OrderConfirmed", json!({}))
    }

    fn shipped() -> Value {
        event("OrderShipped", json!({}))
    }

    fn cancelled() -> Value {
        event("OrderCancelled", json!({}))
    }

    /// What cancelling the order of `placed()` records.
    fn cancelled_by_c1(reason: Option<&str>) -> Value {
        let mut payload = json!({"customerId": "c-1", "total": 21.0});
        if let Some(reason) = reason {
            payload["reason"] = json!(reason);
        }
        event("OrderCancelled", payload)
    }

    fn place(items: Value) -> Value {
        command("PlaceOrder", json!({"customerId": "c-1", "items": items}))
    }

    #[test]
    fn placing_an_order_totals_its_items() {
        check::<Order>(
            &[],
            place(json!([
                {"productId": "p-1", "quantity": 2, "unitPrice": 10.5},
                {"productId": "p-2", "quantity": 3, "unitPrice": 0.1},
                {"productId": "p-3", "quantity": 1}
            ])),
            Ok(vec![event(
                "OrderPlaced",
                json!({
                    "customerId": "c-1",
                    "items": [
                        {"productId": "p-1", "quantity": 2, "unitPrice": 10.5},
                        {"productId": "p-2", "quantity": 3, "unitPrice": 0.1},
                        {"productId": "p-3", "quantity": 1, "unitPrice": 0.0}
                    ],
                    "total": 21.3
                }),
            )]),
        );
    }

    #[test]
    fn an_order_cannot_be_placed_twice() {
        let again = place(json!([{"productId": "p-1", "quantity": 1}]));
        check::<Order>(&[placed()], again.clone(), Err("order already exists"));
        check::<Order>(&[placed(), cancelled()], again, Err("order already exists"));
    }

    #[test]
    fn an_order_needs_items_with_a_quantity_and_no_negative_price() {
        check::<Order>(&[], place(json!([])), Err("an order needs at least one item"));
        check::<Order>(
            &[],
            place(json!([{"productId": "p-1", "quantity": 1}, {"productId": "p-2", "quantity": 0}])),
            Err("items[1].quantity must be at least 1"),
        );
        check::<Order>(
            &[],
            place(json!([{"productId": "p-1", "quantity": 1, "unitPrice": -1}])),
            Err("items[0].unitPrice must not be negative"),
        );
        check::<Order>(
            &[],
            place(json!([{"productId": "p-1", "quantity": 2, "unitPrice": 1e308}])),
            Err("order total is too large"),
        );
    }

    #[test]
    fn a_placed_order_is_confirmed() {
        let confirm = command("ConfirmOrder", json!({}));
        check::<Order>(&[placed()], confirm.clone(), Ok(vec![confirmed()]));
        check::<Order>(&[], confirm.clone(), Err("order does not exist"));
        check::<Order>(
            &[placed(), confirmed()],
            confirm.clone(),
            Err("order is CONFIRMED; only a PLACED order can be confirmed"),
        );
        check::<Order>(
            &[placed(), shipped()],
            confirm.clone(),
            Err("order is SHIPPED; only a PLACED order can be confirmed"),
        );
        check::<Order>(
            &[placed(), cancelled()],
            confirm,
            Err("order is CANCELLED; only a PLACED order can be confirmed"),
        );
    }

    #[test]
    fn a_placed_or_confirmed_order_is_shipped() {
        let ship = command("ShipOrder", json!({}));
        check::<Order>(&[placed()], ship.clone(), Ok(vec![shipped()]));
        check::<Order>(&[placed(), confirmed()], ship.clone(), Ok(vec![shipped()]));
        check::<Order>(&[], ship.clone(), Err("order does not exist"));
        check::<Order>(
            &[placed(), shipped()],
            ship.clone(),
            Err("order is SHIPPED; only a PLACED or CONFIRMED order can be shipped"),
        );
        check::<Order>(
            &[placed(), cancelled()],
            ship,
            Err("order is CANCELLED; only a PLACED or CONFIRMED order can be shipped"),
        );
    }

    #[test]
    fn an_order_is_cancelled_until_it_ships() {
        let with_reason = command("CancelOrder", json!({"reason": "changed my mind"}));
        let cancelled_with_reason = cancelled_by_c1(Some("changed my mind"));
        check::<Order>(&[placed()], with_reason.clone(), Ok(vec![cancelled_with_reason.clone()]));
        check::<Order>(&[placed(), confirmed()], with_reason.clone(), Ok(vec![cancelled_with_reason]));
        check::<Order>(&[placed()], command("CancelOrder", json!({})), Ok(vec![cancelled_by_c1(None)]));
        check::<Order>(&[], with_reason.clone(), Err("order does not exist"));
        check::<Order>(
            &[placed(), shipped()],
            with_reason.clone(),
            Err("order is SHIPPED and can no longer be cancelled"),
        );
        check::<Order>(&[placed(), cancelled()], with_reason, Err("order is already CANCELLED"));
    }

    #[test]
    fn commands_without_fields_read_from_an_empty_object() {
        for name in ["ConfirmOrder", "ShipOrder", "CancelOrder"] {
            let parsed: Result<OrderCommand, _> = serde_json::from_value(command(name, json!({})));
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
        }
        let confirmed = serde_json::to_value(OrderEvent::OrderConfirmed(OrderConfirmed {})).unwrap();
        assert_eq!(confirmed, event("OrderConfirmed", json!({})));
    }

    fn project(events: &[DomainEvent]) -> ReadDocument {
        let mut doc = ReadDocument::empty("o-1", "o-1");
        for e in events {
            assert!(OrdersProjection.handles(&e.event_type), "{}", e.event_type);
            OrdersProjection.apply(&mut doc, e).unwrap();
        }
        doc
    }

    #[test]
    fn the_read_model_follows_the_order() {
        let placed = stored(
            "o-1",
            1,
            "OrderPlaced",
            json!({
                "customerId": "c-1",
                "items": [
                    {"productId": "p-1", "quantity": 2, "unitPrice": 400.0},
                    {"productId": "p-2", "quantity": 1, "unitPrice": 200.0},
                    {"productId": "p-1", "quantity": 1, "unitPrice": 400.0}
                ],
                "total": 1400.0
            }),
        );
        let doc = project(std::slice::from_ref(&placed));
        assert_eq!(doc.status, "PLACED");
        assert_eq!(doc.searchable_text, "o-1 c-1 p-1 p-2");
        assert_eq!(doc.tags, ["high-value"]);
        assert_eq!(doc.fields["customerId"], "c-1");
        assert_eq!(doc.fields["items"], placed.payload["items"]);
        assert_eq!(doc.fields["total"], 1400.0);

        let confirmed = stored("o-1", 2, "OrderConfirmed", json!({}));
        let doc = project(&[placed.clone(), confirmed.clone()]);
        assert_eq!(doc.status, "CONFIRMED");

        let doc = project(&[placed.clone(), confirmed.clone(), stored("o-1", 3, "OrderShipped", json!({}))]);
        assert_eq!(doc.status, "SHIPPED");

        let cancelled = stored("o-1", 3, "OrderCancelled", json!({"reason": "too slow"}));
        let doc = project(&[placed, confirmed, cancelled]);
        assert_eq!(doc.status, "CANCELLED");
        assert_eq!(doc.fields["cancelReason"], "too slow");
        assert_eq!(doc.fields["total"], 1400.0, "cancelling keeps the order's fields");
    }

    #[test]
    fn small_orders_are_not_tagged_and_a_reasonless_cancel_sets_no_reason() {
        let placed = stored(
            "o-1",
            1,
            "OrderPlaced",
            json!({"customerId": "c-1", "items": [{"productId": "p-1", "quantity": 1, "unitPrice": 999.99}], "total": 999.99}),
        );
        let doc = project(&[placed, stored("o-1", 2, "OrderCancelled", json!({}))]);
        assert!(doc.tags.is_empty());
        assert!(!doc.fields.contains_key("cancelReason"));
    }

    #[test]
    fn the_projection_ignores_other_events_and_refuses_unreadable_ones() {
        assert!(!OrdersProjection.handles("UserRegistered"));
        let mut doc = ReadDocument::empty("o-1", "o-1");
        let broken = stored("o-1", 1, "OrderPlaced", json!({"customerId": 7}));
        assert!(OrdersProjection.apply(&mut doc, &broken).is_err());
    }
}
