//! The read side at scale, through the real ports: the orders projection run from N events, then
//! rebuilt beside the live model and swapped in, then full-text search with facets over the N
//! resulting documents, then one order in five moved on (shipped or cancelled) and lists by
//! status, by total and by customer over them.
//!
//! `cargo run --release -p nexus-runtime --example read_side_scale -- [sqlite|postgres] [N]`
//! (PostgreSQL from `NEXUS_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! in a fresh schema `scale_<pid>` left for inspection: drop it with `DROP SCHEMA … CASCADE`).
//! With `NEXUS_SCALE_DIR=<dir>` the embedded stores live there and are kept; a second run on
//! the same directory only searches and lists (for profiling them); so does
//! `NEXUS_SCALE_SCHEMA=<schema>` on PostgreSQL, naming a schema an earlier run left.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_core::ports::{AppendRequest, Filter, ListQuery, NewEvent, SortOrder};
use nexus_core::{EventMetadata, EventStore, ReadStore, SearchQuery};
use nexus_runtime::{Notifier, ProjectionRunner, ProjectionStatus};
use serde_json::json;

const WORDS: [&str; 12] = [
    "widget", "gadget", "gizmo", "sprocket", "lever", "bolt", "crate", "valve", "pulley", "gear", "cog",
    "spring",
];

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let backend = args.next().unwrap_or_else(|| "sqlite".into());
    let total: u64 = args.next().map(|n| n.parse().expect("N")).unwrap_or(1_000_000);
    let temporary = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("NEXUS_SCALE_DIR").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| temporary.path().to_owned());
    let kept_schema = std::env::var("NEXUS_SCALE_SCHEMA").ok();
    let schema = kept_schema.clone().unwrap_or_else(|| format!("scale_{}", std::process::id()));
    let search_only = (kept.is_some() && dir.join("read.db").exists()) || kept_schema.is_some();
    let mut embedded = None;
    let mut postgres = None;
    let (events, read): (Arc<dyn EventStore>, Arc<dyn ReadStore>) = match backend.as_str() {
        "sqlite" => {
            std::fs::create_dir_all(&dir).unwrap();
            let read = Arc::new(nexus_sqlite::SqliteReadStore::open(&dir).unwrap());
            embedded = Some(read.clone());
            (Arc::new(nexus_sqlite::SqliteEventStore::open(&dir).unwrap()), read)
        }
        "postgres" => {
            let url = std::env::var("NEXUS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let backend = nexus_postgres::PostgresBackend::connect(&url, &schema).await.unwrap();
            postgres = Some(backend.read_store());
            (backend.event_store(), backend.read_store())
        }
        other => panic!("unknown backend {other}"),
    };
    println!("backend {backend}, {total} orders");
    // What the server does at start for the orders projection: index the fields its lists use.
    let started = Instant::now();
    let projection = nexus_domain::domain().projection_named("orders").unwrap().clone();
    read.index_fields("orders", projection.list_fields()).await.unwrap();
    println!("indexed {:?} for lists in {:.1} s", projection.list_fields(), started.elapsed().as_secs_f64());
    if !search_only {
        load(total, &events, &read, embedded, postgres).await;
    }
    search(total, &read).await;
    if !search_only {
        move_orders(total, &events, &read).await;
    }
    // A schema or directory an earlier run left may hold other statuses: totals are checked
    // only against what this run wrote.
    list(total, &read, !search_only).await;
}

/// Appends one request per order id in `ids`, 1,000 at a time by 4 writers (the store's group
/// commit puts concurrent appends in few transactions).
async fn append_orders(events: &Arc<dyn EventStore>, ids: Vec<u64>, request: fn(u64) -> AppendRequest) {
    let mut writers = Vec::new();
    for part in ids.chunks(ids.len().div_ceil(4).max(1)) {
        let (events, part) = (events.clone(), part.to_vec());
        writers.push(tokio::spawn(async move {
            for chunk in part.chunks(1000) {
                let requests: Vec<_> = chunk
                    .iter()
                    .map(|&id| {
                        let events = events.clone();
                        tokio::spawn(async move { events.append(request(id)).await })
                    })
                    .collect();
                for request in requests {
                    request.await.unwrap().unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

/// The status order `id` ends with: one in ten shipped, one in ten cancelled, the rest placed.
/// The orders projection, running from its checkpoint: its status, its stop signal, its task.
fn start_orders_projection(
    events: &Arc<dyn EventStore>,
    read: &Arc<dyn ReadStore>,
) -> (Arc<ProjectionStatus>, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let projection = nexus_domain::domain().projection_named("orders").unwrap().clone();
    let runner = ProjectionRunner::new(projection, events.clone(), read.clone(), Notifier::new(16), 5000);
    let status = runner.status();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    (status, stop, tokio::spawn(runner.run(stopped)))
}

/// Waits until the projection has applied every event the store holds now; answers that head.
async fn caught_up(status: &ProjectionStatus, events: &Arc<dyn EventStore>) -> u64 {
    let head = events.head().await.unwrap();
    while status.checkpoint() < head {
        assert_eq!(status.last_error(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    head
}

fn final_status(id: u64) -> &'static str {
    match id % 10 {
        1 => "SHIPPED",
        2 => "CANCELLED",
        _ => "PLACED",
    }
}

/// Ships one order in ten and cancels another (an update of its document that moves it to
/// another status), and projects that with the live model's runner.
async fn move_orders(total: u64, events: &Arc<dyn EventStore>, read: &Arc<dyn ReadStore>) {
    let started = Instant::now();
    let moved: Vec<u64> = (0..total).filter(|&id| final_status(id) != "PLACED").collect();
    let count = moved.len();
    append_orders(events, moved, |id| {
        let (event_type, payload) = match final_status(id) {
            "SHIPPED" => ("OrderShipped", json!({})),
            _ => ("OrderCancelled", json!({"reason": "changed my mind"})),
        };
        AppendRequest {
            aggregate_id: format!("order-{id}"),
            aggregate_type: "Order".into(),
            expected_version: 1,
            events: vec![NewEvent {
                event_id: format!("m-{id}"),
                event_type: event_type.into(),
                timestamp: "2026-11-02T00:00:00.000Z".into(),
                payload: payload.into(),
                metadata: EventMetadata { schema_version: "1".into(), ..EventMetadata::default() },
            }],
            command: None,
        }
    })
    .await;
    let appended = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (status, stop, task) = start_orders_projection(events, read);
    caught_up(&status, events).await;
    let projected = started.elapsed().as_secs_f64();
    stop.send(true).unwrap();
    task.await.unwrap();
    println!(
        "moved {count} orders (shipped or cancelled): appended in {appended:.1} s ({:.0} events/s), \
         projected in {projected:.1} s ({:.0} events/s, each an update that changes the status)",
        count as f64 / appended,
        count as f64 / projected
    );
}

/// A list shape: the `n`th query of it, and the total it must answer.
type Shape<'a> = Box<dyn Fn(usize) -> (ListQuery, u64) + 'a>;

/// Lists: by status (a few pages deep), by total (descending), and one customer's orders; with
/// `check`, each total against what the example wrote.
async fn list(total: u64, read: &Arc<dyn ReadStore>, check: bool) {
    let placed = (0..total).filter(|&id| final_status(id) == "PLACED").count() as u64;
    let query = |filters: Vec<Filter>, sort: Option<(String, SortOrder)>, offset| ListQuery {
        filters,
        sort,
        limit: 20,
        offset,
    };
    let shapes: [(&str, Shape); 3] = [
        (
            "status=PLACED&limit=20 (offsets 0, 20, 200, 1000)",
            Box::new(|n| {
                let status = Filter { field: "status".into(), value: "PLACED".into() };
                (query(vec![status], None, [0, 20, 200, 1000][n % 4]), placed)
            }),
        ),
        (
            "sort=total:desc&limit=20",
            Box::new(|_| (query(vec![], Some(("total".into(), SortOrder::Desc)), 0), total)),
        ),
        (
            "customerId=customer-N&limit=20",
            Box::new(|n| {
                let customer =
                    Filter { field: "customerId".into(), value: format!("customer-{}", n * 7 % 5000) };
                let orders = (0..total).filter(|id| id % 5000 == (n * 7 % 5000) as u64).count() as u64;
                (query(vec![customer], None, 0), orders)
            }),
        ),
    ];
    for (shape, make) in &shapes {
        let mut latencies = Vec::new();
        for n in 0..300 {
            let (query, expected) = make(n);
            let started = Instant::now();
            let page = read.list("orders", &query).await.unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            if check {
                assert_eq!(page.total, expected, "{shape}: the total is exact");
                let expected = expected.saturating_sub(query.offset as u64).min(20);
                assert_eq!(page.items.len() as u64, expected, "{shape}");
            }
        }
        println!(
            "list {shape} over {total} documents (300 lists): p50 {:.1} ms, p99 {:.1} ms",
            percentile(&mut latencies.clone(), 0.5),
            percentile(&mut latencies, 0.99)
        );
    }
}

/// Appends `total` orders, projects them, rebuilds the projection and waits for the sweep.
async fn load(
    total: u64,
    events: &Arc<dyn EventStore>,
    read: &Arc<dyn ReadStore>,
    embedded: Option<Arc<nexus_sqlite::SqliteReadStore>>,
    postgres: Option<Arc<nexus_postgres::PostgresReadStore>>,
) {
    // N OrderPlaced events, one per order, appended 1,000 per transaction by 4 writers.
    let started = Instant::now();
    let per_writer = total / 4;
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let events = events.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while n < per_writer {
                let mut requests = Vec::new();
                for _ in 0..1000.min(per_writer - n) {
                    let id = w * per_writer + n;
                    n += 1;
                    let word = WORDS[(id % 12) as usize];
                    let payload = json!({"customerId": format!("customer-{}", id % 5000),
                        "items": [{"productId": format!("{word}-{}", id % 97), "quantity": 1 + id % 5, "unitPrice": 10.0}],
                        "total": (10 * (1 + id % 5)) as f64});
                    let events = events.clone();
                    let request = AppendRequest {
                        aggregate_id: format!("order-{id}"),
                        aggregate_type: "Order".into(),
                        expected_version: 0,
                        events: vec![NewEvent {
                            event_id: format!("e-{id}"),
                            event_type: "OrderPlaced".into(),
                            timestamp: "2026-11-01T00:00:00.000Z".into(),
                            payload: payload.into(),
                            metadata: EventMetadata { schema_version: "1".into(), ..EventMetadata::default() },
                        }],
                        command: None,
                    };
                    // Concurrent appends: the store's group commit puts them in few transactions.
                    requests.push(tokio::spawn(async move { events.append(request).await }));
                }
                for request in requests {
                    request.await.unwrap().unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let appended = started.elapsed().as_secs_f64();
    println!("appended {total} events in {appended:.1} s ({:.0} events/s)", total as f64 / appended);

    // The orders projection from position 0 to the head: the same work a rebuild does.
    let started = Instant::now();
    let (status, stop, task) = start_orders_projection(events, read);
    let head = caught_up(&status, events).await;
    let projected = started.elapsed().as_secs_f64();
    println!(
        "projected {head} events into {total} documents in {projected:.1} s ({:.0} events/s)",
        head as f64 / projected
    );
    // A rebuild: every event again, into a shadow beside the live model, then the swap.
    let started = Instant::now();
    status.request_rebuild();
    let mut loaded = None;
    while status.rebuilds_completed() < 1 {
        assert_eq!(status.last_error(), None);
        if loaded.is_none() && status.rebuild().is_some_and(|r| r.target > 0 && r.position >= r.target) {
            loaded = Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rebuilt = started.elapsed().as_secs_f64();
    if let Some(loaded) = loaded {
        println!("  shadow loaded in {loaded:.1} s, swapped in {:.1} s more", rebuilt - loaded);
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    println!("rebuilt from {head} events in {rebuilt:.1} s ({:.0} events/s)", head as f64 / rebuilt);
    if let Some(store) = embedded {
        // The swapped-out model is deleted in the background; searches wait for that, so they
        // are not timed against the sweep.
        let started = Instant::now();
        while store.retired_models().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("  old model swept in {:.1} s after the swap", started.elapsed().as_secs_f64());
    }
    if let Some(store) = postgres {
        let started = Instant::now();
        while store.retired_models().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  old model swept (and vacuumed) in {:.1} s after the swap",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Search: one word, two words, a word with a filter; facets on status and tags.
async fn search(total: u64, read: &Arc<dyn ReadStore>) {
    let mut latencies = Vec::new();
    let mut by_kind: [Vec<f64>; 3] = Default::default();
    for n in 0..300 {
        let word = WORDS[n % 12];
        let (text, filters) = match n % 3 {
            0 => (word.to_owned(), vec![]),
            1 => (format!("{word} {}-{}", word, n % 97), vec![]),
            _ => (
                word.to_owned(),
                vec![nexus_core::ports::Filter {
                    field: "customerId".into(),
                    value: format!("customer-{}", n * 7 % 5000),
                }],
            ),
        };
        let query =
            SearchQuery { text, filters, facets: vec!["status".into(), "tags".into()], limit: 20, offset: 0 };
        let started = Instant::now();
        let results = read.search("orders", &query).await.unwrap();
        let took = started.elapsed().as_secs_f64() * 1000.0;
        latencies.push(took);
        by_kind[n % 3].push(took);
        assert!(n % 3 == 2 || results.total > 0);
    }
    // On SQLite the first search of a generation loads its doc values.
    println!("first search: {:.1} ms", latencies[0]);
    // Where the slowest fell: spread out, or together (a stall of the machine or the server).
    let mut slowest: Vec<(usize, f64)> = latencies.iter().copied().enumerate().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = slowest[..5].iter().map(|(n, ms)| format!("#{n} {ms:.1} ms")).collect();
    println!("slowest: {}", slowest.join(", "));
    println!(
        "search over {total} documents (300 queries, facets status+tags): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99)
    );
    for (kind, values) in ["one word", "two words", "one word + customerId filter"].iter().zip(&mut by_kind) {
        println!("  {kind}: p50 {:.1} ms, max {:.1} ms", percentile(values, 0.5), percentile(values, 1.0));
    }
    let mut no_facets = Vec::new();
    for n in 0..300 {
        let query = SearchQuery {
            text: format!("{} {}-{}", WORDS[n % 12], WORDS[n % 12], n % 97),
            filters: vec![],
            facets: vec![],
            limit: 20,
            offset: 0,
        };
        let started = Instant::now();
        read.search("orders", &query).await.unwrap();
        no_facets.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "search, two words, no facets: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut no_facets, 0.5),
        percentile(&mut no_facets, 0.99)
    );
}
