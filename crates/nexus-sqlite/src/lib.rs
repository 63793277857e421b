//! Embedded SQLite adapters for the Nexus ports: the default backend of `nexus serve`.
//!
//! - [`SqliteEventStore`]: `events.db`, WAL with `synchronous = FULL`. One writer thread owns the
//!   only write connection and commits whatever appends are queued in one transaction (group
//!   commit), so positions are assigned in commit order and the change feed has no gaps.
//! - [`SqliteReadStore`]: `read.db`, documents and projection checkpoints, written together.
//!
//! Architecture invariant: no update or delete path on events exists here, and triggers in the
//! database refuse one from anywhere else. Blocking SQLite calls never run on the async runtime:
//! reads go through [`pool::ReaderPool`] on the blocking pool, writes through the writer thread.

mod doc_values;
mod event_store;
mod pool;
mod queue;
mod rank;
mod read_store;
mod schema_store;

pub use event_store::SqliteEventStore;
pub use queue::{FANOUT_CONSUMER, SqliteEventQueue};

/// Every table this adapter touches and the statements it issues on it, for the service graph the
/// architecture policies judge. A test reads the SQL in this crate and fails when a statement
/// is missing here.
pub const STORE_OPERATIONS: &[(&str, &[&str])] = &[
    ("events", &["INSERT", "SELECT"]),
    // The store's identity, written once when the store is created.
    ("store_meta", &["INSERT", "SELECT"]),
    ("commands", &["INSERT", "SELECT"]),
    ("snapshots", &["INSERT", "SELECT"]),
    // DELETE: a projection rebuild clears its shadow and swaps it in for the live model.
    ("documents", &["INSERT", "UPDATE", "DELETE", "SELECT"]),
    ("checkpoints", &["INSERT", "UPDATE", "DELETE", "SELECT"]),
    // Only in migrations: the search keys, columns of `documents` since migration 6.
    ("search_keys", &["INSERT", "UPDATE", "SELECT"]),
    // Where each resource's documents are stored: a rebuild's swap repoints it.
    ("models", &["INSERT", "UPDATE", "SELECT"]),
    // Storage names a swap let go of, until the sweeper has deleted their documents.
    ("retired", &["INSERT", "DELETE", "SELECT"]),
    // A changed document's index entry is deleted and inserted again.
    ("search_index", &["INSERT", "DELETE", "SELECT"]),
    ("schemas", &["INSERT", "SELECT"]),
    ("subject_versions", &["INSERT", "SELECT"]),
    ("compatibility", &["INSERT", "UPDATE", "SELECT"]),
    // The embedded queue path (`queue.db`): deliveries are deleted on ack, dead letters archived.
    ("subscriptions", &["INSERT", "DELETE", "SELECT"]),
    ("messages", &["INSERT", "UPDATE", "DELETE", "SELECT"]),
    ("dead_letters", &["INSERT", "UPDATE", "SELECT"]),
    // Documents per storage and status, for list totals: commits add, a trigger moves, the sweep
    // deletes a swept storage's.
    ("list_counts", &["INSERT", "UPDATE", "DELETE", "SELECT"]),
];
pub use read_store::SqliteReadStore;
pub use schema_store::SqliteSchemaStore;

use nexus_core::StoreError;

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// How long a connection waits for a lock another holds before SQLite answers "busy".
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings every connection gets.
///
/// No `mmap_size`: a mapping is per connection, so each reader's mapped pages counted again in
/// the process's resident memory (750 MB for a 25 MB `read.db` read by 30 connections), and a
/// mapping grows with the file. Pages are read into each connection's page cache instead,
/// bounded by its `cache_size`, with the OS's file cache (shared, and outside the process)
/// behind it.
fn tune(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    // Query-planner stability: without it, SQLite re-prepares a statement whenever a bound range
    // or LIMIT value changes (measured: ~10% of a loaded server's CPU in `sqlite3Reprepare`).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.busy_timeout(BUSY_TIMEOUT)
}

/// Applies the migrations above `PRAGMA user_version`, each in its own transaction.
fn migrate(conn: &mut rusqlite::Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, sql) in migrations.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// What a WAL may grow to before its writer resets it: the bound on each `-wal` file is this plus
/// what one transaction writes, or more while readers outlast [`WAL_RESET_WAIT`].
const WAL_RESET_BYTES: u64 = 32 << 20;

/// How long a reset waits for the readers still in the log (writers wait meanwhile); past it
/// the reset gives up and is tried again before the next transaction.
const WAL_RESET_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// How long after a reset that readers outlasted the writer tries again.
const RESET_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How far the log file is cut back whenever SQLite restarts it from its start.
const JOURNAL_SIZE_LIMIT: i64 = 32 << 20;

/// Settings of a connection that writes a WAL database: see [`Checkpointer`].
fn tune_writer(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Checkpoints run on their own thread, never inside a commit a client is waiting for.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    tune(conn)
}

/// Keeps a WAL database's log bounded, with its writer ([`reset_log_if_large`]), and empties it
/// on the way out.
///
/// Every 50 ms a PASSIVE checkpoint on this thread copies committed frames into the database
/// file without waiting for anyone. That alone never bounds the log: SQLite starts writing it
/// from the top again only when no reader still reads frames of it, and under steady traffic
/// some reader always does, so the file grew by the whole write volume (0.8 GB in 45 s). So the
/// writer, between two transactions, resets a log that passed [`WAL_RESET_BYTES`]. (This thread
/// cannot: a writer that commits back to back takes the lock again the moment it lets go, and a
/// checkpoint that needs the lock waited in vain while the log grew to 77 MB.)
///
/// Stopping (drop) runs a TRUNCATE checkpoint after the store's writers are gone, and closing the
/// last connection deletes the log: a clean stop leaves no `-wal` file behind.
pub(crate) struct Checkpointer {
    /// Dropped to stop the thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` (a WAL database); `database` names it in metrics and logs.
    pub(crate) fn start(path: &std::path::Path, database: &'static str) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path).map_err(unavailable)?;
        tune(&conn).map_err(unavailable)?;
        let wal = wal_path(&conn);
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("nexus-{database}-checkpoint"))
            .spawn(move || checkpoint_loop(&conn, &wal, database, &stopped))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `-wal` file of `conn`'s main database.
fn wal_path(conn: &rusqlite::Connection) -> std::path::PathBuf {
    format!("{}-wal", conn.path().unwrap_or_default()).into()
}

fn wal_size(wal: &std::path::Path) -> u64 {
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// The log's size, for `/metrics`. Looked up at each use, not once: the process's recorder may
/// be installed after the store opens (the server opens its stores first).
fn report_wal_size(database: &'static str, bytes: u64) {
    metrics::gauge!("nexus_sqlite_wal_bytes", "database" => database).set(bytes as f64);
}

fn checkpoint_loop(
    conn: &rusqlite::Connection,
    wal: &std::path::Path,
    database: &'static str,
    stopped: &std::sync::mpsc::Receiver<()>,
) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        // Often, so a reset finds little left to copy: at 50 ms rather than 200, the resets of a
        // two-minute bench mix took 20 % less time (26.2 s against 32.7 s on `read.db`).
        stopped.recv_timeout(std::time::Duration::from_millis(50))
    {
        // A log past its bound is the writer's to reset: a PASSIVE checkpoint copying it
        // meanwhile would hold the checkpoint lock the reset waits for.
        let size = wal_size(wal);
        if size <= WAL_RESET_BYTES
            && let Err(error) = checkpoint(conn, "PASSIVE")
        {
            tracing::warn!(%error, database, "WAL checkpoint failed; will retry");
        }
        report_wal_size(database, size);
    }
    // The store's writers are gone: nothing holds the log, so this one empties it.
    match checkpoint(conn, "TRUNCATE") {
        Ok(true) => {}
        Ok(false) => tracing::warn!(database, "the final WAL checkpoint found readers still in the log"),
        Err(error) => tracing::warn!(%error, database, "the final WAL checkpoint failed"),
    }
    report_wal_size(database, wal_size(wal));
}

/// Resets a database's log, run by its one writer between two of its transactions, once the log
/// is larger than [`WAL_RESET_BYTES`]: a RESTART checkpoint copies what the PASSIVE ones left and
/// waits for the readers still reading frames of the log; new readers read the database file
/// meanwhile. Then the next commit writes the log from its start (and cuts the file back to
/// `journal_size_limit`). The commits queued behind it wait for that pause
/// (`nexus_sqlite_wal_reset_seconds`); readers never do. The wait is [`WAL_RESET_WAIT`], four
/// times that once the log is twice its bound: when readers outlast it, the log is left as it is
/// and the next try comes 100 ms later, so slow readers let the log grow only while the writer
/// gets on with its commits.
pub(crate) struct LogReset {
    database: &'static str,
    wal: std::path::PathBuf,
    /// No try before this (after one that readers outlasted).
    not_before: std::sync::Mutex<std::time::Instant>,
}

impl LogReset {
    pub(crate) fn new(writer: &rusqlite::Connection, database: &'static str) -> Self {
        Self { database, wal: wal_path(writer), not_before: std::sync::Mutex::new(std::time::Instant::now()) }
    }

    /// Resets `writer`'s log if it is large; `writer` must be the database's writer, between
    /// transactions.
    pub(crate) fn run(&self, writer: &rusqlite::Connection) {
        let database = self.database;
        let mut not_before = self.not_before.lock().expect("log reset poisoned");
        if wal_size(&self.wal) <= WAL_RESET_BYTES || std::time::Instant::now() < *not_before {
            return;
        }
        let started = std::time::Instant::now();
        let wait =
            if wal_size(&self.wal) > 2 * WAL_RESET_BYTES { WAL_RESET_WAIT * 4 } else { WAL_RESET_WAIT };
        let reset = writer.busy_timeout(wait).and_then(|()| checkpoint(writer, "RESTART"));
        if let Err(error) = writer.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(%error, database, "cannot restore the busy timeout");
        }
        match reset {
            Ok(true) => metrics::histogram!("nexus_sqlite_wal_reset_seconds", "database" => database)
                .record(started.elapsed().as_secs_f64()),
            Ok(false) => {
                tracing::debug!(database, "readers outlasted the WAL reset; trying again shortly");
                *not_before = std::time::Instant::now() + RESET_RETRY;
            }
            Err(error) => {
                tracing::warn!(%error, database, "WAL reset failed; trying again shortly");
                *not_before = std::time::Instant::now() + RESET_RETRY;
            }
        }
    }
}

/// Runs a checkpoint in `mode`; `false` when it could not finish for readers or a writer.
fn checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<bool> {
    let busy: i64 = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| row.get(0))?;
    Ok(busy == 0)
}

/// Whether `error` is SQLite's "database is locked" (or its snapshot variant): another
/// connection holds the lock, which goes away by itself.
fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Runs `f` (a whole write transaction) again while it fails with a busy lock, a few times with
/// a growing pause: each attempt already waited the connection's busy timeout, so a lock still
/// held is another process's or a stalled machine's, and a later attempt usually gets through.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut pause = std::time::Duration::from_millis(20);
    for _ in 0..4 {
        match f() {
            Err(error) if is_busy(&error) => {
                tracing::warn!(%error, "SQLite busy past its timeout; retrying");
                std::thread::sleep(pause);
                pause *= 4;
            }
            result => return result,
        }
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::STORE_OPERATIONS;

    /// Finds `INSERT INTO t`, `UPDATE t`, `DELETE FROM t`, `FROM t` and upserts in the SQL text
    /// of this crate, and checks each is declared.
    #[test]
    fn declared_operations_cover_the_sql() {
        let sources = [
            include_str!("event_store.rs"),
            include_str!("read_store.rs"),
            include_str!("schema_store.rs"),
            include_str!("queue.rs"),
        ];
        let declared = |table: &str, operation: &str| {
            STORE_OPERATIONS.iter().any(|(t, ops)| *t == table && ops.contains(&operation))
        };
        let mut found = 0;
        for source in sources {
            // Only the SQL strings matter; migrations (CREATE, triggers) are not operations.
            let words: Vec<&str> = source
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            for window in words.windows(3) {
                let (operation, table) = match window {
                    ["INSERT", "INTO", table] => ("INSERT", *table),
                    ["DELETE", "FROM", table] => ("DELETE", *table),
                    ["UPDATE", table, "SET"] if *table != "DO" => ("UPDATE", *table),
                    ["DO", "UPDATE", "SET"] => continue, // checked with its INSERT below
                    [_, "FROM", table] if STORE_OPERATIONS.iter().any(|(t, _)| t == table) => {
                        ("SELECT", *table)
                    }
                    _ => continue,
                };
                found += 1;
                assert!(declared(table, operation), "{operation} on {table} is not in STORE_OPERATIONS");
            }
        }
        // An upsert (ON CONFLICT ... DO UPDATE) updates the table it inserts into.
        assert!(
            declared("documents", "UPDATE")
                && declared("checkpoints", "UPDATE")
                && declared("compatibility", "UPDATE")
        );
        assert!(found > 10, "the scan found the SQL ({found} statements)");
        let events = STORE_OPERATIONS.iter().find(|(t, _)| *t == "events").unwrap().1;
        assert!(!events.contains(&"UPDATE") && !events.contains(&"DELETE"), "events are append-only");
    }
}
