//! Order fulfillment: the reference saga as code. An `OrderPlaced` starts it: reserve the stock of
//! each product, charge the customer's account, confirm the order. When a step fails, the runtime
//! compensates the completed ones in reverse (release the stock, refund the charge), and this
//! process manager then cancels the order with the reason.

use nexus_core::{
    DomainEvent, ProcessError, ProcessManager, SagaDefinition, SagaMetadata, SagaOutcome, SagaStatus,
    SagaStep, StepCommand, derived_id,
};
use serde_json::json;

use crate::orders::{OrderEvent, OrderPlaced};
use crate::read_event;

/// The `OrderFulfillment` saga, one per placed order (saga id `fulfillment:<orderId>`).
///
/// Steps, in order: `reserve-1` … `reserve-n` (`ReserveStock {orderId, quantity}` on each product,
/// lines of one product summed, compensated by `ReleaseStock {orderId}`); `charge`
/// (`ChargePayment {orderId, amount: total}` on the account whose id is the order's `customerId`,
/// compensated by `RefundPayment {orderId}`; left out for an order whose total is 0); `confirm`
/// (`ConfirmOrder` on the order). Once compensated or failed: `CancelOrder {reason}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderFulfillment;

impl OrderFulfillment {
    pub const NAME: &'static str = "order-fulfillment";
    pub const SAGA_TYPE: &'static str = "OrderFulfillment";

    /// The saga id of an order's fulfillment.
    pub fn saga_id(order_id: &str) -> String {
        derived_id(&["fulfillment", order_id])
    }

    /// The saga an order's `OrderPlaced` starts.
    pub fn saga(order_id: &str, placed: &OrderPlaced) -> SagaDefinition {
        // One reservation per product: `ReleaseStock` releases everything the order holds of a
        // product, so two reservations of one product could not be compensated one by one.
        let mut per_product: Vec<(&str, u64)> = Vec::new();
        for item in &placed.items {
            match per_product.iter_mut().find(|(product, _)| *product == item.product_id) {
                Some((_, quantity)) => *quantity = quantity.saturating_add(item.quantity),
                None => per_product.push((&item.product_id, item.quantity)),
            }
        }
        let mut steps: Vec<SagaStep> = per_product
            .iter()
            .enumerate()
            .map(|(i, (product, quantity))| SagaStep {
                step_id: format!("reserve-{}", i + 1),
                command: StepCommand::new(
                    "ReserveStock",
                    *product,
                    json!({"orderId": order_id, "quantity": quantity}),
                ),
                compensating_command: Some(StepCommand::new(
                    "ReleaseStock",
                    *product,
                    json!({"orderId": order_id}),
                )),
                timeout_ms: None,
            })
            .collect();
        if placed.total > 0.0 {
            steps.push(SagaStep {
                step_id: "charge".into(),
                command: StepCommand::new(
                    "ChargePayment",
                    &placed.customer_id,
                    json!({"orderId": order_id, "amount": placed.total}),
                ),
                compensating_command: Some(StepCommand::new(
                    "RefundPayment",
                    &placed.customer_id,
                    json!({"orderId": order_id}),
                )),
                timeout_ms: None,
            });
        }
        steps.push(SagaStep {
            step_id: CONFIRM.into(),
            command: StepCommand::new("ConfirmOrder", order_id, json!({})),
            compensating_command: None,
            timeout_ms: None,
        });
        SagaDefinition {
            saga_id: Self::saga_id(order_id),
            saga_type: Self::SAGA_TYPE.into(),
            steps,
            metadata: SagaMetadata { correlation_id: Some(order_id.to_owned()), user_id: None },
        }
    }
}

const CONFIRM: &str = "confirm";

impl ProcessManager for OrderFulfillment {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn saga_type(&self) -> &'static str {
        Self::SAGA_TYPE
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type == "OrderPlaced"
    }

    /// Off unless `[process-managers] order-fulfillment = true`: it changes what placing an
    /// order does (more writes, orders cancelled when stock or credit is missing), which a
    /// service that only wants the order log must not get by surprise.
    fn runs_by_default(&self) -> bool {
        false
    }

    fn start(&self, event: &DomainEvent) -> Result<Option<SagaDefinition>, ProcessError> {
        match read_event::<OrderEvent>(event).map_err(|e| ProcessError(e.0))? {
            OrderEvent::OrderPlaced(placed) => Ok(Some(Self::saga(&event.aggregate_id, &placed))),
            _ => Ok(None),
        }
    }

    fn ended(&self, saga: &SagaDefinition, outcome: &SagaOutcome) -> Vec<StepCommand> {
        if !matches!(outcome.status, SagaStatus::Compensated | SagaStatus::Failed) {
            return Vec::new();
        }
        let Some(confirm) = saga.steps.iter().find(|step| step.step_id == CONFIRM) else { return Vec::new() };
        let reason = outcome.error.clone().unwrap_or_else(|| "order fulfillment failed".into());
        vec![StepCommand::new("CancelOrder", &confirm.command.aggregate_id, json!({"reason": reason}))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::stored;

    fn placed(items: serde_json::Value, total: f64) -> DomainEvent {
        stored("o-1", 1, "OrderPlaced", json!({"customerId": "c-1", "items": items, "total": total}))
    }

    #[test]
    fn an_order_reserves_each_product_once_then_charges_then_confirms() {
        let event = placed(
            json!([
                {"productId": "p-1", "quantity": 2, "unitPrice": 5.0},
                {"productId": "p-2", "quantity": 1, "unitPrice": 10.0},
                {"productId": "p-1", "quantity": 1, "unitPrice": 5.0}
            ]),
            25.0,
        );
        assert!(OrderFulfillment.handles("OrderPlaced"));
        let saga = OrderFulfillment.start(&event).unwrap().unwrap();
        assert_eq!(saga.saga_id, "fulfillment:o-1");
        assert_eq!(saga.saga_type, "OrderFulfillment");
        let steps: Vec<_> = saga
            .steps
            .iter()
            .map(|s| (s.step_id.as_str(), s.command.command_type.as_str(), s.command.aggregate_id.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("reserve-1", "ReserveStock", "p-1"),
                ("reserve-2", "ReserveStock", "p-2"),
                ("charge", "ChargePayment", "c-1"),
                ("confirm", "ConfirmOrder", "o-1")
            ]
        );
        assert_eq!(saga.steps[0].command.payload, json!({"orderId": "o-1", "quantity": 3}));
        assert_eq!(saga.steps[0].compensating_command.as_ref().unwrap().command_type, "ReleaseStock");
        assert_eq!(saga.steps[2].command.payload, json!({"orderId": "o-1", "amount": 25.0}));
        assert_eq!(saga.steps[2].compensating_command.as_ref().unwrap().command_type, "RefundPayment");
        assert!(saga.steps[3].compensating_command.is_none());
        assert_eq!(OrderFulfillment.start(&event).unwrap(), Some(saga), "deterministic");
    }

    #[test]
    fn a_free_order_is_not_charged() {
        let saga = OrderFulfillment
            .start(&placed(json!([{"productId": "p-1", "quantity": 1, "unitPrice": 0.0}]), 0.0));
        let ids: Vec<_> = saga.unwrap().unwrap().steps.into_iter().map(|s| s.step_id).collect();
        assert_eq!(ids, ["reserve-1", "confirm"]);
    }

    #[test]
    fn a_failed_fulfillment_cancels_the_order_with_the_reason() {
        let saga = OrderFulfillment
            .start(&placed(json!([{"productId": "p-1", "quantity": 1, "unitPrice": 1.0}]), 1.0));
        let saga = saga.unwrap().unwrap();
        let failed = SagaOutcome {
            status: SagaStatus::Compensated,
            error: Some("step reserve-1 failed: short".into()),
        };
        assert_eq!(
            OrderFulfillment.ended(&saga, &failed),
            [StepCommand::new("CancelOrder", "o-1", json!({"reason": "step reserve-1 failed: short"}))]
        );
        let completed = SagaOutcome { status: SagaStatus::Completed, error: None };
        assert!(OrderFulfillment.ended(&saga, &completed).is_empty());
    }
}
