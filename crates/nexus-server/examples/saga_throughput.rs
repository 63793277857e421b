//! Throughput and duration of the reference `OrderFulfillment` saga on the embedded store.
//!
//! Starts a server in-process (SQLite in a temporary directory, `[process-managers]
//! order-fulfillment = true`), stocks `PRODUCTS` products and opens `ACCOUNTS` accounts, then places orders of one
//! item each (a 3-step saga: ReserveStock → ChargePayment → ConfirmOrder) from `--concurrency`
//! HTTP clients, optionally paced at `--rate` orders/s. It waits until every saga completed and
//! reads the timestamps of their events back:
//!
//! - throughput: sagas completed / (last `SagaCompleted` − first `OrderPlaced`);
//! - saga duration: `SagaStarted` → `SagaCompleted`, and end to end `OrderPlaced` →
//!   `SagaCompleted` (which adds the process manager's pick-up), p50/p90/p99/max. Event
//!   timestamps have millisecond resolution.
//!
//! Run: `cargo run --release -p nexus-server --example saga_throughput -- --orders 5000
//! --concurrency 32 [--rate 200]`. The clients share the process (and its cores) with the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const PRODUCTS: usize = 200;
const ACCOUNTS: usize = 200;

struct Args {
    orders: usize,
    concurrency: usize,
    rate: f64,
}

fn args() -> Args {
    let mut args = Args { orders: 5000, concurrency: 32, rate: 0.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--orders" => args.orders = value.parse().expect("--orders N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            "--rate" => args.rate = value.parse().expect("--rate R (orders/s, 0 = as fast as possible)"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn at(event: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap().to_utc()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let mut config = nexus_server::Config::embedded(dir.path());
    config.process_managers.insert("order-fulfillment".into(), true);
    config.rate_limits.list_per_window = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus_server::run(config, nexus_domain::domain(), listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).build().unwrap();
    let post = {
        let (http, base) = (http.clone(), base.clone());
        move |path: String, body: Value| {
            let http = http.clone();
            let url = format!("{base}{path}");
            async move {
                let response = http.post(url).json(&body).send().await.expect("POST");
                assert_eq!(response.status().as_u16(), 202, "{}", response.text().await.unwrap());
            }
        }
    };
    for i in 0..PRODUCTS {
        post(
            "/api/commands/AddStock".into(),
            json!({"aggregateId": format!("p-{i}"), "quantity": 1_000_000_000u64}),
        )
        .await;
    }
    for i in 0..ACCOUNTS {
        post(
            "/api/commands/OpenAccount".into(),
            json!({"aggregateId": format!("c-{i}"), "creditLimit": 1e12}),
        )
        .await;
    }

    println!(
        "placing {} orders from {} clients{}",
        args.orders,
        args.concurrency,
        if args.rate > 0.0 { format!(" at {} orders/s", args.rate) } else { " as fast as possible".into() }
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (next, post, rate, orders) = (next.clone(), post.clone(), args.rate, args.orders);
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    break;
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let body = json!({
                    "aggregateId": format!("o-{i}"),
                    "customerId": format!("c-{}", i % ACCOUNTS),
                    "items": [{"productId": format!("p-{}", (i * 7) % PRODUCTS), "quantity": 1, "unitPrice": 9.5}]
                });
                post("/api/commands/PlaceOrder".into(), body).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let placed_in = started.elapsed();
    println!(
        "placed in {:.2} s ({:.0} orders/s)",
        placed_in.as_secs_f64(),
        args.orders as f64 / placed_in.as_secs_f64()
    );

    // Wait for the sagas through the `sagas` read model.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let page: Value = http
            .get(format!("{base}/api/admin/sagas?status=COMPLETED&sagaType=OrderFulfillment&limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["total"].as_u64().unwrap_or(0) as usize >= args.orders {
            break;
        }
        assert!(Instant::now() < deadline, "sagas did not complete: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("all sagas completed {:.2} s after the first order", started.elapsed().as_secs_f64());

    let mut saga_ms = Vec::with_capacity(args.orders);
    let mut end_to_end_ms = Vec::with_capacity(args.orders);
    let (mut first_placed, mut last_completed): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    for i in 0..args.orders {
        let get = |id: String| {
            let http = http.clone();
            let url = format!("{base}/api/events/{id}");
            async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let order = get(format!("o-{i}")).await;
        let saga = get(format!("fulfillment:o-{i}")).await;
        let placed = at(&order["events"][0]);
        let events = saga["events"].as_array().unwrap();
        assert_eq!(events.last().unwrap()["eventType"], "SagaCompleted");
        let (begin, end) = (at(&events[0]), at(events.last().unwrap()));
        saga_ms.push((end - begin).num_microseconds().unwrap() as f64 / 1000.0);
        end_to_end_ms.push((end - placed).num_microseconds().unwrap() as f64 / 1000.0);
        first_placed = Some(first_placed.map_or(placed, |t| t.min(placed)));
        last_completed = Some(last_completed.map_or(end, |t| t.max(end)));
    }
    let span = (last_completed.unwrap() - first_placed.unwrap()).num_milliseconds() as f64 / 1000.0;
    println!("throughput: {:.0} sagas/s ({} sagas in {:.2} s)", args.orders as f64 / span, args.orders, span);
    for (name, mut samples) in
        [("SagaStarted → SagaCompleted", saga_ms), ("OrderPlaced → SagaCompleted", end_to_end_ms)]
    {
        samples.sort_by(f64::total_cmp);
        println!(
            "{name}: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&samples, 0.50),
            percentile(&samples, 0.90),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
