//! The router killed mid-stream (SIGKILL) and restarted, on the NATS core path: command, query and
//! router processes on one PostgreSQL schema and one JetStream stream (fresh per run). No event is
//! lost, none is applied twice by the `orders` projection (its applied-events counter equals the
//! number of events), and every order ends in its final state (per-aggregate order kept).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn postgres_url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn nats_url() -> String {
    std::env::var("NEXUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Drops the schema when the test ends (pass or fail).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
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

async fn serve(role: &str, schema: &str, config: &std::path::Path) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data_dir = tempfile::tempdir().unwrap().keep();
    let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--role", role, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data_dir)
        .arg("--config")
        .arg(config)
        .env("NEXUS_STORE_URL", postgres_url())
        .env("NEXUS_STORE_SCHEMA", schema)
        .env("NEXUS_STREAM_URL", nats_url())
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = Process { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{}/health/ready", process.base)).send().await
            && response.status().is_success()
        {
            return process;
        }
        assert!(Instant::now() < deadline, "{role} process did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, base: &str, command: &str, body: Value) {
    let response = client.post(format!("{base}/api/commands/{command}")).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "{command} via {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let run = format!("{}_{}", std::process::id(), Instant::now().elapsed().as_nanos() % 1_000_000);
    let schema = Schema(format!("nexus_router_crash_{run}"));
    let stream_name = format!("nexus-test-router-crash-{run}");
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
