//! Payments: an account (aggregate id = account id) with a credit limit, charged and refunded per
//! order.

use std::collections::BTreeMap;

use nexus_core::{Aggregate, CommandSpec, DomainError, EventSpec};
use serde::{Deserialize, Serialize};

use crate::money;

/// An account's credit: the limit, and the charge of each order.
///
/// `outstanding` is the sum of the charges not refunded: a refund frees its credit again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    /// `None` until the account is opened.
    credit_limit: Option<f64>,
    outstanding: f64,
    /// Order id → its charge. A BTreeMap so the state's `Debug` output is deterministic.
    charges: BTreeMap<String, Charge>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Charge {
    amount: f64,
    refunded: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "commandType", content = "payload")]
pub enum AccountCommand {
    OpenAccount(OpenAccount),
    ChargePayment(ChargePayment),
    RefundPayment(RefundPayment),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenAccount {
    pub credit_limit: f64,
}

/// One charge per order: a second charge for an order already charged (and not refunded) is
/// refused, so a retried request cannot bill twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargePayment {
    pub order_id: String,
    pub amount: f64,
}

/// Refunds the order's whole charge (the compensation of its `ChargePayment`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayment {
    pub order_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "payload")]
pub enum AccountEvent {
    AccountOpened(AccountOpened),
    PaymentCharged(PaymentCharged),
    PaymentRefunded(PaymentRefunded),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountOpened {
    pub credit_limit: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCharged {
    pub order_id: String,
    pub amount: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRefunded {
    pub order_id: String,
    pub amount: f64,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "OpenAccount",
        creates: true,
        schema: include_str!("../schemas/commands/OpenAccount.json"),
    },
    CommandSpec {
        name: "ChargePayment",
        creates: false,
        schema: include_str!("../schemas/commands/ChargePayment.json"),
    },
    CommandSpec {
        name: "RefundPayment",
        creates: false,
        schema: include_str!("../schemas/commands/RefundPayment.json"),
    },
];

const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "AccountOpened",
        schema_version: 1,
        schema: include_str!("../schemas/events/AccountOpened.v1.json"),
    },
    EventSpec {
        name: "PaymentCharged",
        schema_version: 1,
        schema: include_str!("../schemas/events/PaymentCharged.v1.json"),
    },
    EventSpec {
        name: "PaymentRefunded",
        schema_version: 1,
        schema: include_str!("../schemas/events/PaymentRefunded.v1.json"),
    },
];

impl Aggregate for Account {
    const KIND: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;

    fn commands() -> &'static [CommandSpec] {
        COMMANDS
    }

    fn events() -> &'static [EventSpec] {
        EVENTS
    }

    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, DomainError> {
        let event = match command {
            AccountCommand::OpenAccount(OpenAccount { credit_limit }) => {
                if self.credit_limit.is_some() {
                    return Err(DomainError::rule("account is already open"));
                }
                if !(credit_limit.is_finite() && credit_limit >= 0.0) {
                    return Err(DomainError::rule("creditLimit must be a number of at least 0"));
                }
                AccountEvent::AccountOpened(AccountOpened { credit_limit })
            }
            AccountCommand::ChargePayment(ChargePayment { order_id, amount }) => {
                let credit_limit = self.open_limit()?;
                if !(amount.is_finite() && amount > 0.0) {
                    return Err(DomainError::rule("amount must be greater than 0"));
                }
                if self.charges.get(&order_id).is_some_and(|charge| !charge.refunded) {
                    return Err(DomainError::rule(format!("order {order_id} is already charged")));
                }
                if money::round(self.outstanding + amount) > credit_limit {
                    return Err(DomainError::rule(format!(
                        "charge of {amount} exceeds the credit limit: {} of {credit_limit} already charged",
                        self.outstanding
                    )));
                }
                AccountEvent::PaymentCharged(PaymentCharged { order_id, amount })
            }
            AccountCommand::RefundPayment(RefundPayment { order_id }) => {
                self.open_limit()?;
                match self.charges.get(&order_id) {
                    None => {
                        return Err(DomainError::rule(format!("order {order_id} has no charge to refund")));
                    }
                    Some(charge) if charge.refunded => {
                        return Err(DomainError::rule(format!("order {order_id} is already refunded")));
                    }
                    Some(charge) => {
                        AccountEvent::PaymentRefunded(PaymentRefunded { order_id, amount: charge.amount })
                    }
                }
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened(AccountOpened { credit_limit }) => {
                self.credit_limit = Some(credit_limit)
            }
            AccountEvent::PaymentCharged(PaymentCharged { order_id, amount }) => {
                self.outstanding = money::round(self.outstanding + amount);
                self.charges.insert(order_id, Charge { amount, refunded: false });
            }
            AccountEvent::PaymentRefunded(PaymentRefunded { order_id, amount }) => {
                self.outstanding = money::round(self.outstanding - amount);
                if let Some(charge) = self.charges.get_mut(&order_id) {
                    charge.refunded = true;
                }
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

impl Account {
    /// The credit limit of an open account.
    fn open_limit(&self) -> Result<f64, DomainError> {
        self.credit_limit.ok_or_else(|| DomainError::rule("account is not open"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{check, command, event};

    fn opened(credit_limit: f64) -> Value {
        event("AccountOpened", json!({"creditLimit": credit_limit}))
    }

    fn charged(order_id: &str, amount: f64) -> Value {
        event("PaymentCharged", json!({"orderId": order_id, "amount": amount}))
    }

    fn refunded(order_id: &str, amount: f64) -> Value {
        event("PaymentRefunded", json!({"orderId": order_id, "amount": amount}))
    }

    fn charge(order_id: &str, amount: f64) -> Value {
        command("ChargePayment", json!({"orderId": order_id, "amount": amount}))
    }

    fn refund(order_id: &str) -> Value {
        command("RefundPayment", json!({"orderId": order_id}))
    }

    #[test]
    fn an_account_opens_once_with_a_limit_of_at_least_zero() {
        check::<Account>(&[], command("OpenAccount", json!({"creditLimit": 100})), Ok(vec![opened(100.0)]));
        check::<Account>(&[], command("OpenAccount", json!({"creditLimit": 0})), Ok(vec![opened(0.0)]));
        check::<Account>(
            &[],
            command("OpenAccount", json!({"creditLimit": -1})),
            Err("creditLimit must be a number of at least 0"),
        );
        check::<Account>(
            &[opened(100.0)],
            command("OpenAccount", json!({"creditLimit": 50})),
            Err("account is already open"),
        );
    }

    #[test]
    fn charges_stay_within_the_credit_limit() {
        check::<Account>(&[opened(100.0)], charge("o-1", 100.0), Ok(vec![charged("o-1", 100.0)]));
        check::<Account>(
            &[opened(100.0), charged("o-1", 80.0)],
            charge("o-2", 30.0),
            Err("charge of 30 exceeds the credit limit: 80 of 100 already charged"),
        );
        // 0.1 + 0.2 is 0.30000000000000004 in binary floating point: still within a 0.3 limit.
        check::<Account>(
            &[opened(0.3), charged("o-1", 0.1)],
            charge("o-2", 0.2),
            Ok(vec![charged("o-2", 0.2)]),
        );
        // A refund frees its credit.
        check::<Account>(
            &[opened(100.0), charged("o-1", 80.0), refunded("o-1", 80.0)],
            charge("o-2", 100.0),
            Ok(vec![charged("o-2", 100.0)]),
        );
    }

    #[test]
    fn a_charge_needs_an_open_account_a_positive_amount_and_an_uncharged_order() {
        check::<Account>(&[], charge("o-1", 10.0), Err("account is not open"));
        check::<Account>(&[opened(100.0)], charge("o-1", 0.0), Err("amount must be greater than 0"));
        check::<Account>(&[opened(100.0)], charge("o-1", -5.0), Err("amount must be greater than 0"));
        check::<Account>(
            &[opened(100.0), charged("o-1", 10.0)],
            charge("o-1", 10.0),
            Err("order o-1 is already charged"),
        );
        check::<Account>(
            &[opened(100.0), charged("o-1", 10.0), refunded("o-1", 10.0)],
            charge("o-1", 10.0),
            Ok(vec![charged("o-1", 10.0)]),
        );
    }

    #[test]
    fn a_refund_returns_the_orders_charge_once() {
        let given = [opened(100.0), charged("o-1", 25.5)];
        check::<Account>(&given, refund("o-1"), Ok(vec![refunded("o-1", 25.5)]));
        check::<Account>(&given, refund("o-2"), Err("order o-2 has no charge to refund"));
        check::<Account>(
            &[opened(100.0), charged("o-1", 25.5), refunded("o-1", 25.5)],
            refund("o-1"),
            Err("order o-1 is already refunded"),
        );
        check::<Account>(&[], refund("o-1"), Err("account is not open"));
    }
}
