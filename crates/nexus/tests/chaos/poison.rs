//! A poison event: a projection written on the public API fails on one chosen event. The event
//! is parked in the dead-letter queue as `projection:{name}` after 5 attempts, later events keep
//! flowing into the read model, and once the fault is cleared the dead letter's retry applies it
//! exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nexus_core::{DomainEvent, Projection, ProjectionError, ReadDocument};
use nexus_server::testing::TestServer;
use serde_json::{Value, json};

/// Every order event, listed by id in its order's document; fails on the `OrderPlaced` of
/// customer [`POISON`] while `fault` is on, counting the attempts.
struct Ledger {
    fault: Arc<AtomicBool>,
    attempts: Arc<AtomicU32>,
}

const POISON: &str = "poison-customer";

impl Projection for Ledger {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type.starts_with("Order")
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        if event.payload["customerId"] == POISON && event.event_type == "OrderPlaced" {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.fault.load(Ordering::SeqCst) {
                return Err(ProjectionError(format!("cannot apply {} (the fault is on)", event.event_id)));
            }
        }
        let mut applied = doc.fields.get("applied").and_then(Value::as_array).cloned().unwrap_or_default();
        applied.push(json!(event.event_id));
        doc.set("applied", applied);
        doc.status = event.event_type.clone();
        Ok(())
    }
}

fn order(customer: &str) -> Value {
    json!({"customerId": customer, "items": [{"productId": "p", "quantity": 1, "unitPrice": 5}]})
}

async fn dead_letters(server: &TestServer) -> Vec<Value> {
    let list = server.get("/api/admin/dlq").await;
    assert_eq!(list.status, 200, "{}", list.body);
    list.body["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_after_5_attempts_and_its_retry_applies_it_once() {
    let started = Instant::now();
    let fault = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(AtomicU32::new(0));
    let ledger = Ledger { fault: fault.clone(), attempts: attempts.clone() };
    let server = TestServer::start_with(nexus_domain::domain().projection(ledger), |config| {
        config.queue.retry_base_ms = 20; // 20, 40, 80, 160 ms between the 5 attempts
    })
    .await;

    let before = server.accepted("PlaceOrder", order("c-before")).await;
    let poison = server.accepted("PlaceOrder", order(POISON)).await;
    let poison_id = poison["aggregateId"].as_str().unwrap().to_owned();
    let poison_event = poison["eventIds"][0].as_str().unwrap().to_owned();
    // The poison order goes on: its next event reaches the ledger while the first is parked.
    let shipped = server.accepted("ShipOrder", json!({"aggregateId": poison_id})).await;
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(server.accepted("PlaceOrder", order(&format!("c-after-{i}"))).await);
    }

    // Later events flow: every order after the poison one is in the ledger.
    let last = after.last().unwrap()["position"].as_u64().unwrap();
    for placed in after.iter().chain([&before]) {
        let id = placed["aggregateId"].as_str().unwrap();
        let doc = server.get(&format!("/api/queries/ledger/{id}?minPosition={last}")).await;
        assert_eq!(doc.status, 200, "{}", doc.body);
        assert_eq!(doc.body["applied"].as_array().unwrap().len(), 1);
    }

    // Parked: one dead letter for the projection, after exactly 5 attempts.
    let deadline = Instant::now() + Duration::from_secs(20);
    let letter = loop {
        let letters = dead_letters(&server).await;
        if let Some(letter) = letters.iter().find(|l| l["consumer"] == "projection:ledger") {
            break letter.clone();
        }
        assert!(Instant::now() < deadline, "the poison event was not parked: {letters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letter["eventId"], poison_event);
    assert!(letter["failureReason"].as_str().unwrap().starts_with("PROJECTION: "), "{letter}");
    let parked_after = attempts.load(Ordering::SeqCst);
    assert_eq!(parked_after, 5, "parked after the 5th attempt");
    let doc = server.get(&format!("/api/queries/ledger/{poison_id}?minPosition={last}")).await;
    assert_eq!(doc.body["applied"], json!([shipped["eventIds"][0]]), "the rest of the order went on");

    // A retry while the fault is still on changes nothing, and the letter stays waiting.
    let id = letter["id"].as_str().unwrap();
    let refused = server.http.post(server.url(&format!("/api/admin/dlq/{id}/retry"))).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(dead_letters(&server).await.len(), 1);

    // Cleared: the retry applies it, once.
    fault.store(false, Ordering::SeqCst);
    let retried = server.http.post(server.url(&format!("/api/admin/dlq/{id}/retry"))).send().await.unwrap();
    assert_eq!(retried.status(), 200);
    let again = server.http.post(server.url(&format!("/api/admin/dlq/{id}/retry"))).send().await.unwrap();
    assert_eq!(again.status(), 404, "archived once applied");
    assert!(dead_letters(&server).await.is_empty());
    let doc = server.get(&format!("/api/queries/ledger/{poison_id}")).await;
    let applied = doc.body["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 2, "{}", doc.body);
    assert_eq!(applied.iter().filter(|e| **e == json!(poison_event)).count(), 1);
    assert_eq!(doc.body["version"], 2, "the version stays the order's");

    // Still exactly once after a restart (nothing replays the parked event).
    let dir = server.stop().await;
    let domain = nexus_domain::domain().projection(Ledger { fault, attempts: attempts.clone() });
    let server = TestServer::start_in(domain, dir).await;
    let next = server.accepted("PlaceOrder", order("c-late")).await;
    let position = next["position"].as_u64().unwrap();
    let doc = server.get(&format!("/api/queries/ledger/{poison_id}?minPosition={position}")).await;
    assert_eq!(doc.body["applied"].as_array().unwrap().len(), 2, "{}", doc.body);
    eprintln!(
        "poison: 9 commands (one after a restart), 1 event parked after {parked_after} attempts, later events applied, a retry \
         refused while the fault was on, then applied once, {:?}",
        started.elapsed()
    );
    server.stop().await;
}
