//! SIGKILL at random moments under load (scenario 5): 20 rounds of the embedded server killed
//! and restarted on the same data directory, then 20 rounds of the `command` and `query` roles
//! on PostgreSQL killed and restarted. After each series no acknowledged event is lost and none is
//! applied twice: the read models equal a fold of the event store.
//!
//! The order load and the fold check live here and are shared with `nats.rs` and `disk.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::{Nexus, Schema, free_port, postgres_url};

/// The settings every chaos server gets: the fold check reads every order's events and pages
/// through whole read models, far beyond the default `list` rate limit.
pub(crate) fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("nexus-chaos.toml");
    std::fs::write(&path, "[rate-limits]\nlist = 0\n").unwrap();
    path
}

/// xorshift64*: enough randomness for kill moments, and a printed seed replays a run
/// (`NEXUS_CHAOS_SEED=<seed>`).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded(what: &str) -> Self {
        let seed = std::env::var("NEXUS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
        eprintln!("{what}: seed {seed} (NEXUS_CHAOS_SEED={seed} replays it)");
        Rng(seed.max(1))
    }

    /// A number in `low..high`.
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low)
    }
}

/// What the load sent and what it was told.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) sent: u64,
    pub(crate) accepted: u64,
    /// Answers other than 202, by status (or `timeout`, `connect`, `io` when there was none).
    pub(crate) other: BTreeMap<String, u64>,
    /// The first body of each status other than 202, to show what the server said.
    pub(crate) samples: BTreeMap<String, String>,
    /// Error answers that break the contract: a body without a string `code` and `message`, or
    /// a 503 without `Retry-After`.
    pub(crate) off_contract: Vec<String>,
    /// Order id → the highest version a 202 acknowledged.
    pub(crate) acknowledged: HashMap<String, u64>,
    /// The highest position a 202 acknowledged.
    pub(crate) max_position: u64,
    /// Every order id a PlaceOrder was sent for, answered or not: only these can be in the store.
    pub(crate) attempted: BTreeSet<String>,
}

impl Tally {
    pub(crate) fn summary(&self) -> String {
        format!(
            "sent {}, 202 {}, other {:?}, acknowledged orders {}",
            self.sent,
            self.accepted,
            self.other,
            self.acknowledged.len()
        )
    }
}

/// A client for the load and the checks: no request may hang longer than 10 s.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Concurrent PlaceOrder and ShipOrder (every other order is shipped) from `clients` clients
/// to `base`, with order ids `{prefix}-{client}-{n}` and 7 customers, until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(base: &str, prefix: &str, clients: usize, tally: &Arc<Mutex<Tally>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let http = client();
        let workers = (0..clients)
            .map(|worker| {
                let (http, base, stop, tally) = (http.clone(), base.to_owned(), stop.clone(), tally.clone());
                let prefix = format!("{prefix}-{worker}");
                tokio::spawn(async move {
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let id = format!("{prefix}-{n}");
                        tally.lock().unwrap().attempted.insert(id.clone());
                        let place = json!({
                            "aggregateId": id,
                            "customerId": format!("cust-{}", n % 7),
                            "items": [{"productId": "p", "quantity": 1 + n % 3, "unitPrice": 2}]
                        });
                        if !send(&http, &base, "PlaceOrder", place, &tally).await {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        if n % 2 == 0
                            && !send(&http, &base, "ShipOrder", json!({"aggregateId": id}), &tally).await
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the clients and waits for their last requests (each at most the client's timeout).
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
    }
}

/// Sends one command and records its answer; `true` on 202. The order id must be in
/// `attempted` already.
pub(crate) async fn send(
    http: &reqwest::Client,
    base: &str,
    command: &str,
    body: Value,
    tally: &Mutex<Tally>,
) -> bool {
    let id = body["aggregateId"].as_str().unwrap().to_owned();
    let outcome = match http.post(format!("{base}/api/commands/{command}")).json(&body).send().await {
        Ok(reply) if reply.status().as_u16() == 202 => match reply.json::<Value>().await {
            Ok(ack) => Ok((ack["version"].as_u64().unwrap(), ack["position"].as_u64().unwrap())),
            Err(_) => Err(("io".to_owned(), "202 without a readable body".to_owned())),
        },
        Ok(reply) => {
            let status = reply.status().as_u16();
            let retry_after = reply.headers().get("retry-after").cloned();
            let body = reply.text().await.unwrap_or_default();
            let error: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if !error["code"].is_string()
                || !error["message"].is_string()
                || (status == 503 && retry_after.is_none())
            {
                tally
                    .lock()
                    .unwrap()
                    .off_contract
                    .push(format!("{status} {body} (Retry-After {retry_after:?})"));
            }
            Err((status.to_string(), body))
        }
        Err(e) if e.is_timeout() => Err(("timeout".to_owned(), e.to_string())),
        Err(e) if e.is_connect() => Err(("connect".to_owned(), e.to_string())),
        Err(e) => Err(("io".to_owned(), e.to_string())),
    };
    let mut tally = tally.lock().unwrap();
    tally.sent += 1;
    match outcome {
        Ok((version, position)) => {
            tally.accepted += 1;
            let acknowledged = tally.acknowledged.entry(id).or_default();
            *acknowledged = (*acknowledged).max(version);
            tally.max_position = tally.max_position.max(position);
            true
        }
        Err((status, body)) => {
            *tally.other.entry(status.clone()).or_default() += 1;
            tally.samples.entry(status).or_insert(body);
            false
        }
    }
}

/// What the fold check counted.
#[derive(Debug)]
#[allow(dead_code, reason = "printed through Debug")]
pub(crate) struct Folded {
    pub(crate) events: u64,
    pub(crate) orders_in_store: usize,
    pub(crate) order_documents: usize,
    pub(crate) customer_documents: usize,
}

/// The core check, on the process at `base` (one that serves queries): within `within`, the read
/// models reach every acknowledged position (`minPosition`) and catch up with the store (lag 0);
/// then no acknowledged event is missing from the store, each order's versions are gap-free, each
/// `orders` document's version is its number of events in the store, there is no document
/// without events, and each customer's `orderCount` is its number of `OrderPlaced` events.
pub(crate) async fn check_fold(base: &str, tally: &Tally, within: Duration) -> Folded {
    let http = client();
    let deadline = Instant::now() + within;
    for model in ["orders", "customers"] {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now()).as_millis().clamp(1, 30_000);
            let url = format!(
                "{base}/api/queries/{model}?minPosition={}&timeoutMs={wait}&limit=1",
                tally.max_position
            );
            let status = match http.get(url).send().await {
                Ok(reply) => reply.status().as_u16().to_string(),
                Err(e) => e.to_string(),
            };
            if status == "200" {
                break;
            }
            if Instant::now() >= deadline {
                let projections = match http.get(format!("{base}/api/admin/projections")).send().await {
                    Ok(reply) => reply.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                let documents = list_all(&http, base, "orders").await;
                let behind = tally
                    .acknowledged
                    .iter()
                    .filter(|(id, version)| {
                        documents.get(*id).and_then(|d| d["version"].as_u64()) < Some(**version)
                    })
                    .count();
                panic!(
                    "{model} did not reach acknowledged position {} within {within:?} (last answer {status}); \
                     {behind} of {} acknowledged orders missing from `orders` or behind; projections: {projections}",
                    tally.max_position,
                    tally.acknowledged.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Events stored but never acknowledged (the answer was lost with the process) come later
    // than the acknowledged positions: wait until nothing is left to apply.
    loop {
        let projections: Value =
            http.get(format!("{base}/api/admin/projections")).send().await.unwrap().json().await.unwrap();
        let behind: Vec<&Value> = projections["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| matches!(p["name"].as_str(), Some("orders" | "customers")) && p["lag"] != json!(0))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the projections did not catch up within {within:?}: {behind:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The store, order by order.
    let stored: Vec<(String, Vec<Value>)> = futures_util::stream::iter(tally.attempted.iter().cloned())
        .map(|id| {
            let http = http.clone();
            async move {
                let reply = http.get(format!("{base}/api/events/{id}")).send().await.unwrap();
                let events = match reply.status().as_u16() {
                    404 => Vec::new(),
                    200 => reply.json::<Value>().await.unwrap()["events"].as_array().unwrap().clone(),
                    status => {
                        panic!("GET /api/events/{id}: {status} {}", reply.text().await.unwrap_or_default())
                    }
                };
                (id, events)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut events_total = 0;
    let mut versions_in_store: HashMap<&str, u64> = HashMap::new();
    let mut placed_per_customer: HashMap<String, u64> = HashMap::new();
    for (id, events) in &stored {
        let versions: Vec<u64> = events.iter().map(|e| e["aggregateVersion"].as_u64().unwrap()).collect();
        assert_eq!(versions, (1..=events.len() as u64).collect::<Vec<_>>(), "{id}: versions gap-free");
        let placed: Vec<&Value> = events.iter().filter(|e| e["eventType"] == "OrderPlaced").collect();
        assert!(placed.len() <= 1, "{id} placed {} times", placed.len());
        if let Some(placed) = placed.first() {
            let customer = placed["payload"]["customerId"].as_str().unwrap().to_owned();
            *placed_per_customer.entry(customer).or_default() += 1;
        }
        events_total += events.len() as u64;
        if !events.is_empty() {
            versions_in_store.insert(id, events.len() as u64);
        }
    }
    for (id, acknowledged) in &tally.acknowledged {
        let stored = versions_in_store.get(id.as_str()).copied().unwrap_or(0);
        assert!(
            stored >= *acknowledged,
            "{id}: acknowledged at version {acknowledged}, {stored} events stored"
        );
    }

    // The read models against the store.
    let orders = list_all(&http, base, "orders").await;
    for (id, events) in &versions_in_store {
        let document =
            orders.get(*id).unwrap_or_else(|| panic!("{id} has {events} events, no orders document"));
        assert_eq!(
            document["version"].as_u64(),
            Some(*events),
            "{id}: document version vs events: {document}"
        );
    }
    let extra: Vec<&String> =
        orders.keys().filter(|id| !versions_in_store.contains_key(id.as_str())).collect();
    assert!(extra.is_empty(), "orders documents without events in the store: {extra:?}");
    let customers = list_all(&http, base, "customers").await;
    let counted: HashMap<String, u64> =
        customers.iter().map(|(id, doc)| (id.clone(), doc["orderCount"].as_u64().unwrap_or(0))).collect();
    assert_eq!(counted, placed_per_customer, "customers' orderCount vs OrderPlaced events per customer");

    Folded {
        events: events_total,
        orders_in_store: versions_in_store.len(),
        order_documents: orders.len(),
        customer_documents: customers.len(),
    }
}

/// Every document of `model`, by id, paged 1000 at a time.
async fn list_all(http: &reqwest::Client, base: &str, model: &str) -> HashMap<String, Value> {
    let mut documents = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/queries/{model}?limit=1000");
        if let Some(token) = &token {
            url.push_str("&nextToken=");
            for byte in token.bytes() {
                match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        url.push(byte as char)
                    }
                    _ => url.push_str(&format!("%{byte:02X}")),
                }
            }
        }
        let reply = http.get(url).send().await.unwrap();
        assert_eq!(reply.status().as_u16(), 200, "listing {model}");
        let page: Value = reply.json().await.unwrap();
        for document in page["items"].as_array().unwrap() {
            documents.insert(document["id"].as_str().unwrap().to_owned(), document.clone());
        }
        match page["nextToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return documents,
        }
    }
}

const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_killed_20_times_under_load_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut rng = Rng::seeded("embedded kills");
    let dir = tempfile::tempdir().unwrap();
    let (data_dir, config) = (dir.path().join("data"), config_file(dir.path()));
    let port = free_port();
    let serve = || {
        Nexus::serve_on(port, |command| {
            command.arg("--data-dir").arg(&data_dir).arg("--config").arg(&config);
        })
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let server = serve().await;
        let load = Load::start(&server.base, &format!("e{round}"), 8, &tally);
        let delay = rng.between(100, 800);
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        load.stop().await;
    }
    let server = serve().await;
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    eprintln!("embedded kills: delays {delays:?} ms; {}", tally.summary());
    assert!(tally.accepted > 100 * ROUNDS / 10, "the load got going: {}", tally.summary());
    assert!(tally.off_contract.is_empty(), "error answers off the contract: {:?}", tally.off_contract);
    let folded = check_fold(&server.base, &tally, Duration::from_secs(30)).await;
    eprintln!("embedded kills: {folded:?}; took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(90), "the embedded series took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_and_query_roles_killed_20_times_under_load_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let mut rng = Rng::seeded("role kills");
    let schema = Schema::fresh("nexus_chaos_kills");
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let serve = |role: &'static str, port: u16| {
        let (data_dir, config, schema) = (dir.path().join(role), config.clone(), schema.0.clone());
        Nexus::serve_on(port, move |command| {
            command
                .args(["--role", role, "--data-dir"])
                .arg(&data_dir)
                .arg("--config")
                .arg(&config)
                .env("NEXUS_STORE_URL", postgres_url())
                .env("NEXUS_STORE_SCHEMA", &schema);
        })
    };
    let (command_port, query_port) = (free_port(), free_port());
    let mut command = serve("command", command_port).await;
    let mut query = serve("query", query_port).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load = Load::start(&command.base, "r", 8, &tally);
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        let delay = rng.between(100, 800);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Both roles die in every run: the victims alternate, at random moments.
        if round % 2 == 0 {
            command.kill();
            command = serve("command", command_port).await;
            kills.push(("command", delay));
        } else {
            query.kill();
            query = serve("query", query_port).await;
            kills.push(("query", delay));
        }
    }
    load.stop().await;
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    eprintln!("role kills: {kills:?}; {}", tally.summary());
    assert!(tally.accepted > 100, "the load got going: {}", tally.summary());
    assert!(tally.off_contract.is_empty(), "error answers off the contract: {:?}", tally.off_contract);
    let folded = check_fold(&query.base, &tally, Duration::from_secs(30)).await;
    eprintln!("role kills: {folded:?}; took {:?}", started.elapsed());
    drop((command, query));
    assert!(started.elapsed() < Duration::from_secs(90), "the role series took {:?}", started.elapsed());
}
