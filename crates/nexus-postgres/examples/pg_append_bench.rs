//! Append throughput and latency on PostgreSQL, next to the raw single-row INSERT rate measured
//! the same way on the same machine.
//!
//! 1. `writers` concurrent tasks append for `seconds`, each to its own aggregate, `events` events
//!    per append, through one `PostgresBackend` (one appender: group commit under the lock).
//! 2. The same number of tasks, each on its own connection, do single-row `INSERT`s into a scratch
//!    table, one commit each (autocommit).
//!
//! ```text
//! cargo run --release -p nexus-postgres --example pg_append_bench
//! ```
//! Environment: `NEXUS_BENCH_POSTGRES_URL` (else `NEXUS_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`), `NEXUS_BENCH_SECONDS` (10), `NEXUS_BENCH_WRITERS`
//! (32), `NEXUS_BENCH_EVENTS` (1). Works in a scratch schema that it drops at the end.

use std::sync::Arc;
use std::time::Duration;

use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
use nexus_core::{EventMetadata, EventStore};
use nexus_postgres::PostgresBackend;
use serde_json::json;
use tokio::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Run {
    operations: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn from(results: Vec<Vec<Duration>>, elapsed: Duration) -> Self {
        let mut latencies: Vec<Duration> = results.into_iter().flatten().collect();
        latencies.sort_unstable();
        Self { operations: latencies.len(), elapsed, latencies }
    }

    fn rate(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("NEXUS_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("NEXUS_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let seconds = setting("NEXUS_BENCH_SECONDS", 10);
    let writers = setting("NEXUS_BENCH_WRITERS", 32) as usize;
    let events_per_append = setting("NEXUS_BENCH_EVENTS", 1) as usize;
    let duration = Duration::from_secs(seconds);
    let schema = format!("nexus_bench_{}", std::process::id());

    let backend = PostgresBackend::connect(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {url}: {e}"));

    // 1. Appends through the event store.
    let store: Arc<dyn EventStore> = backend.event_store();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                let aggregate_id = format!("bench-{writer}");
                let mut latencies = Vec::new();
                let mut version = 0u64;
                while Instant::now() < deadline {
                    let events = (0..events_per_append)
                        .map(|i| NewEvent {
                            event_id: format!("{aggregate_id}-{}", version + i as u64 + 1),
                            event_type: "BenchmarkEvent".into(),
                            timestamp: "2026-01-01T00:00:00.000Z".into(),
                            payload: json!({"writer": writer, "n": version + i as u64 + 1, "note": "a small event"}).into(),
                            metadata: EventMetadata {
                                correlation_id: "bench".into(),
                                causation_id: "bench".into(),
                                user_id: "bench".into(),
                                schema_version: "1".into(),
                            },
                        })
                        .collect();
                    let request = AppendRequest {
                        aggregate_id: aggregate_id.clone(),
                        aggregate_type: "Bench".into(),
                        expected_version: version,
                        events,
                        command: None,
                    };
                    let at = Instant::now();
                    match store.append(request).await {
                        Ok(AppendOutcome::Committed(stored)) => version += stored.len() as u64,
                        other => panic!("append failed: {other:?}"),
                    }
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("writer"));
    }
    let appends = Run::from(results, started.elapsed());

    // 2. Raw single-row INSERTs, one commit each, on as many connections.
    let mut clients = Vec::new();
    for _ in 0..writers {
        let (client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute(&format!("SET search_path TO {schema}")).await.expect("search_path");
        clients.push(client);
    }
    clients[0]
        .batch_execute(
            "CREATE TABLE raw_inserts (id BIGSERIAL PRIMARY KEY, writer INT NOT NULL, n BIGINT NOT NULL, \
             payload JSONB NOT NULL)",
        )
        .await
        .expect("scratch table");
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(writer, client)| {
            tokio::spawn(async move {
                let insert = client
                    .prepare("INSERT INTO raw_inserts (writer, n, payload) VALUES ($1, $2, $3::text::jsonb)")
                    .await
                    .expect("prepare");
                let writer = writer as i32;
                let mut latencies = Vec::new();
                let mut n = 0i64;
                while Instant::now() < deadline {
                    n += 1;
                    let payload = json!({"writer": writer, "n": n, "note": "a small event"}).to_string();
                    let at = Instant::now();
                    client.execute(&insert, &[&writer, &n, &payload]).await.expect("insert");
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("writer"));
    }
    let raw = Run::from(results, started.elapsed());

    // How many appends each commit carried.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let row = client
        .query_one(&format!("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM {schema}.events"), &[])
        .await
        .expect("commit count");
    let (events, commits): (i64, i64) = (row.get(0), row.get(1));
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop scratch schema");

    println!(
        "nexus-postgres append (group commit under the advisory lock), {writers} writers, \
         {events_per_append} event(s)/append, {:.1} s:",
        appends.elapsed.as_secs_f64()
    );
    println!(
        "  {:.0} appends/s, {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms; {events} events in {commits} commits \
         ({:.1} appends/commit)",
        appends.rate(),
        appends.rate() * events_per_append as f64,
        appends.percentile_ms(0.50),
        appends.percentile_ms(0.99),
        appends.operations as f64 / commits.max(1) as f64,
    );
    println!(
        "raw single-row INSERT, one commit each, {writers} connections, {:.1} s:",
        raw.elapsed.as_secs_f64()
    );
    println!(
        "  {:.0} inserts/s, p50 {:.2} ms, p99 {:.2} ms",
        raw.rate(),
        raw.percentile_ms(0.50),
        raw.percentile_ms(0.99)
    );
}
