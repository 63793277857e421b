//! The `customers` read model (keyed by customer, fed by many orders) counts every order exactly
//! once against the real binary: after a SIGKILL in the middle of the load, and on PostgreSQL with
//! the NATS core path and two query processes applying it side by side.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Nexus, Schema, free_port, nats_url, postgres_url};
use serde_json::{Value, json};

const CUSTOMERS: usize = 4;

fn place(order: &str, customer: usize, price: f64) -> Value {
    json!({
        "aggregateId": order,
        "customerId": format!("kc-{customer}"),
        "items": [{"productId": "p", "quantity": 1, "unitPrice": price}]
    })
}

/// An order's price: distinct per order, so a double count or a lost order changes the sum.
fn price(worker: usize, i: usize) -> f64 {
    (1 + worker * 1000 + i) as f64 / 4.0
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// What the store holds, from the events of each order: per customer, the count of orders and
/// the sum of their totals minus those cancelled.
async fn truth(
    client: &reqwest::Client,
    base: &str,
    orders: &[(String, usize, f64)],
) -> BTreeMap<String, (u64, f64)> {
    let mut expected = BTreeMap::new();
    for (order, customer, price) in orders {
        let (_, events) = get(client, format!("{base}/api/events/{order}")).await;
        let events = events["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            continue; // never committed (its command was cut off by the kill)
        }
        let entry = expected.entry(format!("kc-{customer}")).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += price;
        if events.iter().any(|e| e["eventType"] == "OrderCancelled") {
            entry.1 -= price;
        }
    }
    expected
}

/// Asserts that every customer document at `base` (read once the projection has applied
/// `position`) matches `expected`.
async fn assert_customers(
    client: &reqwest::Client,
    base: &str,
    position: u64,
    expected: &BTreeMap<String, (u64, f64)>,
) {
    for (customer, (count, spent)) in expected {
        let url = format!("{base}/api/queries/customers/{customer}?minPosition={position}&timeoutMs=20000");
        let (status, doc) = get(client, url).await;
        assert_eq!(status, 200, "{customer} at {base}: {doc}");
        assert_eq!(doc["orderCount"], *count, "{customer} at {base}: {doc}");
        let total = doc["totalSpent"].as_f64().unwrap();
        assert!((total - spent).abs() < 1e-6, "{customer} at {base}: totalSpent {total}, expected {spent}");
    }
}

/// The store's head, as the admin API reports it.
async fn head(client: &reqwest::Client, base: &str) -> u64 {
    let (_, status) = get(client, format!("{base}/api/admin/projections")).await;
    status["items"][0]["head"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_load_counts_no_order_twice() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let serve = |dir: std::path::PathBuf| {
        Nexus::serve_on(port, move |command| {
            command.arg("--data-dir").arg(dir);
        })
    };
    let server = serve(dir.path().to_owned()).await;
    let client = reqwest::Client::new();
    // Every order attempted, acknowledged or not: the kill may cut one off after its commit.
    let attempted: Arc<Mutex<Vec<(String, usize, f64)>>> = Arc::default();
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (client, base) = (client.clone(), server.base.clone());
        let (attempted, acknowledged) = (attempted.clone(), acknowledged.clone());
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let (order, customer) = (format!("k-{worker}-{i}"), (worker + i) % CUSTOMERS);
                attempted.lock().unwrap().push((order.clone(), customer, price(worker, i)));
                let body = place(&order, customer, price(worker, i));
                let Ok(reply) =
                    client.post(format!("{base}/api/commands/PlaceOrder")).json(&body).send().await
                else {
                    break;
                };
                if reply.status().as_u16() != 202 {
                    break;
                }
                // Every third order is cancelled again.
                if i % 3 == 0 {
                    let cancel = json!({"aggregateId": order});
                    let Ok(reply) =
                        client.post(format!("{base}/api/commands/CancelOrder")).json(&cancel).send().await
                    else {
                        break;
                    };
                    if reply.status().as_u16() != 202 {
                        break;
                    }
                }
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.load(std::sync::atomic::Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    for task in load {
        task.await.unwrap();
    }

    let server = serve(dir.path().to_owned()).await;
    let orders = attempted.lock().unwrap().clone();
    let expected = truth(&client, &server.base, &orders).await;
    assert_eq!(expected.len(), CUSTOMERS);
    assert!(expected.values().map(|(count, _)| count).sum::<u64>() >= 200);
    let position = head(&client, &server.base).await;
    assert_customers(&client, &server.base, position, &expected).await;
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_and_nats_two_query_processes_count_each_order_once() {
    let schema = Schema::fresh("nexus_customers");
    let stream_name = format!("nexus-test-{}", schema.0.replace('_', "-"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(&config, format!("[stream]\nname = \"{stream_name}\"\npartitions = 3\n")).unwrap();
    let serve = |role: &'static str| {
        let (schema, config) = (schema.0.clone(), config.clone());
        let data_dir = tempfile::tempdir().unwrap().keep();
        Nexus::serve(move |command| {
            command
                .args(["--role", role, "--data-dir"])
                .arg(&data_dir)
                .arg("--config")
                .arg(&config)
                .env("NEXUS_STORE_URL", postgres_url())
                .env("NEXUS_STORE_SCHEMA", schema)
                .env("NEXUS_STREAM_URL", nats_url());
        })
    };
    let command = serve("command").await;
    let router = serve("router").await;
    let queries = [serve("query").await, serve("query").await];
    let client = reqwest::Client::new();

    // Six clients place orders of four customers at once; every third is cancelled.
    let mut load = Vec::new();
    for worker in 0..6 {
        let (client, base) = (client.clone(), command.base.clone());
        load.push(tokio::spawn(async move {
            let mut orders = Vec::new();
            let mut last = 0;
            for i in 0..15 {
                let (order, customer) = (format!("n-{worker}-{i}"), (worker + i) % CUSTOMERS);
                let reply = client
                    .post(format!("{base}/api/commands/PlaceOrder"))
                    .json(&place(&order, customer, price(worker, i)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status().as_u16(), 202);
                last = last.max(reply.json::<Value>().await.unwrap()["position"].as_u64().unwrap());
                if i % 3 == 0 {
                    let reply = client
                        .post(format!("{base}/api/commands/CancelOrder"))
                        .json(&json!({"aggregateId": order}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(reply.status().as_u16(), 202);
                    last = last.max(reply.json::<Value>().await.unwrap()["position"].as_u64().unwrap());
                }
                orders.push((order, customer, price(worker, i)));
            }
            (orders, last)
        }));
    }
    let mut orders = Vec::new();
    let mut position = 0;
    for task in load {
        let (mine, last) = task.await.unwrap();
        orders.extend(mine);
        position = position.max(last);
    }
    let expected = truth(&client, &queries[0].base, &orders).await;
    assert_eq!(expected.values().map(|(count, _)| count).sum::<u64>(), 90);
    // Both query processes apply `customers` to the one shared model; each answers exactly.
    for query in &queries {
        assert_customers(&client, &query.base, position, &expected).await;
    }
    // The core path fed `orders` meanwhile: the last order is there, cancelled.
    let (status, doc) =
        get(&client, format!("{}/api/queries/orders/n-5-12?minVersion=2&timeoutMs=20000", queries[0].base))
            .await;
    assert_eq!((status, doc["status"].clone()), (200, json!("CANCELLED")), "{doc}");
    let (_, projections) = get(&client, format!("{}/api/admin/projections", queries[1].base)).await;
    let feeds: BTreeMap<String, String> = projections["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["feed"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(feeds["orders"], "stream", "{feeds:?}");
    assert_eq!(feeds["customers"], "changeFeed", "{feeds:?}");
    drop((command, router, queries));
}
