//! The router killed mid-stream (SIGKILL) and restarted, on the embedded path.
//!
//! On the embedded default the router is not a process of its own: it runs inside `nexus serve`
//! beside the command bus and the projections, so killing it kills all of them. This test does
//! exactly that, under load, and checks what the issue asks of the router's consumers:
//!
//! - no event lost: every acknowledged event is in the store after the restart; every order's
//!   events reach the read models; every stored `UserRegistered` (queue path) reaches the webhook;
//! - none applied twice, per-aggregate order kept: an `audit` projection appends the version of
//!   each event it applies to its document, which is only idempotent because the runner commits
//!   documents and checkpoint together and guards by version; after the crash every order's list
//!   must read exactly `[1, 2, 3]`.
//!
//! A SIGKILL needs a process to kill, and the audit projection needs our own domain, so the test
//! runs itself as the server: with `NEXUS_CRASH_CHILD_DIR` set, this binary serves
//! `nexus_domain::domain()` plus the audit projection on that data directory (harness = false).

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use nexus_core::{DomainEvent, Projection, ProjectionError, ReadDocument};
use serde_json::{Value, json};

const CHILD_DIR: &str = "NEXUS_CRASH_CHILD_DIR";
const CHILD_PORT: &str = "NEXUS_CRASH_CHILD_PORT";
const TEST_NAME: &str =
    "a_router_killed_mid_stream_on_the_embedded_path_loses_nothing_and_duplicates_nothing";
/// Orders, and users.
const ORDERS: usize = 48;
const WORKERS: usize = 8;
const DEADLINE: Duration = Duration::from_secs(60);

/// Records, per order, the versions of the events applied to its document, in application order.
struct Audit;

impl Projection for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn handles(&self, event_type: &str) -> bool {
        event_type.starts_with("Order")
    }

    fn apply(&self, doc: &mut ReadDocument, event: &DomainEvent) -> Result<(), ProjectionError> {
        let mut applied = doc.fields.get("applied").and_then(Value::as_array).cloned().unwrap_or_default();
        applied.push(json!(event.aggregate_version));
        doc.set("applied", Value::Array(applied));
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        runtime.block_on(serve_child(dir));
        return;
    }
    // A name filter that does not select this test (`cargo test -p nexus-server some_name`).
    if args.iter().any(|a| !a.starts_with('-') && !TEST_NAME.contains(a.as_str())) {
        println!("running 0 tests (filtered out: {TEST_NAME})");
        return;
    }
    println!("running 1 test");
    runtime.block_on(router_killed_mid_stream());
    println!("test {TEST_NAME} ... ok");
}

async fn serve_child(dir: String) {
    let port: u16 = std::env::var(CHILD_PORT).unwrap().parse().unwrap();
    let mut config = nexus_server::Config::embedded(dir);
    config.queue.retry_base_ms = 20;
    config.rate_limits.list_per_window = 1_000_000;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let domain = nexus_domain::domain().projection(Audit);
    nexus_server::run(config, domain, listener, std::future::pending()).await.unwrap();
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

async fn start(dir: &std::path::Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_DIR, dir)
        .env(CHILD_PORT, port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{}/health/ready", server.base)).send().await
            && response.status().is_success()
        {
            return server;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What each 202 acknowledged: (aggregate id, version).
type Acknowledged = Arc<Mutex<Vec<(String, u64)>>>;

/// Sends `command` and records its version when accepted; `Err` when the server is gone.
async fn send(
    http: &reqwest::Client,
    base: &str,
    command: &str,
    body: Value,
    acknowledged: &Acknowledged,
) -> Result<(), String> {
    let response = http
        .post(format!("{base}/api/commands/{command}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let reply: Value = response.json().await.map_err(|e| e.to_string())?;
    assert_eq!(status, 202, "{command}: {reply}");
    let aggregate = reply["aggregateId"].as_str().unwrap().to_owned();
    acknowledged.lock().unwrap().push((aggregate, reply["version"].as_u64().unwrap()));
    Ok(())
}

fn order_id(i: usize) -> String {
    format!("order-{i}")
}

fn place(i: usize) -> Value {
    json!({"aggregateId": order_id(i), "customerId": "c", "items": [{"productId": "p", "quantity": 1, "unitPrice": 2.0}]})
}

/// The commands that take order `i` from `version` to shipped (version 3).
fn remaining(i: usize, version: u64) -> Vec<(&'static str, Value)> {
    let all = [
        ("PlaceOrder", place(i)),
        ("ConfirmOrder", json!({"aggregateId": order_id(i)})),
        ("ShipOrder", json!({"aggregateId": order_id(i)})),
    ];
    all.into_iter().skip(version as usize).collect()
}

fn register(i: usize) -> Value {
    json!({"aggregateId": format!("user-{i}"), "firstName": "Ada", "lastName": "Lovelace", "email": format!("ada{i}@example.com")})
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn stored_versions(http: &reqwest::Client, base: &str, aggregate: &str) -> Vec<(u64, String)> {
    let (status, body) = get(http, format!("{base}/api/events/{aggregate}")).await;
    if status == 404 {
        return Vec::new(); // no events yet
    }
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["aggregateVersion"].as_u64().unwrap(), e["eventType"].as_str().unwrap().to_owned()))
        .collect()
}

/// The webhook endpoint: counts deliveries per CloudEvents id.
async fn webhook_endpoint() -> (Arc<Mutex<HashMap<String, usize>>>, String) {
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(received): axum::extract::State<Arc<Mutex<HashMap<String, usize>>>>,
                 headers: HeaderMap| async move {
                    let id = headers["ce-id"].to_str().unwrap().to_owned();
                    *received.lock().unwrap().entry(id).or_default() += 1;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (received, url)
}

async fn router_killed_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (received, hook_url) = webhook_endpoint().await;

    let first = start(dir.path()).await;
    let response = http
        .post(format!("{}/api/admin/webhooks", first.base))
        .json(&json!({"url": hook_url, "eventTypes": ["UserRegistered"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // Workers take their orders through place → confirm → ship and register users, until the
    // server disappears under them.
    let acknowledged: Acknowledged = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (http, base, acknowledged) = (http.clone(), first.base.clone(), acknowledged.clone());
        workers.push(tokio::spawn(async move {
            for i in (worker..ORDERS).step_by(WORKERS) {
                send(&http, &base, "RegisterUser", register(i), &acknowledged).await?;
                for (command, body) in remaining(i, 0) {
                    send(&http, &base, command, body, &acknowledged).await?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    // Kill when about half of the stream is acknowledged: mid-stream for the router and the
    // projections alike.
    let half = 4 * ORDERS / 2;
    let started = Instant::now();
    while acknowledged.lock().unwrap().len() < half {
        assert!(started.elapsed() < DEADLINE, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(first);
    let mut interrupted = 0;
    for worker in workers {
        interrupted += usize::from(worker.await.unwrap().is_err());
    }
    assert!(interrupted > 0, "the kill interrupted no worker: it was not mid-stream");
    let before_kill = acknowledged.lock().unwrap().clone();
    println!("killed after {} acknowledged commands", before_kill.len());

    // Restart on the same data directory; finish every order and register every user.
    let second = start(dir.path()).await;
    for i in 0..ORDERS {
        let version = stored_versions(&http, &second.base, &order_id(i)).await.len() as u64;
        for (command, body) in remaining(i, version) {
            send(&http, &second.base, command, body, &acknowledged).await.unwrap();
        }
    }
    for i in 0..ORDERS {
        if stored_versions(&http, &second.base, &format!("user-{i}")).await.is_empty() {
            send(&http, &second.base, "RegisterUser", register(i), &acknowledged).await.unwrap();
        }
    }

    // No acknowledged event lost.
    let mut stored: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for i in 0..ORDERS {
        stored.insert(order_id(i), stored_versions(&http, &second.base, &order_id(i)).await);
    }
    for i in 0..ORDERS {
        let user = format!("user-{i}");
        stored.insert(user.clone(), stored_versions(&http, &second.base, &user).await);
    }
    for (aggregate, version) in &before_kill {
        let events = &stored[aggregate];
        assert!(
            events.iter().any(|(v, _)| v == version),
            "acknowledged {aggregate} v{version} lost: {events:?}"
        );
    }
    for i in 0..ORDERS {
        let types: Vec<&str> = stored[&order_id(i)].iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(types, ["OrderPlaced", "OrderConfirmed", "OrderShipped"], "{}", order_id(i));
    }

    // Each order's events applied exactly once, in order, by the projections.
    for i in 0..ORDERS {
        let url = format!("{}/api/queries/audit/{}?minVersion=3&timeoutMs=20000", second.base, order_id(i));
        let (status, doc) = get(&http, url).await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["applied"], json!([1, 2, 3]), "{}: each event once, in order", order_id(i));
        let url = format!("{}/api/queries/orders/{}?minVersion=3&timeoutMs=20000", second.base, order_id(i));
        let (status, doc) = get(&http, url).await;
        assert_eq!((status, doc["status"].as_str()), (200, Some("SHIPPED")), "{doc}");
    }

    // The queue path: every stored UserRegistered reaches the webhook (at least once).
    let (status, body) =
        get(&http, format!("{}/api/events?eventType=UserRegistered&limit=1000", second.base)).await;
    assert_eq!(status, 200, "{body}");
    let registered: Vec<String> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(registered.len(), ORDERS, "one UserRegistered per user");
    let started = Instant::now();
    loop {
        let missing: Vec<String> = {
            let received = received.lock().unwrap();
            registered.iter().filter(|id| !received.contains_key(*id)).cloned().collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{} UserRegistered never delivered: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redelivered: usize = received.lock().unwrap().values().map(|n| n - 1).sum();
    println!("webhook: {} events delivered, {redelivered} delivered again after the crash", registered.len());
    drop(second);
}
