//! Append batches, each beside its ceiling measured the same way (one client, one durable commit
//! per iteration, throughput in rows):
//!
//! - `sqlite_append/N`: `SqliteEventStore::append` of N events to a new aggregate (WAL,
//!   `synchronous = FULL`: durable when it returns);
//! - `sqlite_raw_insert/N`: N plain `INSERT`s of the same payload text in one rusqlite
//!   transaction, same pragmas — the database's own limit for that commit;
//! - `postgres_append/N`: `PostgresEventStore::append` of N events (one appender transaction under
//!   the append lock);
//! - `postgres_raw_insert/N`: one `INSERT … SELECT jsonb_array_elements($1)` of N rows,
//!   autocommit, on one connection.
//!
//! A single client measures the cost of one commit of N rows; what group commit gains with many
//! concurrent clients is `nexus bench`'s figure (BENCHMARKS.md). PostgreSQL comes from
//! `NEXUS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); its part is
//! skipped with a message when the default is unreachable, and fails when the variable is set.
//! It works in a scratch schema that it drops at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use nexus_core::EventStore;
use nexus_core::ports::{AppendOutcome, AppendRequest};
use nexus_postgres::PostgresBackend;
use nexus_sqlite::SqliteEventStore;

const SIZES: [usize; 4] = [1, 10, 100, 1000];

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    // A synced commit takes 0.1–4 ms here: 20 samples are plenty and keep the run short.
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
}

/// Appends of `size` events to fresh aggregates through `store`.
fn bench_appends(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn EventStore>,
) {
    let next = AtomicU64::new(0);
    for size in SIZES {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.to_async(runtime).iter_batched(
                || {
                    let aggregate_id = format!("bench-{size}-{}", next.fetch_add(1, Ordering::Relaxed));
                    AppendRequest {
                        events: nexus_benches::new_events(&aggregate_id, size),
                        aggregate_id,
                        aggregate_type: "Order".into(),
                        expected_version: 0,
                        command: None,
                    }
                },
                |request| {
                    let store = store.clone();
                    async move {
                        match store.append(request).await {
                            Ok(AppendOutcome::Committed(events)) => assert_eq!(events.len(), size),
                            other => panic!("append failed: {other:?}"),
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
}

/// The payloads as one JSON array text, and as one text per row.
fn payloads(size: usize) -> (String, Vec<String>) {
    let rows: Vec<_> = (0..size as u64).map(nexus_benches::order_placed_payload).collect();
    (serde_json::to_string(&rows).expect("json"), rows.iter().map(|r| r.to_string()).collect())
}

fn sqlite(c: &mut Criterion) {
    let runtime = nexus_benches::runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteEventStore::open(dir.path()).expect("event store"));
    let mut group = c.benchmark_group("sqlite_append");
    configure(&mut group);
    bench_appends(&mut group, &runtime, store);
    group.finish();

    let mut conn = rusqlite::Connection::open(dir.path().join("raw.db")).expect("raw.db");
    conn.pragma_update(None, "journal_mode", "WAL").expect("WAL");
    conn.pragma_update(None, "synchronous", "FULL").expect("FULL");
    conn.execute_batch("CREATE TABLE raw_inserts (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .expect("scratch table");
    let mut group = c.benchmark_group("sqlite_raw_insert");
    configure(&mut group);
    for size in SIZES {
        let (_, rows) = payloads(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &rows, |b, rows| {
            b.iter(|| {
                let tx = conn.transaction().expect("begin");
                {
                    let mut insert =
                        tx.prepare_cached("INSERT INTO raw_inserts (payload) VALUES (?1)").expect("prepare");
                    for row in rows {
                        insert.execute([row]).expect("insert");
                    }
                }
                tx.commit().expect("commit");
            })
        });
    }
    group.finish();
}

fn postgres(c: &mut Criterion) {
    let runtime = nexus_benches::runtime();
    let (url, explicit) = nexus_benches::postgres_url();
    let schema = format!("nexus_bench_{}", std::process::id());
    let backend = match runtime.block_on(PostgresBackend::connect(&url, &schema)) {
        Ok(backend) => backend,
        Err(error) if !explicit => {
            eprintln!(
                "skipping the PostgreSQL benches: {url} is unreachable ({error}); set NEXUS_TEST_POSTGRES_URL"
            );
            return;
        }
        Err(error) => panic!("PostgreSQL at {url} (NEXUS_TEST_POSTGRES_URL): {error}"),
    };
    let mut group = c.benchmark_group("postgres_append");
    configure(&mut group);
    bench_appends(&mut group, &runtime, backend.event_store());
    group.finish();
    drop(backend);

    let client = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE TABLE {schema}.raw_inserts (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL)"
            ))
            .await
            .expect("scratch table");
        client
    });
    let insert = runtime
        .block_on(client.prepare(&format!(
            "INSERT INTO {schema}.raw_inserts (payload) SELECT value FROM jsonb_array_elements($1::text::jsonb)"
        )))
        .expect("prepare");
    let mut group = c.benchmark_group("postgres_raw_insert");
    configure(&mut group);
    for size in SIZES {
        let (array, _) = payloads(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &array, |b, array| {
            b.to_async(&runtime).iter(|| async {
                let inserted = client.execute(&insert, &[array]).await.expect("insert");
                assert_eq!(inserted, size as u64);
            })
        });
    }
    group.finish();
    runtime
        .block_on(client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")))
        .expect("drop the scratch schema");
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
