//! PostgreSQL adapters for the Nexus ports: the scale-out backend, shared by every process of a
//! deployment (`nexus serve --role …` against one database).
//!
//! What it owns, all in one schema of one database:
//! - [`PostgresEventStore`]: the `events` log and the `commands` idempotency records.
//! - [`PostgresReadStore`]: read-model `documents` and projection `checkpoints`, written together.
//! - [`PostgresSnapshotStore`]: aggregate `snapshots`, beside the events the time sweep reads.
//! - [`PostgresSchemaStore`]: the schema registry's subjects, versions and settings.
//! - [`PostgresLeases`]: advisory-lock leases, so one process drives each saga.
//!
//! [`PostgresBackend::connect`] builds one connection pool for all three, and applies the
//! versioned migrations (recorded in `nexus_migrations`) in one transaction under a
//! `pg_advisory_xact_lock`, so several processes may start at once.
//!
//! # Architecture invariant
//!
//! 1. **Append-only in the database.** Triggers on `events` raise on `UPDATE`, `DELETE` (per row)
//!    and `TRUNCATE`; no code path here updates or deletes an event.
//! 2. **Positions are commit-ordered under the append lock.** A position is drawn only while the
//!    transaction holds the schema's append lock (`pg_advisory_xact_lock`), and PostgreSQL makes a
//!    commit visible before it releases the lock. So position `p` is visible before `p + 1` is
//!    drawn, and the change feed (`position > $after ORDER BY position`) never skips an event.
//! 3. **Every writer takes the lock.** The appender takes it first thing in each transaction, and
//!    a statement trigger on `INSERT INTO events` takes it too, so a writer that bypasses this
//!    crate still commits in lock order (it must still draw positions after the lock to succeed).
//!
//! # Why this design
//!
//! With a sequence (`bigserial`) position, a transaction that drew 41 can commit after one that
//! drew 42; a tailer that saw 42 never sees 41. Measured on this kind of machine with 16 writers,
//! the tailer lost 14.8 % of events at one event per transaction and 31.4 % at ten. Filtering on
//! the `xid` horizon is correct only with an `(xid, position)` cursor, and then the feed waits for
//! the oldest transaction anywhere in the cluster. Taking an advisory lock per transaction is
//! correct but serializes writers at one commit each (~1,100 events/s). Group commit keeps the
//! lock's simple single-integer checkpoint and was the fastest design measured: one appender per
//! process commits every queued append in one transaction under the lock (~12,200 events/s at one
//! event per append, ~76,800 at ten, nothing lost).
//!
//! # How an append commits
//!
//! `append` encodes its JSON on the caller's task and queues the append. The appender (one task
//! and one connection per process) takes everything queued, up to 1,024 appends, and sends
//! `BEGIN`, the lock, one `nexus_append(…)` call per append, the `pg_notify` and `COMMIT` in one
//! flush: one round trip and one synced commit for the whole batch. After answering a batch it
//! yields to the callers it woke, so those that append again at once join the next batch instead
//! of waiting a commit longer (measured: batches of 32 instead of 16 with 32 writers, ~40 % more
//! appends/s and a lower p50). `nexus_append` (migration 1)
//! checks the command id, the expected version and the event ids before it writes, so a refusal
//! (`Duplicate`, `WrongExpectedVersion`, a taken event id) is an answer, not an error, and needs
//! no savepoint. If an append still raises an error (say, a payload JSONB refuses), the batch
//! rolls back and is redone one append at a time, each in a savepoint: the bad one is refused
//! alone (`InvalidRequest`), its batch-mates commit. A broken connection fails the batch with
//! `Unavailable` (outcome unknown; a retry with the same command id is answered as a duplicate).
//!
//! `wait_past` is woken by `LISTEN nexus_events` on a connection of its own (reconnected in the
//! background), by this process's own commits, and, while someone waits, by reading the head at
//! most every 250 ms, so a lost notification only delays a waiter.
//!
//! TLS to the server follows libpq's `sslmode` and `sslrootcert` URL parameters (see the `tls`
//! module); every connection (pool, appender, listener, leases) uses the same connector. Trust
//! roots come from the caller ([`PostgresBackend::connect_with_roots`]): this crate reads no
//! environment.

mod event_store;
mod leases;
mod migrations;
mod read_store;
mod registry_store;
mod snapshot_store;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use nexus_core::StoreError;
use rustls::pki_types::CertificateDer;

pub use event_store::PostgresEventStore;
pub use leases::PostgresLeases;
pub use read_store::PostgresReadStore;
pub use registry_store::PostgresSchemaStore;
pub use snapshot_store::PostgresSnapshotStore;

/// Connections kept by the shared pool (reads, read-model commits, snapshots). Appends do not use
/// it: the appender and the change-feed listener have a connection each.
const POOL_SIZE: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first key of the schema's append lock; the second is `hashtext(schema)`. The same number
/// is written in the `events` insert trigger (migration 1).
pub(crate) const APPEND_LOCK_CLASS: i32 = 0x4E58_4150; // "NXAP"
/// The first key of the schema's migration lock.
pub(crate) const MIGRATION_LOCK_CLASS: i32 = 0x4E58_4D47; // "NXMG"

/// The three stores of one schema, sharing one connection pool.
pub struct PostgresBackend {
    schema: String,
    store_id: String,
    events: Arc<PostgresEventStore>,
    reads: Arc<PostgresReadStore>,
    snapshots: Arc<PostgresSnapshotStore>,
    schemas: Arc<PostgresSchemaStore>,
    leases: Arc<PostgresLeases>,
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user@host:port/db`), creates `schema` if missing, applies
    /// the migrations, and starts the appender and the change-feed listener on the current tokio
    /// runtime. `schema` is 1–63 characters of `[a-z0-9_]`, not starting with a digit.
    ///
    /// Errors: `InvalidRequest` for a malformed URL or schema name, `Unavailable` when the server
    /// cannot be reached or refuses the migrations.
    ///
    /// TLS as libpq's `sslmode` and `sslrootcert` in the URL say; `verify-ca` and `verify-full`
    /// need an `sslrootcert` file here, as no other root is trusted (see
    /// [`connect_with_roots`](Self::connect_with_roots)).
    pub async fn connect(url: &str, schema: &str) -> Result<Self, StoreError> {
        Self::connect_with_roots(url, schema, &[]).await
    }

    /// As [`connect`](Self::connect), trusting `roots` to sign the server's certificate when the
    /// URL asks for it to be checked (`sslmode=verify-ca` or `verify-full`) and names no
    /// `sslrootcert` file (or names `system`).
    pub async fn connect_with_roots(
        url: &str,
        schema: &str,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, StoreError> {
        let schema = valid_schema(schema)?;
        let (url, tls_params) = tls::split_url(url)?;
        let mut config = session_config(&url, &schema)?;
        let tls = tls::connector(&tls_params, &mut config, roots)?;
        let mut pool_config = config.clone();
        // Custom plans for the pool's queries: a generic plan cached while a table was small
        // (a sequential scan and a sort for the change feed) would stay as the table grows.
        // No JIT: its compile time is paid on every execution, and for a search over 80,000 of
        // a million documents it was 209 of 583 ms (measured with EXPLAIN ANALYZE).
        let options = pool_config.get_options().unwrap_or_default().to_owned();
        pool_config.options(format!("{options} -c plan_cache_mode=force_custom_plan -c jit=off"));
        let manager = Manager::from_config(
            pool_config,
            tls.clone(),
            // Fast: a closed connection is noticed without a round trip; a broken one fails its
            // query with `Unavailable` and is dropped.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        migrations::apply(&pool, &schema).await?;
        let store_id: String = {
            let client = pool.get().await.map_err(pool_unavailable)?;
            client
                .query_one("SELECT value FROM store_meta WHERE key = 'store_id'", &[])
                .await
                .map_err(unavailable)?
                .get(0)
        };
        let leases = Arc::new(PostgresLeases::new(config.clone(), tls.clone(), schema.clone()));
        let events = PostgresEventStore::start(config, tls, pool.clone(), schema.clone()).await?;
        Ok(Self {
            events: Arc::new(events),
            reads: Arc::new(PostgresReadStore::new(pool.clone())),
            snapshots: Arc::new(PostgresSnapshotStore::new(pool.clone())),
            schemas: Arc::new(PostgresSchemaStore::new(pool)),
            leases,
            schema,
            store_id,
        })
    }

    /// The store's identity: 32 hex digits drawn when the schema was created, the same for every
    /// process on it and different for every other store.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    pub fn event_store(&self) -> Arc<PostgresEventStore> {
        self.events.clone()
    }

    pub fn read_store(&self) -> Arc<PostgresReadStore> {
        self.reads.clone()
    }

    pub fn snapshot_store(&self) -> Arc<PostgresSnapshotStore> {
        self.snapshots.clone()
    }

    pub fn schema_store(&self) -> Arc<PostgresSchemaStore> {
        self.schemas.clone()
    }

    /// Advisory-lock leases (one driver per saga across processes), on a connection of their own.
    pub fn leases(&self) -> Arc<PostgresLeases> {
        self.leases.clone()
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }
}

/// Schema names are restricted so they need no quoting anywhere (`search_path`, identifiers,
/// notification payloads) and fold to themselves.
fn valid_schema(schema: &str) -> Result<String, StoreError> {
    let valid = (1..=63).contains(&schema.len())
        && !schema.as_bytes()[0].is_ascii_digit()
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(schema.to_owned())
    } else {
        Err(StoreError::InvalidRequest(format!(
            "'{schema}' is not a valid schema name (1-63 characters of a-z, 0-9, _; no leading digit)"
        )))
    }
}

/// The connection settings every session of this backend uses: `search_path` set to the schema
/// at connection start-up (no extra round trip), bounded connect time. TLS is the connector's
/// (`tls::connector`), which also sets the mode negotiated.
fn session_config(url: &str, schema: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e| StoreError::InvalidRequest(format!("invalid PostgreSQL URL: {e}")))?;
    let options = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} -c search_path={schema}"),
        _ => format!("-c search_path={schema}"),
    };
    config.options(options);
    config.connect_timeout(CONNECT_TIMEOUT);
    // Notice a dead peer within about a minute instead of the kernel's two hours (a query in
    // flight on a vanished server fails instead of hanging).
    config.keepalives_idle(Duration::from_secs(30));
    config.keepalives_interval(Duration::from_secs(10));
    config.keepalives_retries(3);
    if config.get_application_name().is_none() {
        config.application_name("nexus");
    }
    Ok(config)
}

/// A database error kept whole (so callers can look at its cause), displayed with the server's
/// message: `tokio_postgres::Error` alone prints only "db error".
#[derive(Debug)]
pub(crate) struct DatabaseError(pub(crate) tokio_postgres::Error);

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{db}"),
            None => match std::error::Error::source(&self.0) {
                Some(cause) => write!(f, "{}: {cause}", self.0),
                None => write!(f, "{}", self.0),
            },
        }
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

pub(crate) fn unavailable(error: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(Box::new(DatabaseError(error)))
}

pub(crate) fn pool_unavailable(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => unavailable(error),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

pub(crate) fn corrupt(what: &str, error: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// A `u64` from the ports as a `BIGINT` parameter; values past `i64::MAX` mean "no bound".
pub(crate) fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `BIGINT` column that holds a non-negative count or position.
pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| corrupt(what, format!("negative value {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_need_no_quoting() {
        assert!(valid_schema("nexus").is_ok());
        assert!(valid_schema("nexus_test_12_3_abcdef").is_ok());
        for bad in ["", "Nexus", "1abc", "a-b", "a b", "a;drop", &"x".repeat(64)] {
            assert!(matches!(valid_schema(bad), Err(StoreError::InvalidRequest(_))), "{bad}");
        }
    }

    #[test]
    fn the_search_path_is_set_at_start_up() {
        let config = session_config("postgres://u@localhost:5432/db", "s1").unwrap();
        assert_eq!(config.get_options(), Some("-c search_path=s1"));
        let config = session_config("postgres://u@localhost/db?options=-c%20work_mem%3D8MB", "s1").unwrap();
        assert_eq!(config.get_options(), Some("-c work_mem=8MB -c search_path=s1"));
        assert!(matches!(session_config("nonsense://", "s"), Err(StoreError::InvalidRequest(_))));
    }

    #[test]
    fn the_insert_trigger_takes_the_same_lock_as_the_appender() {
        let sql = migrations::MIGRATIONS[0].sql;
        assert!(
            sql.contains(&format!("pg_advisory_xact_lock({APPEND_LOCK_CLASS}, hashtext(TG_TABLE_SCHEMA))"))
        );
    }
}
