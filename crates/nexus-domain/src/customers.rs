//! The `customers` read model: one document per customer, fed by the events of all their orders.
//!
//! It is the reference domain's read model keyed by something other than the aggregate: an
//! `OrderPlaced` of any order changes the document of its customer. The runtime applies each
//! event to it exactly once (the document records the store position of the last event applied),
//! whatever path or replay brought the event.

use nexus_core::{DomainEvent, Keying, Projection, ProjectionError, ReadDocument};

use crate::orders::{OrderCancelled, OrderEvent};
use crate::{money, read_event};

/// Builds `customers`: `{id, customerId, orderCount, totalSpent, lastOrderAt}`.
///
/// `OrderPlaced` adds one order and its total; `OrderCancelled` subtracts the order's total and
/// keeps the count (the customer did order). `status` is `ACTIVE`; `searchableText` is the
/// customer id.
#[derive(Clone, Copy, Debug, Default)]
pub struct CustomersProjection;

impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        "customers"
    }

    fn handles(&self, event_type: &str) -> bool {
        matches!(event_type, "OrderPlaced" | "OrderCancelled")
    }

    fn keying(&self) -> Keying {
        Keying::Custom
    }

    /// The customer of the order. A cancellation recorded before cancellations named their
    /// customer changes no document.
    fn document_ids(&self, event: &DomainEvent) -> Vec<String> {
        match event.payload.get("customerId").and_then(|id| id.as_str()) {
            Some(customer) => vec![customer.to_owned()],
            None => Vec::new(),
        }
    }

    /// Customers by spend or by number of orders.
    fn list_fields(&self) -> &'static [&'static str] {
        &["totalSpent", "orderCount"]
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let count = doc.fields.get("orderCount").and_then(|n| n.as_u64()).unwrap_or(0);
        let spent = doc.fields.get("totalSpent").and_then(|n| n.as_f64()).unwrap_or(0.0);
        match read_event::<OrderEvent>(event)? {
            OrderEvent::OrderPlaced(placed) => {
                doc.status = "ACTIVE".to_owned();
                doc.searchable_text.clone_from(&doc.id);
                doc.set("customerId", doc.id.clone());
                doc.set("orderCount", count + 1);
                doc.set("totalSpent", money::round(spent + placed.total));
                doc.set("lastOrderAt", event.timestamp.clone());
            }
            OrderEvent::OrderCancelled(OrderCancelled { total, .. }) => {
                doc.set("totalSpent", money::round(spent - total.unwrap_or(0.0)));
            }
            OrderEvent::OrderConfirmed(_) | OrderEvent::OrderShipped(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::stored;

    fn placed(order: &str, customer: &str, total: f64) -> DomainEvent {
        let items = json!([{"productId": "p-1", "quantity": 1, "unitPrice": total}]);
        stored(order, 1, "OrderPlaced", json!({"customerId": customer, "items": items, "total": total}))
    }

    #[test]
    fn a_customer_counts_orders_and_spend_across_orders() {
        let projection = CustomersProjection;
        let mut doc = ReadDocument::empty("c-1", "c-1");
        for event in [placed("o-1", "c-1", 10.5), placed("o-2", "c-1", 0.2), placed("o-3", "c-1", 0.1)] {
            assert_eq!(projection.document_ids(&event), ["c-1"]);
            projection.apply(&mut doc, &event).unwrap();
        }
        let cancelled = stored("o-2", 2, "OrderCancelled", json!({"customerId": "c-1", "total": 0.2}));
        projection.apply(&mut doc, &cancelled).unwrap();
        assert_eq!(doc.fields["orderCount"], 3);
        assert_eq!(doc.fields["totalSpent"], 10.6);
        assert_eq!(doc.fields["customerId"], "c-1");
        assert_eq!(doc.fields["lastOrderAt"], "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_cancellation_without_its_customer_touches_no_document() {
        let old = stored("o-1", 2, "OrderCancelled", json!({"reason": "too slow"}));
        assert!(CustomersProjection.document_ids(&old).is_empty());
        assert!(!CustomersProjection.handles("OrderShipped"));
    }
}
