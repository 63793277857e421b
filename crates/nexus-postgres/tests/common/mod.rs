//! Shared by the PostgreSQL tests: the server URL, a fresh schema per store, and its cleanup.
//!
//! The server is required: when it cannot be reached the tests fail (they never skip), saying
//! which URL they tried.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use nexus_postgres::PostgresBackend;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    std::env::var("NEXUS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A schema name no other test, test binary or concurrent run uses.
pub fn fresh_schema() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = RandomState::new().hash_one(std::time::SystemTime::now()) as u32;
    format!("nexus_test_{}_{}_{random:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Drops its schema (best effort) when dropped.
pub struct SchemaGuard {
    pub url: String,
    pub schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside a runtime (where blocking on a future panics) or outside one: a
        // thread of its own with its own small runtime works in both.
        // A few tries: the drop can lose a deadlock to a store's background work still running.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                for _ in 0..5 {
                    match client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await {
                        Ok(()) => return Some(()),
                        Err(error) => eprintln!("dropping test schema {schema}: {error}; trying again"),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                None
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test schema {}", self.schema);
        }
    }
}

fn unreachable(url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL is required at {url} ({error}): start PostgreSQL (e.g. `pg_ctlcluster 15 main start`) \
         or point NEXUS_TEST_POSTGRES_URL at one"
    )
}

/// A backend on a fresh schema, and the guard that drops it.
pub async fn backend() -> (PostgresBackend, SchemaGuard) {
    let url = url();
    let schema = fresh_schema();
    let guard = SchemaGuard { url: url.clone(), schema: schema.clone() };
    let backend = PostgresBackend::connect(&url, &schema).await.unwrap_or_else(|e| unreachable(&url, e));
    (backend, guard)
}

/// Another backend (another "process") on the schema of `guard`.
pub async fn another(guard: &SchemaGuard) -> PostgresBackend {
    PostgresBackend::connect(&guard.url, &guard.schema).await.unwrap_or_else(|e| unreachable(&guard.url, e))
}

/// A plain connection with the schema on its search path, as an operator's psql would be.
pub async fn raw_client(guard: &SchemaGuard) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&guard.url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| unreachable(&guard.url, e));
    tokio::spawn(connection);
    client.batch_execute(&format!("SET search_path TO {}", guard.schema)).await.unwrap();
    client
}
