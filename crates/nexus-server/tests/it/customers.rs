//! A read model keyed by customer, fed by the events of many orders (`customers`): each event
//! counts once, whoever sends the orders, and reads wait for a command's `position`.

use serde_json::{Value, json};

use crate::support::TestServer;

fn order(id: &str, customer: &str, unit_price: f64, quantity: u64) -> Value {
    json!({
        "aggregateId": id,
        "customerId": customer,
        "items": [{"productId": "p-1", "quantity": quantity, "unitPrice": unit_price}]
    })
}

/// The projection named `name` in `/api/admin/projections`.
async fn projection(server: &TestServer, name: &str) -> Value {
    let status = server.get("/api/admin/projections").await;
    status.body["items"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_of_one_customer_count_once_each_and_a_cancel_subtracts() {
    let server = TestServer::start().await;
    // Three clients (connections of their own) place one order each at the same time.
    let places = [("o-a", 10.0, 1), ("o-b", 20.25, 2), ("o-c", 7.5, 4)].map(|(id, price, quantity)| {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = server.url("/api/commands/PlaceOrder");
        tokio::spawn(async move {
            let reply = client.post(url).json(&order(id, "c-shared", price, quantity)).send().await.unwrap();
            assert_eq!(reply.status().as_u16(), 202);
            reply.json::<Value>().await.unwrap()
        })
    });
    let mut positions = Vec::new();
    for place in places {
        let accepted = place.await.unwrap();
        assert!(accepted["position"].as_u64().unwrap() > 0, "{accepted}");
        positions.push(accepted["position"].as_u64().unwrap());
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 3, "each order has a position of its own");
    let cancel =
        server.accepted("CancelOrder", json!({"aggregateId": "o-b", "commandId": "cancel-o-b"})).await;
    let position = cancel["position"].as_u64().unwrap();
    assert!(position > *positions.last().unwrap());

    // Read-your-writes by position: no polling, the read waits for the projection.
    let expected_total = 10.0 + 7.5 * 4.0;
    let reply = server.get(&format!("/api/queries/customers/c-shared?minPosition={position}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let customer = reply.body;
    assert_eq!(customer["customerId"], "c-shared");
    assert_eq!(customer["orderCount"], 3, "{customer}");
    assert_eq!(customer["totalSpent"], expected_total, "{customer}");
    assert!(customer["lastOrderAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{customer}");
    assert_eq!(customer["version"], position, "a keyed document's version is the last position applied");

    // A list and a search wait the same way.
    let list =
        server.get(&format!("/api/queries/customers?minPosition={position}&customerId=c-shared")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["total"], 1);
    assert_eq!(list.body["items"][0]["orderCount"], 3);

    // The same command id again appends nothing and answers the original position.
    let replay =
        server.accepted("CancelOrder", json!({"aggregateId": "o-b", "commandId": "cancel-o-b"})).await;
    assert_eq!(replay["position"], position);

    // A position the store has not reached yet times out in the contract's shape.
    let ahead = server
        .get(&format!("/api/queries/customers/c-shared?minPosition={}&timeoutMs=100", position + 50))
        .await;
    ahead.assert_error(504, "PROJECTION_TIMEOUT");
    assert_eq!(ahead.body["minPosition"], position + 50);
    let bad = server.get("/api/queries/customers?minPosition=soon").await;
    bad.assert_error(400, "VALIDATION_ERROR");

    // A rebuild from the first event gives the same document.
    let started =
        server.http.post(server.url("/api/admin/projections/customers/rebuild")).send().await.unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while projection(&server, "customers").await["rebuildsCompleted"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let rebuilt = server.get("/api/queries/customers/c-shared").await.body;
    assert_eq!(rebuilt, customer, "the rebuilt document is the same");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_nothing_into_a_customer() {
    let server = TestServer::start().await;
    let mut position = 0;
    for n in 0..5 {
        let accepted = server.accepted("PlaceOrder", order(&format!("r-{n}"), "c-restart", 2.0, 1)).await;
        position = accepted["position"].as_u64().unwrap();
    }
    let before = server.get(&format!("/api/queries/customers/c-restart?minPosition={position}")).await.body;
    assert_eq!(before["orderCount"], 5);
    let dir = server.stop().await;
    // The projection starts again from its checkpoint: nothing is applied a second time.
    let server = TestServer::start_in(dir).await;
    let accepted = server.accepted("PlaceOrder", order("r-5", "c-restart", 2.0, 1)).await;
    let position = accepted["position"].as_u64().unwrap();
    let after = server.get(&format!("/api/queries/customers/c-restart?minPosition={position}")).await.body;
    assert_eq!(
        (after["orderCount"].clone(), after["totalSpent"].clone()),
        (json!(6), json!(12.0)),
        "{after}"
    );
    server.stop().await;
}
