//! The embedded queue path: `queue.db` in the data directory, apart from `events.db` so queue
//! traffic never contends with the event writer.
//!
//! A fan-out is a row per subscribed consumer per event (`messages`); a delivery makes the row
//! invisible for a visibility timeout and counts it; an ack deletes it; a nack makes it visible
//! again after a delay, or moves it to `dead_letters` when it was the last allowed delivery.
//! Rows are written in one transaction per call with `synchronous = FULL`: `Ok` means durable.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nexus_core::ports::{DeadLetter, Delivery, EventQueue, MAX_DELIVERIES};
use nexus_core::{DomainEvent, StoreError, format_timestamp};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::Notify;

use crate::{corrupt, migrate, unavailable};

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE subscriptions (
    consumer TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer      TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    deliveries    INTEGER NOT NULL DEFAULT 0,
    visible_at    INTEGER NOT NULL, -- ms since the epoch
    first_failure TEXT,
    last_reason   TEXT
);
CREATE INDEX messages_ready ON messages (consumer, visible_at);
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer      TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    retry_count   INTEGER NOT NULL,
    first_failure TEXT    NOT NULL,
    last_failure  TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'WAITING' -- WAITING, RETRIED, ARCHIVED
);
CREATE INDEX dead_letters_state ON dead_letters (state, id);
"#];

/// The consumer name of dead letters the router wrote; retrying one publishes to every consumer.
pub const FANOUT_CONSUMER: &str = "router";

/// How long a received, unacknowledged delivery stays invisible (the seed's SQS visibility
/// timeout): a consumer that dies mid-delivery gets the message again after this.
const VISIBILITY: Duration = Duration::from_secs(30);

/// SQLite queue path. One connection behind a mutex, used from the blocking pool: queue calls
/// are short transactions, and the `Notify` wakes receivers on publish instead of polling hot.
pub struct SqliteEventQueue {
    conn: Arc<Mutex<Connection>>,
    ready: Arc<Notify>,
    visibility: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn now_iso() -> String {
    format_timestamp(chrono::Utc::now())
}

fn from_json(text: &str) -> Result<DomainEvent, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("queued event", e))
}

impl SqliteEventQueue {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_visibility(dir, VISIBILITY)
    }

    /// As [`open`](Self::open) with another visibility timeout (tests of redelivery).
    pub fn open_with_visibility(dir: &Path, visibility: Duration) -> Result<Self, StoreError> {
        let mut conn = Connection::open(dir.join("queue.db")).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(unavailable)?;
        crate::tune(&conn).map_err(unavailable)?;
        migrate(&mut conn, MIGRATIONS).map_err(unavailable)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), ready: Arc::new(Notify::new()), visibility })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("queue connection poisoned")))
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }

    /// Messages waiting per consumer (visible or not): what the lag metric reports.
    pub async fn depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(|conn| {
            let mut statement = conn
                .prepare("SELECT consumer, COUNT(*) FROM messages GROUP BY consumer")
                .map_err(unavailable)?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
        .await
    }
}

/// Moves message `id` to the dead letters with `reason`.
fn bury(tx: &Transaction<'_>, id: i64, reason: &str) -> rusqlite::Result<()> {
    let now = now_iso();
    tx.execute(
        "INSERT INTO dead_letters (consumer, event, reason, retry_count, first_failure, last_failure) \
         SELECT consumer, event, ?2, deliveries, COALESCE(first_failure, ?3), ?3 FROM messages WHERE id = ?1",
        params![id, reason, now],
    )?;
    tx.execute("DELETE FROM messages WHERE id = ?1", [id])?;
    Ok(())
}

fn enqueue(tx: &Transaction<'_>, consumer: &str, event: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO messages (consumer, event, visible_at) VALUES (?1, ?2, ?3)",
        params![consumer, event, now_ms()],
    )?;
    Ok(())
}

#[async_trait]
impl EventQueue for SqliteEventQueue {
    async fn subscribe(&self, consumer: &str) -> Result<(), StoreError> {
        let consumer = consumer.to_owned();
        self.run(move |conn| {
            conn.execute("INSERT OR IGNORE INTO subscriptions (consumer) VALUES (?1)", [consumer])
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn unsubscribe(&self, consumer: &str) -> Result<(), StoreError> {
        let consumer = consumer.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            tx.execute("DELETE FROM subscriptions WHERE consumer = ?1", [&consumer]).map_err(unavailable)?;
            tx.execute("DELETE FROM messages WHERE consumer = ?1", [&consumer]).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let bodies = events
            .iter()
            .map(|e| serde_json::to_string(e).map_err(|e| StoreError::InvalidRequest(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let consumers: Vec<String> = {
                let mut statement = tx.prepare("SELECT consumer FROM subscriptions").map_err(unavailable)?;
                statement
                    .query_map([], |row| row.get(0))
                    .map_err(unavailable)?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(unavailable)?
            };
            for body in &bodies {
                for consumer in &consumers {
                    enqueue(&tx, consumer, body).map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await?;
        self.ready.notify_waiters();
        Ok(())
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a publish between the look and the wait wakes us.
            let notified = self.ready.notified();
            let owned = consumer.to_owned();
            let visibility = self.visibility.as_millis() as i64;
            let (batch, next_visible) = self
                .run(move |conn| {
                    let now = now_ms();
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
                    // A message whose last allowed delivery timed out is dead, not redelivered.
                    let exhausted: Vec<i64> = {
                        let mut statement = tx
                            .prepare(
                                "SELECT id FROM messages WHERE consumer = ?1 AND visible_at <= ?2 AND deliveries >= ?3",
                            )
                            .map_err(unavailable)?;
                        statement
                            .query_map(params![owned, now, MAX_DELIVERIES], |row| row.get(0))
                            .map_err(unavailable)?
                            .collect::<rusqlite::Result<_>>()
                            .map_err(unavailable)?
                    };
                    for id in exhausted {
                        bury(&tx, id, "TRANSIENT: no acknowledgement within the visibility timeout")
                            .map_err(unavailable)?;
                    }
                    let rows: Vec<(i64, String, u32)> = {
                        let mut statement = tx
                            .prepare(
                                "SELECT id, event, deliveries FROM messages \
                                 WHERE consumer = ?1 AND visible_at <= ?2 ORDER BY id LIMIT ?3",
                            )
                            .map_err(unavailable)?;
                        statement
                            .query_map(params![owned, now, max as i64], |row| {
                                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                            })
                            .map_err(unavailable)?
                            .collect::<rusqlite::Result<_>>()
                            .map_err(unavailable)?
                    };
                    let mut batch = Vec::with_capacity(rows.len());
                    for (id, body, deliveries) in rows {
                        tx.execute(
                            "UPDATE messages SET deliveries = deliveries + 1, visible_at = ?2 WHERE id = ?1",
                            params![id, now + visibility],
                        )
                        .map_err(unavailable)?;
                        batch.push(Delivery {
                            tag: id as u64,
                            consumer: owned.clone(),
                            event: from_json(&body)?,
                            attempt: deliveries + 1,
                        });
                    }
                    let next: Option<i64> = tx
                        .query_row("SELECT MIN(visible_at) FROM messages WHERE consumer = ?1", [&owned], |row| {
                            row.get(0)
                        })
                        .optional()
                        .map_err(unavailable)?
                        .flatten();
                    tx.commit().map_err(unavailable)?;
                    Ok((batch, next))
                })
                .await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(at) = next_visible {
                let in_ms = (at - now_ms()).max(1) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let id = delivery.tag as i64;
        self.run(move |conn| {
            conn.execute("DELETE FROM messages WHERE id = ?1", [id]).map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn nack(&self, delivery: &Delivery, reason: &str, delay: Duration) -> Result<(), StoreError> {
        let id = delivery.tag as i64;
        let reason = reason.to_owned();
        let delay = delay.as_millis() as i64;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let deliveries: Option<u32> = tx
                .query_row("SELECT deliveries FROM messages WHERE id = ?1", [id], |row| row.get(0))
                .optional()
                .map_err(unavailable)?;
            match deliveries {
                None => {} // already acked, buried or unsubscribed
                Some(n) if n >= MAX_DELIVERIES => bury(&tx, id, &reason).map_err(unavailable)?,
                Some(_) => {
                    tx.execute(
                        "UPDATE messages SET visible_at = ?2, last_reason = ?3, \
                         first_failure = COALESCE(first_failure, ?4) WHERE id = ?1",
                        params![id, now_ms() + delay, reason, now_iso()],
                    )
                    .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await?;
        // A zero delay must wake a waiting receiver at once.
        self.ready.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, consumer: &str, event: &DomainEvent, reason: &str) -> Result<(), StoreError> {
        let body = serde_json::to_string(event).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        let (consumer, reason) = (consumer.to_owned(), reason.to_owned());
        self.run(move |conn| {
            let now = now_iso();
            conn.execute(
                "INSERT INTO dead_letters (consumer, event, reason, retry_count, first_failure, last_failure) \
                 VALUES (?1, ?2, ?3, 0, ?4, ?4)",
                params![consumer, body, reason, now],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.run(move |conn| {
            let mut statement = conn
                .prepare(
                    "SELECT id, consumer, event, reason, retry_count, first_failure, last_failure \
                     FROM dead_letters WHERE state = 'WAITING' ORDER BY id LIMIT ?1",
                )
                .map_err(unavailable)?;
            let rows: Vec<(i64, String, String, String, u32, String, String)> = statement
                .query_map([limit as i64], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                    ))
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<_>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(id, consumer, event, reason, retry_count, first, last)| {
                    Ok(DeadLetter {
                        id: id.to_string(),
                        event: from_json(&event)?,
                        consumer,
                        failure_reason: reason,
                        retry_count,
                        first_failure_time: first,
                        last_failure_time: last,
                    })
                })
                .collect()
        })
        .await
    }

    async fn retry(&self, id: &str) -> Result<bool, StoreError> {
        let Ok(id) = id.parse::<i64>() else { return Ok(false) };
        let retried = self
            .run(move |conn| {
                let tx =
                    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
                let found: Option<(String, String)> = tx
                    .query_row(
                        "SELECT consumer, event FROM dead_letters WHERE id = ?1 AND state = 'WAITING'",
                        [id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(unavailable)?;
                let Some((consumer, event)) = found else { return Ok(false) };
                let consumers: Vec<String> = if consumer == FANOUT_CONSUMER {
                    let mut statement =
                        tx.prepare("SELECT consumer FROM subscriptions").map_err(unavailable)?;
                    statement
                        .query_map([], |row| row.get(0))
                        .map_err(unavailable)?
                        .collect::<rusqlite::Result<_>>()
                        .map_err(unavailable)?
                } else {
                    let subscribed: Option<String> = tx
                        .query_row(
                            "SELECT consumer FROM subscriptions WHERE consumer = ?1",
                            [&consumer],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(unavailable)?;
                    match subscribed {
                        Some(consumer) => vec![consumer],
                        None => {
                            return Err(StoreError::InvalidRequest(format!(
                                "consumer '{consumer}' no longer exists: skip this dead letter instead"
                            )));
                        }
                    }
                };
                for consumer in &consumers {
                    enqueue(&tx, consumer, &event).map_err(unavailable)?;
                }
                tx.execute("UPDATE dead_letters SET state = 'RETRIED' WHERE id = ?1", [id])
                    .map_err(unavailable)?;
                tx.commit().map_err(unavailable)?;
                Ok(true)
            })
            .await?;
        self.ready.notify_waiters();
        Ok(retried)
    }

    async fn skip(&self, id: &str) -> Result<bool, StoreError> {
        let Ok(id) = id.parse::<i64>() else { return Ok(false) };
        self.run(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE dead_letters SET state = 'ARCHIVED' WHERE id = ?1 AND state = 'WAITING'",
                    [id],
                )
                .map_err(unavailable)?;
            Ok(changed == 1)
        })
        .await
    }
}
