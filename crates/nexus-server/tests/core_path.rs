//! The core path on a real NATS JetStream (`NEXUS_TEST_NATS_URL`, default the local server): the
//! router publishes core events, the `orders` projection reads them from the stream, `users`
//! (which reads a non-core event) keeps tailing the change feed. A fresh stream per run, deleted
//! at the end; an unreachable server fails the test.
//!
//! A test binary of its own: it counts the core events routed in the process-wide metrics,
//! which the other API tests would add to.

use std::time::Instant;

use serde_json::json;
use support::TestServer;

// Shared with the `it` binary, of which this test uses a part.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reach_the_read_model_through_nats() {
    let url = std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let name = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start_with(|config| {
        config.stream.url = Some(url.clone());
        config.stream.name = Some(name.clone());
        config.stream.partitions = 3;
    })
    .await;
    let mut latencies = Vec::new();
    for i in 0..30 {
        let id = format!("order-{i}");
        let body = json!({"aggregateId": id, "customerId": "c-1", "items": [{"productId": "p-1", "quantity": 1, "unitPrice": 5.0}]});
        server.accepted("PlaceOrder", body).await;
        server.accepted("ConfirmOrder", json!({"aggregateId": id})).await;
        let started = Instant::now();
        server.accepted("ShipOrder", json!({"aggregateId": id})).await;
        let doc = server.document_at("orders", &id, 3).await;
        latencies.push(started.elapsed());
        assert_eq!(doc["status"], "SHIPPED", "{doc}");
        assert_eq!(doc["version"], 3);
    }
    latencies.sort();
    println!(
        "command → read model through NATS (debug build, 30 orders): p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    let user = server
        .accepted("RegisterUser", json!({"firstName": "Ada", "lastName": "L", "email": "ada@example.com"}))
        .await;
    let user_id = user["aggregateId"].as_str().unwrap();
    assert_eq!(
        server.document_at("users", user_id, 1).await["version"],
        1,
        "users still tails the change feed"
    );
    let metrics = server.get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("nexus_events_routed_total{path=\"core\"} 90"), "90 core events routed");

    // The stream-fed projection is managed like the others: listed with its backlog on each
    // partition, and rebuilt on request, after which the stream goes on feeding it.
    let orders = |listing: &serde_json::Value| {
        listing["items"].as_array().unwrap().iter().find(|p| p["name"] == "orders").cloned().unwrap()
    };
    let started = Instant::now();
    let listed = loop {
        let listed = orders(&server.get("/api/admin/projections").await.body);
        if listed["lag"] == 0 {
            break listed;
        }
        assert!(started.elapsed().as_secs() < 10, "the stream backlog did not drain: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(listed["feed"], "stream", "{listed}");
    assert_eq!(listed["state"], "RUNNING", "{listed}");
    assert_eq!(listed["partitions"].as_array().map(Vec::len), Some(3), "{listed}");
    let head = listed["head"].as_u64().unwrap();
    assert!(listed["checkpoint"].as_u64().unwrap() <= head && head >= 90, "{listed}");
    let requested =
        server.http.post(server.url("/api/admin/projections/orders/rebuild")).send().await.unwrap();
    assert_eq!(requested.status(), 202);
    let started = Instant::now();
    let rebuilt = loop {
        let listed = orders(&server.get("/api/admin/projections").await.body);
        if listed["rebuildsCompleted"] == 1 && listed["state"] == "RUNNING" {
            break listed;
        }
        assert!(listed["lastError"].is_null(), "{listed}");
        assert!(started.elapsed().as_secs() < 30, "the rebuild did not finish: {listed}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(rebuilt["checkpoint"], head, "the rebuild applied up to the head: {rebuilt}");
    assert_eq!(server.document_at("orders", "order-7", 3).await["status"], "SHIPPED");
    let body = json!({"aggregateId": "order-after", "customerId": "c-1", "items": [{"productId": "p-1", "quantity": 1, "unitPrice": 5.0}]});
    server.accepted("PlaceOrder", body).await;
    assert_eq!(
        server.document_at("orders", "order-after", 1).await["version"],
        1,
        "the stream feeds the rebuilt model"
    );
    server.stop().await;
    let stream = nexus_nats::NatsEventStream::connect(&url, &name, 3).await.unwrap();
    stream.destroy().await.unwrap();
}
