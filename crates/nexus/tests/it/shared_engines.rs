//! Services on shared engines: processes that die on the NATS core path delay their events by
//! seconds and lose none, and a consumer refuses an event of another store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Nexus, Schema, free_port, nats_url, postgres_url};
use serde_json::json;

/// `nexus serve --role ROLE` on PostgreSQL schema `schema` and NATS, every setting at its default
/// (stream and consumers named by the service and its store).
async fn serve(role: &str, schema: &str, port: u16, data_dir: &std::path::Path) -> Nexus {
    let (role, schema, data_dir) = (role.to_owned(), schema.to_owned(), data_dir.to_owned());
    Nexus::serve_on(port, move |command| {
        command
            .args(["--role", &role, "--data-dir"])
            .arg(&data_dir)
            .env("NEXUS_STORE_URL", postgres_url())
            .env("NEXUS_STORE_SCHEMA", &schema)
            .env("NEXUS_STREAM_URL", nats_url());
    })
    .await
}

/// Places orders through `base` from 4 clients until `stop`; every acknowledged order id is kept.
fn load(
    base: String,
    prefix: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = acknowledged.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut workers = Vec::new();
        for worker in 0..4 {
            let (client, base, stop, recorded) =
                (client.clone(), base.clone(), stop.clone(), recorded.clone());
            workers.push(tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("{prefix}-{worker}-{i}");
                    let body = json!({"aggregateId": id, "customerId": "c", "items": [{"productId": "p", "quantity": 1, "unitPrice": 1}]});
                    match client.post(format!("{base}/api/commands/PlaceOrder")).json(&body).send().await {
                        Ok(reply) if reply.status().as_u16() == 202 => recorded.lock().unwrap().push(id),
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
    });
    (task, acknowledged)
}

/// Waits (at most `within`) until every order of `ids` is in the `orders` model at `base`.
async fn all_visible(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut missing: Vec<&String> = ids.iter().collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for id in missing {
            let reply = client.get(format!("{base}/api/queries/orders/{id}")).send().await.unwrap();
            if reply.status().as_u16() != 200 {
                still.push(id);
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} orders missing after {within:?}, e.g. {}",
                missing.len(),
                ids.len(),
                missing[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_on_the_core_path_loses_nothing_and_is_caught_up_within_seconds() {
    let schema = Schema::fresh("nexus_catch_up");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let client = reqwest::Client::new();

    // Two all-role processes on one store and one NATS stream; one is killed under load.
    let survivor = serve("all", &schema.0, ports[0], dirs[0].path()).await;
    let victim = serve("all", &schema.0, ports[1], dirs[1].path()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (to_survivor, on_survivor) = load(survivor.base.clone(), "s", stop.clone());
    let (to_victim, on_victim) = load(victim.base.clone(), "v", stop.clone());
    let started = Instant::now();
    while on_victim.lock().unwrap().len() < 150 {
        assert!(started.elapsed() < Duration::from_secs(30), "load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.kill();
    let victim = serve("all", &schema.0, ports[1], dirs[1].path()).await;
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    to_survivor.await.unwrap();
    to_victim.await.unwrap();
    let mut acknowledged = on_survivor.lock().unwrap().clone();
    acknowledged.extend(on_victim.lock().unwrap().iter().cloned());
    let budget = Duration::from_secs(5).saturating_sub(restarted.elapsed());
    for process in [&survivor, &victim] {
        all_visible(&client, &process.base, &acknowledged, budget).await.unwrap();
    }
    eprintln!(
        "{} acknowledged orders visible {:?} after the restart",
        acknowledged.len(),
        restarted.elapsed()
    );

    // A query process killed while the command process keeps writing.
    let query_dir = tempfile::tempdir().unwrap();
    let query_port = free_port();
    let query = serve("query", &schema.0, query_port, query_dir.path()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (writing, written) = load(survivor.base.clone(), "q", stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    query.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let query = serve("query", &schema.0, query_port, query_dir.path()).await;
    let restarted = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writing.await.unwrap();
    let written = written.lock().unwrap().clone();
    assert!(written.len() > 20, "the command process kept writing: {}", written.len());
    let budget = Duration::from_secs(5).saturating_sub(restarted.elapsed());
    all_visible(&client, &query.base, &written, budget).await.unwrap();
    drop((survivor, victim, query));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refuses_an_event_of_another_store() {
    let schema = Schema::fresh("nexus_foreign");
    let dir = tempfile::tempdir().unwrap();
    let server = serve("all", &schema.0, free_port(), dir.path()).await;
    let client = reqwest::Client::new();
    let reply = client
        .post(server.url("/api/commands/PlaceOrder"))
        .json(
            &json!({"aggregateId": "own-1", "customerId": "c", "items": [{"productId": "p", "quantity": 1}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    all_visible(&client, &server.base, &["own-1".to_owned()], Duration::from_secs(10)).await.unwrap();

    // An event published by hand into the server's stream (named by the service and its store)
    // without this store's id, as a process of another store would.
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("nexus_foreign_events_total"), "nothing refused yet");
    let (pg, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = pg
        .query_one(&format!("SELECT value FROM {}.store_meta WHERE key = 'store_id'", schema.0), &[])
        .await
        .unwrap();
    let store_id: String = row.get(0);
    let stream = nexus_nats::NatsEventStream::connect(&nats_url(), &format!("nexus-{}", &store_id[..8]), 4)
        .await
        .unwrap();
    let foreign: nexus_core::DomainEvent = serde_json::from_value(json!({
        "eventId": "foreign-1", "eventType": "OrderPlaced", "aggregateId": "foreign-order",
        "aggregateVersion": 1, "position": 999_999, "timestamp": "2026-01-01T00:00:00.000Z",
        "payload": {"customerId": "x", "items": [{"productId": "p", "quantity": 1, "unitPrice": 1}], "total": 1},
        "metadata": {"correlationId": "c", "causationId": "c", "userId": "u", "schemaVersion": "1"}
    }))
    .unwrap();
    nexus_core::EventStream::publish(&stream, &[foreign]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l.starts_with("nexus_foreign_events_total{path=\"stream\"}")) {
            break;
        }
        assert!(Instant::now() < deadline, "the foreign event was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = client.get(server.url("/api/queries/orders/foreign-order")).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 404, "a foreign event was applied");
}
