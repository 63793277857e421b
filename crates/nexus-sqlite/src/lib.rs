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

mod event_store;
mod pool;
mod read_store;

pub use event_store::SqliteEventStore;
pub use read_store::SqliteReadStore;

use nexus_core::StoreError;

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// Settings every connection gets.
fn tune(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    // Query-planner stability: without it, SQLite re-prepares a statement whenever a bound range
    // or LIMIT value changes (measured: ~10% of a loaded server's CPU in `sqlite3Reprepare`).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
}

/// Applies the migrations above `PRAGMA user_version`, each in its own transaction.
fn migrate(conn: &mut rusqlite::Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, sql) in migrations.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}
