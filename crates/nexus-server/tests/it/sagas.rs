//! Sagas over HTTP (contract §6) against real servers on the embedded store: sagas as data through
//! `POST /api/sagas`, and the reference `OrderFulfillment` process manager both ways.

use std::time::{Duration, Instant};

use crate::support::{Reply, TestServer};
use serde_json::{Value, json};

/// A server with short retries, so failing sagas end in milliseconds.
async fn server(order_fulfillment: bool, step_delay_ms: u64) -> TestServer {
    TestServer::start_with(|config| {
        config.sagas.retry_base_ms = 5;
        config.sagas.step_attempts = 2;
        config.sagas.compensation_attempts = 3;
        config.sagas.step_delay_ms = step_delay_ms;
        config.process_managers.insert("order-fulfillment".into(), order_fulfillment);
    })
    .await
}

async fn post_saga(server: &TestServer, body: Value) -> Reply {
    Reply::read(server.http.post(server.url("/api/sagas")).json(&body).send().await.expect("POST saga")).await
}

async fn started(server: &TestServer, body: Value) -> String {
    let reply = post_saga(server, body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["sagaId"].as_str().expect("sagaId").to_owned()
}

/// Polls the status until the saga has ended.
async fn ended(server: &TestServer, saga_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = server.get(&format!("/api/sagas/{saga_id}/status")).await;
        if reply.status == 200
            && ["COMPLETED", "COMPENSATED", "FAILED"].contains(&reply.body["status"].as_str().unwrap())
        {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "saga {saga_id} did not end: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the `orders` read model until the order has `status`.
async fn order_becomes(server: &TestServer, order_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = server.get(&format!("/api/queries/orders/{order_id}")).await;
        if reply.status == 200 && reply.body["status"] == status {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "order {order_id} did not become {status}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn types(server: &TestServer, aggregate_id: &str) -> Vec<String> {
    server.events_of(aggregate_id).await.iter().map(|e| e["eventType"].as_str().unwrap().to_owned()).collect()
}

fn cmd(command_type: &str, aggregate_id: &str, payload: Value) -> Value {
    json!({"commandType": command_type, "aggregateId": aggregate_id, "payload": payload})
}

fn reserve(step_id: &str, product: &str, quantity: u64) -> Value {
    json!({
        "stepId": step_id,
        "command": cmd("ReserveStock", product, json!({"orderId": "o-1", "quantity": quantity})),
        "compensatingCommand": cmd("ReleaseStock", product, json!({"orderId": "o-1"}))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_posted_over_http_completes_and_reports_its_status() {
    let server = server(false, 0).await;
    let steps: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|p| json!({"stepId": p, "command": cmd("AddStock", &format!("h-{p}"), json!({"quantity": 2}))}))
        .collect();
    let id = started(&server, json!({"sagaType": "Restock", "steps": steps})).await;
    // Readable at once (folded from its events until the read model has it), then complete.
    let first = server.get(&format!("/api/sagas/{id}/status")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let status = ended(&server, &id).await;
    assert_eq!(status["sagaId"], id.as_str());
    assert_eq!(status["sagaType"], "Restock");
    assert_eq!(status["status"], "COMPLETED");
    assert_eq!(status["currentStep"], 3);
    assert_eq!(status["completedSteps"], json!(["a", "b", "c"]));
    assert!(status.get("error").is_none(), "{status}");
    assert_eq!(
        types(&server, &id).await,
        ["SagaStarted", "SagaStepCompleted", "SagaStepCompleted", "SagaStepCompleted", "SagaCompleted"]
    );
    for p in ["a", "b", "c"] {
        assert_eq!(types(&server, &format!("h-{p}")).await, ["StockAdded"]);
    }
    // The same saga again is accepted and changes nothing; another one under its id is refused.
    let again = post_saga(&server, json!({"sagaId": id, "sagaType": "Restock", "steps": steps})).await;
    assert_eq!(again.status, 202, "{}", again.body);
    let other = post_saga(&server, json!({"sagaId": id, "sagaType": "Restock", "steps": [steps[0]]})).await;
    other.assert_error(409, "IDEMPOTENCY_CONFLICT");
    assert_eq!(types(&server, &id).await.len(), 5);
    server.get("/api/sagas/no-such-saga/status").await.assert_error(404, "NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_saga_is_refused_with_field_paths() {
    let server = server(false, 0).await;
    let reply = post_saga(
        &server,
        json!({
            "sagaType": "Broken",
            "steps": [
                {"stepId": "a", "command": cmd("NoSuchCommand", "x", json!({}))},
                {"stepId": "b", "command": cmd("ReserveStock", "p-1", json!({"quantity": 0})), "timeoutMs": -1},
                {"stepId": "b", "command": {"commandType": "AddStock"}}
            ]
        }),
    )
    .await;
    let fields = reply.error_fields();
    for expected in ["steps[1].timeoutMs", "steps[2].command.aggregateId"] {
        assert!(fields.contains(&expected.to_owned()), "{expected} missing from {fields:?}");
    }
    // Shape first; once the shape is right, the coordinator names what the domain refuses.
    let reply = post_saga(
        &server,
        json!({
            "sagaType": "Broken",
            "steps": [
                {"stepId": "a", "command": cmd("NoSuchCommand", "x", json!({}))},
                {"stepId": "b", "command": cmd("ReserveStock", "p-1", json!({"quantity": 0}))},
                {"stepId": "b", "command": cmd("AddStock", "bad id", json!({"quantity": 1}))}
            ]
        }),
    )
    .await;
    let fields = reply.error_fields();
    for expected in [
        "steps[0].command.commandType",
        "steps[1].command.payload.orderId",
        "steps[1].command.payload.quantity",
        "steps[2].stepId",
        "steps[2].command.aggregateId",
    ] {
        assert!(fields.contains(&expected.to_owned()), "{expected} missing from {fields:?}");
    }
    post_saga(&server, json!({"sagaType": "Empty", "steps": []})).await.assert_error(400, "VALIDATION_ERROR");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_compensates_in_reverse_and_a_failing_compensation_is_listed_for_an_operator() {
    let server = server(false, 0).await;
    for p in ["c-1", "c-2", "c-3"] {
        server.accepted("AddStock", json!({"aggregateId": p, "quantity": 5})).await;
    }
    let id = started(
        &server,
        json!({"sagaType": "Reserve", "steps": [reserve("one", "c-1", 1), reserve("two", "c-2", 1), reserve("three", "c-3", 9)]}),
    )
    .await;
    let status = ended(&server, &id).await;
    assert_eq!(status["status"], "COMPENSATED", "{status}");
    assert!(status["error"].as_str().unwrap().contains("insufficient stock"), "{status}");
    assert!(status.get("uncompensatedSteps").is_none(), "absent while every compensation succeeds: {status}");
    let compensated: Vec<Value> = server
        .events_of(&id)
        .await
        .into_iter()
        .filter(|e| e["eventType"] == "SagaStepCompensated")
        .map(|e| e["payload"]["stepId"].clone())
        .collect();
    assert_eq!(compensated, [json!("two"), json!("one")]);
    assert_eq!(types(&server, "c-2").await, ["StockAdded", "StockReserved", "StockReleased"]);

    // Its compensation releases an order that holds nothing: refused every time.
    let broken = json!({
        "stepId": "one",
        "command": cmd("ReserveStock", "c-1", json!({"orderId": "o-2", "quantity": 1})),
        "compensatingCommand": cmd("ReleaseStock", "c-1", json!({"orderId": "o-none"}))
    });
    let id =
        started(&server, json!({"sagaType": "Reserve", "steps": [broken, reserve("two", "c-3", 9)]})).await;
    let status = ended(&server, &id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    assert!(status["error"].as_str().unwrap().contains("compensation of step one failed after 3 attempts"));

    // The read model catches up; FAILED sagas are listed for manual resolution.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let reply = server.get("/api/admin/sagas?status=FAILED").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["total"] == 1 {
            break reply.body;
        }
        assert!(Instant::now() < deadline, "FAILED saga not listed: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed["items"][0]["sagaId"], id.as_str());
    assert_eq!(listed["items"][0]["status"], "FAILED");
    server.get("/api/admin/sagas?status=BROKEN").await.assert_error(400, "VALIDATION_ERROR");
    let metrics = server.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(
        metrics.lines().any(|l| l.starts_with("nexus_sagas_failed_total{saga_type=\"Reserve\"}")),
        "no failed-saga counter in {metrics}"
    );
    server.stop().await;
}

/// A compensation that keeps failing is recorded and the earlier steps are still compensated;
/// the saga then ends `FAILED`, naming the step a person must undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_compensation_leaves_its_step_uncompensated_and_the_earlier_steps_are_still_compensated() {
    let server = server(false, 0).await;
    for p in ["u-1", "u-2", "u-3"] {
        server.accepted("AddStock", json!({"aggregateId": p, "quantity": 5})).await;
    }
    // Step 2's compensation releases an order that holds nothing: refused every time.
    let step_2 = json!({
        "stepId": "step-2",
        "command": cmd("ReserveStock", "u-2", json!({"orderId": "o-1", "quantity": 1})),
        "compensatingCommand": cmd("ReleaseStock", "u-2", json!({"orderId": "o-none"}))
    });
    let steps = json!([reserve("step-1", "u-1", 1), step_2, reserve("step-3", "u-3", 9)]);
    let id = started(&server, json!({"sagaType": "Uncompensated", "steps": steps})).await;
    let status = ended(&server, &id).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    assert_eq!(status["uncompensatedSteps"], json!(["step-2"]), "{status}");
    assert_eq!(status["compensatedSteps"], json!(["step-1"]), "{status}");
    assert_eq!(status["completedSteps"], json!(["step-1", "step-2"]), "{status}");
    assert_eq!(status["failedStep"], "step-3", "{status}");
    let error = status["error"].as_str().unwrap();
    for part in [
        "left uncompensated: step-2",
        "compensation of step step-2 failed after 3 attempts",
        "has no stock reserved",
        "step step-3 failed",
        "insufficient stock",
    ] {
        assert!(error.contains(part), "{part} missing from {error}");
    }

    // The stream records the failed compensation before step 1's, which ran.
    let events = server.events_of(&id).await;
    let outcomes: Vec<(&str, &str, bool)> = events
        .iter()
        .skip(1)
        .map(|e| {
            let compensation = e["payload"]["compensation"].as_bool().unwrap_or(false);
            (e["eventType"].as_str().unwrap(), e["payload"]["stepId"].as_str().unwrap_or(""), compensation)
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("SagaStepCompleted", "step-1", false),
            ("SagaStepCompleted", "step-2", false),
            ("SagaStepFailed", "step-3", false),
            ("SagaStepFailed", "step-2", true),
            ("SagaStepCompensated", "step-1", false),
            ("SagaFailed", "step-2", false),
        ]
    );
    let failed_compensation = &events[4];
    assert_eq!(failed_compensation["payload"]["reason"], "REJECTED");
    assert_eq!(failed_compensation["payload"]["attempts"], 3);
    assert_eq!(failed_compensation["metadata"]["schemaVersion"], "2");
    assert_eq!(types(&server, "u-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    assert_eq!(types(&server, "u-2").await, ["StockAdded", "StockReserved"], "left for a person");
    assert_eq!(types(&server, "u-3").await, ["StockAdded"]);

    // The operator's list carries the same status once the read model caught up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = server.get("/api/admin/sagas?status=FAILED&sagaType=Uncompensated").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["total"] == 1 {
            assert_eq!(reply.body["items"][0]["uncompensatedSteps"], json!(["step-2"]), "{}", reply.body);
            break;
        }
        assert!(Instant::now() < deadline, "FAILED saga not listed: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

async fn place(server: &TestServer, order_id: &str, customer: &str, items: Value) {
    server
        .accepted("PlaceOrder", json!({"aggregateId": order_id, "customerId": customer, "items": items}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_fulfillment_confirms_an_order_with_stock_and_credit() {
    let server = server(true, 0).await;
    server.accepted("AddStock", json!({"aggregateId": "f-1", "quantity": 10})).await;
    server.accepted("AddStock", json!({"aggregateId": "f-2", "quantity": 10})).await;
    server.accepted("OpenAccount", json!({"aggregateId": "cust-1", "creditLimit": 100})).await;
    let items = json!([
        {"productId": "f-1", "quantity": 2, "unitPrice": 10},
        {"productId": "f-2", "quantity": 1, "unitPrice": 5},
        {"productId": "f-1", "quantity": 1, "unitPrice": 10}
    ]);
    place(&server, "order-ok", "cust-1", items).await;
    let order = order_becomes(&server, "order-ok", "CONFIRMED").await;
    assert_eq!(order["total"], 35.0);
    let status = ended(&server, "fulfillment:order-ok").await;
    assert_eq!(status["status"], "COMPLETED");
    assert_eq!(status["sagaType"], "OrderFulfillment");
    assert_eq!(status["completedSteps"], json!(["reserve-1", "reserve-2", "charge", "confirm"]));
    let reserved = server.events_of("f-1").await;
    assert_eq!(reserved[1]["eventType"], "StockReserved");
    assert_eq!(reserved[1]["payload"], json!({"orderId": "order-ok", "quantity": 3}));
    let charged = server.events_of("cust-1").await;
    assert_eq!(charged[1]["payload"], json!({"orderId": "order-ok", "amount": 35.0}));
    assert_eq!(types(&server, "order-ok").await, ["OrderPlaced", "OrderConfirmed"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_fulfillment_cancels_an_order_without_stock_or_credit() {
    let server = server(true, 0).await;
    server.accepted("AddStock", json!({"aggregateId": "g-1", "quantity": 10})).await;
    server.accepted("AddStock", json!({"aggregateId": "g-short", "quantity": 1})).await;
    server.accepted("OpenAccount", json!({"aggregateId": "rich", "creditLimit": 1000})).await;
    server.accepted("OpenAccount", json!({"aggregateId": "poor", "creditLimit": 10})).await;

    // Not enough stock of the second product: the first is released, nothing is charged.
    let items = json!([{"productId": "g-1", "quantity": 1, "unitPrice": 5}, {"productId": "g-short", "quantity": 5, "unitPrice": 5}]);
    place(&server, "order-short", "rich", items).await;
    let order = order_becomes(&server, "order-short", "CANCELLED").await;
    let reason = order["cancelReason"].as_str().unwrap();
    assert!(reason.contains("step reserve-2 failed") && reason.contains("insufficient stock"), "{reason}");
    assert_eq!(ended(&server, "fulfillment:order-short").await["status"], "COMPENSATED");
    assert_eq!(types(&server, "g-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    assert_eq!(types(&server, "g-short").await, ["StockAdded"]);
    assert_eq!(types(&server, "rich").await, ["AccountOpened"], "nothing charged");

    // Not enough credit: the stock is released, the charge never happened.
    place(&server, "order-poor", "poor", json!([{"productId": "g-1", "quantity": 2, "unitPrice": 50}])).await;
    let order = order_becomes(&server, "order-poor", "CANCELLED").await;
    assert!(order["cancelReason"].as_str().unwrap().contains("exceeds the credit limit"), "{order}");
    assert_eq!(
        types(&server, "g-1").await,
        ["StockAdded", "StockReserved", "StockReleased", "StockReserved", "StockReleased"]
    );
    assert_eq!(types(&server, "poor").await, ["AccountOpened"]);
    server.stop().await;
}

/// A failure after the charge (the customer cancelled the order meanwhile, so it cannot be
/// confirmed): the payment is refunded and the stock released, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_fulfillment_refunds_a_charge_when_a_later_step_fails() {
    let server = server(true, 150).await;
    server.accepted("AddStock", json!({"aggregateId": "k-1", "quantity": 10})).await;
    server.accepted("OpenAccount", json!({"aggregateId": "kc", "creditLimit": 1000})).await;
    place(&server, "order-k", "kc", json!([{"productId": "k-1", "quantity": 1, "unitPrice": 40}])).await;
    // Steps wait 150 ms before each command: the customer's cancellation lands first.
    server.accepted("CancelOrder", json!({"aggregateId": "order-k", "reason": "changed my mind"})).await;
    let status = ended(&server, "fulfillment:order-k").await;
    assert_eq!(status["status"], "COMPENSATED", "{status}");
    assert!(status["error"].as_str().unwrap().contains("step confirm failed"), "{status}");
    assert_eq!(status["compensatedSteps"], json!(["charge", "reserve-1"]));
    assert_eq!(types(&server, "kc").await, ["AccountOpened", "PaymentCharged", "PaymentRefunded"]);
    assert_eq!(types(&server, "k-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    // The order keeps the customer's own cancellation: the process manager's is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(types(&server, "order-k").await, ["OrderPlaced", "OrderCancelled"]);
    assert_eq!(order_becomes(&server, "order-k", "CANCELLED").await["cancelReason"], "changed my mind");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_fulfillment_is_off_by_default() {
    let server = server(false, 0).await;
    place(&server, "order-off", "nobody", json!([{"productId": "z", "quantity": 1, "unitPrice": 1}])).await;
    order_becomes(&server, "order-off", "PLACED").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.get("/api/sagas/fulfillment:order-off/status").await.assert_error(404, "NOT_FOUND");
    assert_eq!(types(&server, "order-off").await, ["OrderPlaced"]);
    server.stop().await;
}
