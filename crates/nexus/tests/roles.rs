//! `nexus serve --role` on PostgreSQL: two command processes and one query process on one
//! database. Concurrent commands on one aggregate through both lose no update and get gap-free
//! versions; the query process's read model matches the event store.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn postgres_url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema for this run, dropped when the test ends (pass or fail).
struct Schema {
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

struct Process {
    child: Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(role: &str, schema: &str) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data_dir = tempfile::tempdir().unwrap().keep();
    let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--role", role, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data_dir)
        .env("NEXUS_STORE_URL", postgres_url())
        .env("NEXUS_STORE_SCHEMA", schema)
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = Process { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{}/health/ready", process.base)).send().await {
            if response.status().is_success() {
                return process;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{role} process did not become ready (is PostgreSQL up at {}?)",
            postgres_url()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, base: &str, command: &str, body: Value) -> Value {
    let response = client.post(format!("{base}/api/commands/{command}")).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "{command} via {base}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_command_processes_and_a_query_process_share_one_database() {
    let schema = Schema {
        name: format!(
            "nexus_roles_{}_{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() % 1_000_000
        ),
    };
    let command_a = serve("command", &schema.name).await;
    let command_b = serve("command", &schema.name).await;
    let query = serve("query", &schema.name).await;
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
