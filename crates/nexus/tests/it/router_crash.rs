//! The router killed mid-stream (SIGKILL) and restarted, on the NATS core path: command, query and
//! router processes on one PostgreSQL schema and one JetStream stream (fresh per run). No event is
//! lost, none is applied twice by the `orders` projection (its applied-events counter equals the
//! number of events), and every order ends in its final state (per-aggregate order kept).

use std::time::Duration;

use crate::common::{Nexus, Schema, nats_url, postgres_url};
use serde_json::{Value, json};

async fn serve(role: &str, schema: &str, config: &std::path::Path) -> Nexus {
    let data_dir = tempfile::tempdir().unwrap().keep();
    Nexus::serve(|command| {
        command
            .args(["--role", role, "--data-dir"])
            .arg(&data_dir)
            .arg("--config")
            .arg(config)
            .env("NEXUS_STORE_URL", postgres_url())
            .env("NEXUS_STORE_SCHEMA", schema)
            .env("NEXUS_STREAM_URL", nats_url());
    })
    .await
}

async fn post(client: &reqwest::Client, base: &str, command: &str, body: Value) {
    let response = client.post(format!("{base}/api/commands/{command}")).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "{command} via {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let schema = Schema::fresh("nexus_router_crash");
    let stream_name = format!("nexus-test-{}", schema.0.replace('_', "-"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(&config, format!("[stream]\nname = \"{stream_name}\"\npartitions = 3\n")).unwrap();

    let command = serve("command", &schema.0, &config).await;
    let query = serve("query", &schema.0, &config).await;
    let router = serve("router", &schema.0, &config).await;
    let client = reqwest::Client::new();
    const ORDERS: usize = 40;
    let order = |i: usize| format!("order-{i}");
    let place = |i: usize| json!({"aggregateId": order(i), "customerId": "c", "items": [{"productId": "p", "quantity": 1, "unitPrice": 2.0}]});

    // Commands keep flowing while the router is SIGKILLed in the middle of routing them.
    for i in 0..ORDERS {
        post(&client, &command.base, "PlaceOrder", place(i)).await;
    }
    let writer = {
        let (client, base) = (client.clone(), command.base.clone());
        tokio::spawn(async move {
            for command in ["ConfirmOrder", "ShipOrder"] {
                for i in 0..ORDERS {
                    post(&client, &base, command, json!({"aggregateId": format!("order-{i}")})).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(router); // Child::kill is SIGKILL
    writer.await.unwrap();
    let _router = serve("router", &schema.0, &config).await;

    for i in 0..ORDERS {
        let url = format!("{}/api/queries/orders/{}?minVersion=3&timeoutMs=20000", query.base, order(i));
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{} reached version 3", order(i));
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["status"], "SHIPPED", "{doc}");
        assert_eq!(doc["version"], 3);
    }
    let metrics = client.get(format!("{}/metrics", query.base)).send().await.unwrap().text().await.unwrap();
    let applied: u64 = metrics
        .lines()
        .find(|l| l.starts_with("nexus_projection_events_total{projection=\"orders\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no orders counter in\n{metrics}"));
    assert_eq!(applied, 3 * ORDERS as u64, "each event applied exactly once");

    let stream = nexus_nats::NatsEventStream::connect(&nats_url(), &stream_name, 3).await.unwrap();
    stream.destroy().await.unwrap();
}
