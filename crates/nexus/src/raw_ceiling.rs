//! `nexus bench --compare-raw`: this machine's ceiling for durable commits, measured the way the
//! embedded event store commits, so a command rate can be read as a ratio of it.
//!
//! `writers` threads each commit one order-like row per transaction (`BEGIN IMMEDIATE`, one
//! `INSERT`, `COMMIT`) into one scratch database with the event store's settings: WAL,
//! `synchronous = FULL`. No group commit: every row is its own fsync, which is what group commit
//! has to beat.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A row of about the size of a stored `OrderPlaced` (ids, type, ~200 bytes of JSON).
const PAYLOAD: &str = r#"{"customerId":"customer-4711","items":[{"productId":"product-17","quantity":2,"unitPrice":9.5},{"productId":"product-24","quantity":1,"unitPrice":20.0}],"total":39.0,"note":"raw commit ceiling"}"#;

/// Commits a second that `writers` threads reach for `duration` in a scratch database
/// `raw-ceiling.db` under `dir`.
pub(crate) fn measure(dir: &Path, writers: usize, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join("raw-ceiling.db");
    open(&path)?
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS rows (position INTEGER PRIMARY KEY, event_id TEXT NOT NULL, \
             aggregate_id TEXT NOT NULL, event_type TEXT NOT NULL, payload TEXT NOT NULL)",
        )
        .context("creating the raw ceiling's table")?;
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let threads: Vec<_> = (0..writers)
            .map(|writer| {
                let (path, stop, commits) = (&path, &stop, &commits);
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut conn = open(path)?;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        tx.prepare_cached(
                            "INSERT INTO rows (event_id, aggregate_id, event_type, payload) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute((format!("{writer}-{n}"), format!("order-{writer}-{n}"), "OrderPlaced", PAYLOAD))?;
                        tx.commit()?;
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().map_err(|_| anyhow::anyhow!("a raw ceiling writer panicked"))??;
        }
        Ok(())
    })?;
    Ok(commits.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// A connection with the event store's durability: WAL, `synchronous = FULL`, waiting for the
/// write lock rather than failing.
fn open(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(30))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several writers commit into one database, durably: the rows are there when it is opened
    /// again, as many as the rate says (over at least the time asked for).
    #[test]
    fn the_rate_counts_rows_that_were_committed() {
        let dir = tempfile::tempdir().unwrap();
        let per_second = measure(dir.path(), 4, Duration::from_millis(300)).unwrap();
        let conn = open(&dir.path().join("raw-ceiling.db")).unwrap();
        let rows: u64 = conn.query_row("SELECT COUNT(*) FROM rows", [], |row| row.get(0)).unwrap();
        let writers: u64 = conn
            .query_row(
                "SELECT COUNT(DISTINCT substr(event_id, 1, instr(event_id, '-'))) FROM rows",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(rows > 0, "no commit in 300 ms");
        assert_eq!(writers, 4);
        assert!(
            per_second * 0.3 <= rows as f64 + 1.0,
            "{per_second}/s is more than the {rows} rows in 0.3 s"
        );
    }
}
