//! `nexus serve --role` on PostgreSQL: two command processes and one query process on one
//! database. Concurrent commands on one aggregate through both lose no update and get gap-free
//! versions; the query process's read model matches the event store.

use crate::common::{Nexus, Schema, postgres_url};
use serde_json::{Value, json};

async fn serve(role: &str, schema: &str) -> Nexus {
    let data_dir = tempfile::tempdir().unwrap().keep();
    Nexus::serve(|command| {
        command
            .args(["--role", role, "--data-dir"])
            .arg(&data_dir)
            .env("NEXUS_STORE_URL", postgres_url())
            .env("NEXUS_STORE_SCHEMA", schema);
    })
    .await
}

async fn post(client: &reqwest::Client, base: &str, command: &str, body: Value) -> Value {
    let response = client.post(format!("{base}/api/commands/{command}")).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "{command} via {base}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_command_processes_and_a_query_process_share_one_database() {
    let schema = Schema::fresh("nexus_roles");
    let command_a = serve("command", &schema.0).await;
    let command_b = serve("command", &schema.0).await;
    let query = serve("query", &schema.0).await;
    let client = reqwest::Client::new();

    // The roles serve only their own side.
    let read_on_command = client.get(format!("{}/api/queries/orders", command_a.base)).send().await.unwrap();
    assert_eq!(read_on_command.status().as_u16(), 404, "the command role serves no queries");
    let write_on_query = client
        .post(format!("{}/api/commands/AddStock", query.base))
        .json(&json!({"aggregateId": "p", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(write_on_query.status().as_u16(), 404, "the query role takes no commands");

    // 2 × 8 clients × 15 commands on ONE aggregate, half through each command process.
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let base = if worker % 2 == 0 { command_a.base.clone() } else { command_b.base.clone() };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..15 {
                let result =
                    post(&client, &base, "AddStock", json!({"aggregateId": "shared-product", "quantity": 1}))
                        .await;
                versions.push(result["version"].as_u64().unwrap());
            }
            versions
        }));
    }
    let mut versions: Vec<u64> = Vec::new();
    for task in tasks {
        versions.extend(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=240).collect::<Vec<_>>(), "every command applied once, versions gap-free");
    let events: Value = client
        .get(format!("{}/api/events/shared-product", query.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aggregateVersion"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, (1..=240).collect::<Vec<_>>());

    // Orders placed through A, shipped through B: the query process projects them all.
    let mut orders = Vec::new();
    for n in 0..20 {
        let placed = post(
            &client,
            &command_a.base,
            "PlaceOrder",
            json!({"customerId": "c-roles", "items": [{"productId": format!("p{n}"), "quantity": 1 + n % 3, "unitPrice": 5}]}),
        )
        .await;
        let id = placed["aggregateId"].as_str().unwrap().to_owned();
        let version = if n % 2 == 0 {
            post(&client, &command_b.base, "ShipOrder", json!({"aggregateId": id})).await["version"]
                .as_u64()
                .unwrap()
        } else {
            1
        };
        orders.push((id, version, if n % 2 == 0 { "SHIPPED" } else { "PLACED" }));
    }
    for (id, version, status) in &orders {
        let doc: Value = client
            .get(format!("{}/api/queries/orders/{id}?minVersion={version}&timeoutMs=10000", query.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["status"], *status, "{doc}");
        assert_eq!(doc["version"].as_u64(), Some(*version));
        let events: Value =
            client.get(format!("{}/api/events/{id}", query.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            events["events"].as_array().unwrap().len() as u64,
            *version,
            "read model matches the store"
        );
    }
    let listed: Value = client
        .get(format!("{}/api/queries/orders?customerId=c-roles&limit=100", query.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 20);
}
