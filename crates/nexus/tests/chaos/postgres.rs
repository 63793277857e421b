//! PostgreSQL stopped for 30 s under load, then started again: commands get `503` with
//! `Retry-After` while it is down (after the server's own retries), never a `500` and never a
//! hang; reads are `503` too; `/health/ready` is `503` then `200`; afterwards every acknowledged event is in the store
//! once and the read models equal a fold of the store, with no event applied twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::Nexus;
use crate::engines::PrivatePostgres;

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(30);
/// The longest a command may take: the server's retries (100 + 200 + 400 ms) and each try's own
/// failure, with room to spare. Longer is a hang.
const BUDGET: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    sent: u64,
    accepted: u64,
    unavailable: u64,
    unavailable_without_retry_after: u64,
    other: Vec<String>,
    slowest: Duration,
    /// Acknowledged orders: id → (customer, position).
    orders: HashMap<String, (String, u64)>,
    /// Commands answered 503, by the command id the answer gave: (customer, body sent).
    unknown: Vec<(String, String)>,
}

/// What one command came back with.
enum Outcome {
    Accepted { id: String, position: u64 },
    Unavailable { retry_after: bool, command_id: Option<String> },
    Other(String),
}

async fn place(http: &reqwest::Client, base: &str, customer: &str, command_id: Option<&str>) -> Outcome {
    let mut body =
        json!({"customerId": customer, "items": [{"productId": "p", "quantity": 1, "unitPrice": 2}]});
    if let Some(id) = command_id {
        body["commandId"] = json!(id);
    }
    let reply = match http.post(format!("{base}/api/commands/PlaceOrder")).json(&body).send().await {
        Ok(reply) => reply,
        Err(error) => return Outcome::Other(error.to_string()),
    };
    let status = reply.status().as_u16();
    let retry_after = reply.headers().contains_key("retry-after");
    let body: Value = reply.json().await.unwrap_or_default();
    match status {
        202 => Outcome::Accepted {
            id: body["aggregateId"].as_str().unwrap().to_owned(),
            position: body["position"].as_u64().unwrap(),
        },
        503 if body["code"] == "UNAVAILABLE" => {
            Outcome::Unavailable { retry_after, command_id: body["commandId"].as_str().map(str::to_owned) }
        }
        _ => Outcome::Other(format!("{status} {body}")),
    }
}

/// The document at `path` (under `/api/queries/`) once its projection has applied the events up to
/// `position`; the projections catch up by themselves within 30 s of the store's return.
async fn caught_up_document(http: &reqwest::Client, server: &Nexus, path: &str, position: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = http
            .get(server.url(&format!("/api/queries/{path}?minPosition={position}")))
            .send()
            .await
            .unwrap();
        match reply.status().as_u16() {
            200 => return reply.json().await.unwrap(),
            504 if Instant::now() < deadline => continue,
            status => panic!("{path} at position {position}: {status} {}", reply.text().await.unwrap()),
        }
    }
}

async fn ready(http: &reqwest::Client, server: &Nexus) -> (u16, Value) {
    let reply = http.get(server.url("/health/ready")).send().await.unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_30_s_answers_503_then_everything_resumes_exactly_once() {
    let started = Instant::now();
    let postgres = PrivatePostgres::start_new();
    let dir = tempfile::tempdir().unwrap();
    let url = postgres.url();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(dir.path()).env("NEXUS_STORE_URL", &url);
    })
    .await;
    let http = reqwest::Client::builder().no_proxy().timeout(BUDGET * 2).build().unwrap();

    let counts: Arc<Mutex<Counts>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (http, base, counts, stop) = (http.clone(), server.base.clone(), counts.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let customer = format!("pg-{worker}");
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let outcome = place(&http, &base, &customer, None).await;
                let took = sent.elapsed();
                let pause = {
                    let mut counts = counts.lock().unwrap();
                    counts.sent += 1;
                    counts.slowest = counts.slowest.max(took);
                    match outcome {
                        Outcome::Accepted { id, position } => {
                            counts.accepted += 1;
                            counts.orders.insert(id, (customer.clone(), position));
                            Duration::ZERO
                        }
                        Outcome::Unavailable { retry_after, command_id } => {
                            counts.unavailable += 1;
                            counts.unavailable_without_retry_after += u64::from(!retry_after);
                            match command_id {
                                Some(id) => counts.unknown.push((customer.clone(), id)),
                                None => counts.other.push("a 503 without the commandId to resend".into()),
                            }
                            Duration::from_millis(200)
                        }
                        Outcome::Other(what) => {
                            counts.other.push(format!("{what} after {took:?}"));
                            Duration::from_millis(200)
                        }
                    }
                };
                tokio::time::sleep(pause).await;
            }
        }));
    }

    // Load on a healthy store, then the outage.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = counts.lock().unwrap().accepted;
    assert!(before > 0, "no command was accepted before the outage");
    assert_eq!(ready(&http, &server).await.0, 200);
    postgres.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, body) = ready(&http, &server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_ne!(body["checks"]["eventStore"], "ok", "{body}");
    // Reads of the read store (on the same database) are answered 503 too, not 500.
    let some_order = counts.lock().unwrap().orders.keys().next().cloned().unwrap();
    let read = http.get(server.url(&format!("/api/queries/orders/{some_order}"))).send().await.unwrap();
    assert_eq!(read.status(), 503);
    assert!(read.headers().contains_key("retry-after"));
    assert_eq!(read.json::<Value>().await.unwrap()["code"], "UNAVAILABLE");
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let during = counts.lock().unwrap().unavailable;
    postgres.start();

    // Back: ready again by itself, and commands accepted again.
    let back = Instant::now();
    loop {
        let (status, body) = ready(&http, &server).await;
        if status == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "not ready 30 s after PostgreSQL returned: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed_after = back.elapsed();
    let accepted_at_return = counts.lock().unwrap().accepted;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let mut counts = Arc::try_unwrap(counts).ok().unwrap().into_inner().unwrap();
    // Each command answered 503 is sent again with the id the answer gave: whether or not it
    // committed during the outage, it is now acknowledged, and stored once.
    let unknown = std::mem::take(&mut counts.unknown);
    for (customer, command_id) in &unknown {
        match place(&http, &server.base, customer, Some(command_id)).await {
            Outcome::Accepted { id, position } => {
                counts.orders.insert(id, (customer.clone(), position));
            }
            _ => panic!("command {command_id} sent again after the outage was not accepted"),
        }
    }
    assert!(counts.accepted > accepted_at_return, "no command accepted after PostgreSQL returned");
    assert!(during > 0, "no command was answered 503 while PostgreSQL was down");
    assert_eq!(counts.unavailable_without_retry_after, 0, "every 503 carries Retry-After");
    assert!(counts.other.is_empty(), "answers other than 202 and 503: {:?}", counts.other);
    assert!(counts.slowest <= BUDGET, "a command took {:?}", counts.slowest);

    // Every acknowledged order is in the read model, at its version, once the projections
    // caught up with the last acknowledged position.
    let last = counts.orders.values().map(|(_, position)| *position).max().unwrap();
    let caught_up = Instant::now();
    for (id, _) in counts.orders.iter() {
        let doc = caught_up_document(&http, &server, &format!("orders/{id}"), last).await;
        assert_eq!(doc["version"], 1, "{doc}");
    }
    let caught_up = caught_up.elapsed();

    // The store: each acknowledged order once; and the read models equal its fold.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT aggregate_id, count(*) FROM nexus.events WHERE event_type = 'OrderPlaced' GROUP BY aggregate_id",
            &[],
        )
        .await
        .unwrap();
    let stored: HashMap<String, i64> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    for id in counts.orders.keys() {
        assert_eq!(stored.get(id), Some(&1), "acknowledged order {id} is stored once");
    }
    assert_eq!(stored.len(), counts.orders.len(), "every stored order was acknowledged (none twice)");
    let rows = client
        .query(
            "SELECT payload->>'customerId', count(*) FROM nexus.events WHERE event_type = 'OrderPlaced' \
             GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    let head: i64 = client.query_one("SELECT max(position) FROM nexus.events", &[]).await.unwrap().get(0);
    let mut folded = 0;
    for row in rows {
        let (customer, placed): (String, i64) = (row.get(0), row.get(1));
        let doc = caught_up_document(&http, &server, &format!("customers/{customer}"), head as u64).await;
        assert_eq!(doc["orderCount"], placed, "customer {customer}: the read model is the store's fold");
        folded += placed;
    }
    let orders_total: Value =
        http.get(server.url("/api/queries/orders?limit=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(orders_total["total"], folded, "one order document per stored order: {orders_total}");
    eprintln!(
        "postgres outage: {} commands sent, {} accepted ({before} before the outage), {} answered 503 \
         ({during} during it) and accepted when sent again, {} stored orders, slowest answer {:?}, ready again {:?} after the \
         restart, read models caught up {caught_up:?} later, {:?} in all",
        counts.sent,
        counts.accepted,
        counts.unavailable,
        folded,
        counts.slowest,
        resumed_after,
        started.elapsed()
    );
}
