//! The embedded event store: one SQLite file, one group-committing writer thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use nexus_core::recent::{self, RecentEvents};
use nexus_core::{
    AppendOutcome, AppendRequest, CommandRecord, DomainEvent, EventStore, Snapshot, SnapshotStore, StoreError,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::pool::ReaderPool;
use crate::{Checkpointer, LogReset, corrupt, migrate, unavailable};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    aggregate_id   TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    timestamp      TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    UNIQUE (aggregate_id, version)
);
CREATE INDEX events_by_type_and_time ON events (event_type, timestamp);
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE is refused'); END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE is refused'); END;
CREATE TABLE commands (
    command_id   TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    result       TEXT NOT NULL
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE snapshots (
    aggregate_id   TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    aggregate_type TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    taken_at       TEXT    NOT NULL,
    PRIMARY KEY (aggregate_id, version)
) WITHOUT ROWID;
"#,
    r#"
-- The store's identity, made once with the store: what names it on engines several stores share
-- (its NATS stream, its RabbitMQ exchanges) and what every message it publishes carries.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO store_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
"#,
];

/// Most appends one transaction takes; bounds a commit's latency under a flood.
const MAX_BATCH: usize = 1024;

const EVENT_COLUMNS: &str =
    "position, event_id, aggregate_id, version, event_type, timestamp, payload, metadata";

/// What the writer thread does. Snapshots go through it too: it is the only writer of the file.
enum Work {
    Append {
        request: AppendRequest,
        /// Payload and metadata of each event as JSON text, encoded before the job reaches the
        /// writer: the single writer thread does only what must be serial.
        encoded: Vec<(String, String)>,
        encoded_result: Option<String>,
    },
    /// A snapshot with its state encoded; answered with an empty `Committed`.
    SaveSnapshot { snapshot: Snapshot, state: String },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// SQLite event store. Appends are durable (`synchronous = FULL`) when `append` returns.
pub struct SqliteEventStore {
    /// `None` once dropped: the writer then commits what is queued and stops.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    readers: Arc<ReaderPool>,
    head: watch::Receiver<u64>,
    /// The change feed's tail, kept by the writer: what consumers that keep up read.
    recent: Arc<RecentEvents>,
    store_id: String,
    /// Declared after the writer and the readers: on drop it empties the log once they are gone.
    _checkpointer: Checkpointer,
}

impl Drop for SqliteEventStore {
    /// Waits for the writer to commit every queued append; then the checkpointer empties the log.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl SqliteEventStore {
    /// Opens (creating if needed) `events.db` in `dir` and starts the writer thread.
    ///
    /// One process at a time: the store holds an exclusive lock on `nexus.lock` in `dir` for as
    /// long as its writer thread runs, so a second process on the same data directory (whose
    /// writer would number positions on its own) is refused instead of corrupting the feed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let lock = lock_data_dir(dir)?;
        let path = dir.join("events.db");
        let mut conn = open_writer(&path).map_err(unavailable)?;
        migrate(&mut conn, MIGRATIONS).map_err(unavailable)?;
        let head: u64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| row.get(0))
            .map_err(unavailable)?;
        let store_id: String = conn
            .query_row("SELECT value FROM store_meta WHERE key = 'store_id'", [], |row| row.get(0))
            .map_err(unavailable)?;
        let (head_tx, head_rx) = watch::channel(head);
        let checkpointer = Checkpointer::start(&path, "events")?;
        let (jobs, queue) = mpsc::channel();
        let recent = Arc::new(RecentEvents::new(recent::CAPACITY));
        let kept = recent.clone();
        let writer = std::thread::Builder::new()
            .name("nexus-sqlite-writer".into())
            .spawn(move || {
                write_loop(conn, queue, head_tx, &kept);
                // Released only once the last commit is done.
                drop(lock);
            })
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self {
            jobs: Some(jobs),
            writer: Some(writer),
            readers: ReaderPool::new(path),
            head: head_rx,
            recent,
            store_id,
            _checkpointer: checkpointer,
        })
    }

    /// The store's identity: 32 hex digits drawn when the store was created, the same on every
    /// open of it and different for every other store.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }
}

/// Takes the data directory's lock, waiting up to 2 s for a writer that is shutting down (a
/// restart in the same process) to let go; writes this process's id into the file for whoever
/// finds it locked.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("nexus.lock");
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                return Err(StoreError::Unavailable(Box::new(std::io::Error::other(format!(
                    "{} is in use by another nexus process{holder}: stop it, or give this one another data directory",
                    dir.display()
                )))));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Unavailable(Box::new(e))),
        }
    }
    let noted =
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
    if let Err(error) = noted {
        tracing::debug!(%error, "cannot note the pid in {}", path.display());
    }
    Ok(file)
}

fn open_writer(path: &PathBuf) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    crate::tune_writer(&conn)?;
    // FULL: the WAL is synced at every commit, so "202 Accepted" means durable. Group commit is
    // what keeps that affordable.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// The single writer: takes every queued append into one transaction, commits once, answers all.
fn write_loop(
    mut conn: Connection,
    queue: mpsc::Receiver<Job>,
    head: watch::Sender<u64>,
    recent: &RecentEvents,
) {
    let log = LogReset::new(&conn, "events");
    while let Ok(first) = queue.recv() {
        // Before the batch is gathered: appends that queue during a reset join this commit.
        log.run(&conn);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = crate::retry_busy(|| commit_batch(&mut conn, &batch));
        match outcome {
            Ok((results, last_position)) => {
                // Before anyone can know of these events: the head moves and the callers hear
                // only after.
                recent.extend(results.iter().flat_map(|result| match result {
                    Ok(AppendOutcome::Committed(events)) => events.as_slice(),
                    _ => &[],
                }));
                if let Some(position) = last_position {
                    head.send_replace(position);
                }
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(error) => {
                tracing::error!(%error, jobs = batch.len(), "event store commit failed");
                let message = error.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Unavailable(message.clone().into())));
                }
            }
        }
    }
    tracing::debug!("event store writer stopped");
}

type BatchResult = (Vec<Result<AppendOutcome, StoreError>>, Option<u64>);

fn commit_batch(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<BatchResult> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    let mut last_position = None;
    for job in batch {
        // A savepoint per append: one failing append never takes its batch-mates down with it.
        // Cached statements, not `Transaction::savepoint`, which parses SQL every time.
        tx.prepare_cached("SAVEPOINT append")?.execute([])?;
        let outcome = match &job.work {
            Work::Append { request, encoded, encoded_result } => {
                append_one(&tx, request, encoded, encoded_result.as_deref())
            }
            Work::SaveSnapshot { snapshot, state } => save_snapshot(&tx, snapshot, state),
        };
        match outcome {
            Ok(outcome) => {
                tx.prepare_cached("RELEASE append")?.execute([])?;
                if let AppendOutcome::Committed(events) = &outcome
                    && let Some(last) = events.last()
                {
                    last_position = Some(last.position);
                }
                results.push(Ok(outcome));
            }
            Err(error) => {
                tx.prepare_cached("ROLLBACK TO append")?.execute([])?;
                tx.prepare_cached("RELEASE append")?.execute([])?;
                results.push(Err(error));
            }
        }
    }
    tx.commit()?;
    Ok((results, last_position))
}

fn save_snapshot(tx: &Connection, snapshot: &Snapshot, state: &str) -> Result<AppendOutcome, StoreError> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO snapshots (aggregate_id, version, aggregate_type, schema_version, state, taken_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            snapshot.aggregate_id,
            snapshot.version,
            snapshot.aggregate_type,
            snapshot.schema_version,
            state,
            snapshot.taken_at
        ])
    })
    .map_err(unavailable)?;
    Ok(AppendOutcome::Committed(Vec::new()))
}

fn append_one(
    tx: &Connection,
    request: &AppendRequest,
    encoded: &[(String, String)],
    encoded_result: Option<&str>,
) -> Result<AppendOutcome, StoreError> {
    if let Some(command) = &request.command
        && let Some(existing) = find_command(tx, &command.command_id)?
    {
        return Ok(AppendOutcome::Duplicate(existing));
    }
    let actual: u64 = tx
        .prepare_cached("SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?1")
        .and_then(|mut stmt| stmt.query_row([&request.aggregate_id], |row| row.get(0)))
        .map_err(unavailable)?;
    if actual != request.expected_version {
        return Err(StoreError::WrongExpectedVersion {
            aggregate_id: request.aggregate_id.clone(),
            expected: request.expected_version,
            actual,
        });
    }
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (event_id, aggregate_id, aggregate_type, version, event_type, \
             timestamp, payload, metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING position",
        )
        .map_err(unavailable)?;
    let mut committed = Vec::with_capacity(request.events.len());
    for (index, event) in request.events.iter().enumerate() {
        let version = request.expected_version + index as u64 + 1;
        let (payload, metadata) = &encoded[index];
        let position: u64 = insert
            .query_row(
                params![
                    event.event_id,
                    request.aggregate_id,
                    request.aggregate_type,
                    version,
                    event.event_type,
                    event.timestamp,
                    payload,
                    metadata
                ],
                |row| row.get(0),
            )
            .map_err(|error| match error.sqlite_error_code() {
                // The only unique key an insert can break here is the event id: the version was
                // checked above under the writer's exclusive transaction.
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::InvalidRequest(format!("event id {} is already stored", event.event_id))
                }
                _ => unavailable(error),
            })?;
        committed.push(DomainEvent {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            aggregate_id: request.aggregate_id.clone(),
            aggregate_version: version,
            position,
            timestamp: event.timestamp.clone(),
            payload: event.payload.clone(),
            metadata: event.metadata.clone(),
        });
    }
    if let (Some(command), Some(result)) = (&request.command, encoded_result) {
        tx.prepare_cached(
            "INSERT INTO commands (command_id, fingerprint, aggregate_id, result) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![command.command_id, command.fingerprint, request.aggregate_id, result])
        })
        .map_err(unavailable)?;
    }
    Ok(AppendOutcome::Committed(committed))
}

fn find_command(conn: &Connection, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT fingerprint, result FROM commands WHERE command_id = ?1")
        .and_then(|mut stmt| stmt.query_row([command_id], |row| Ok((row.get(0)?, row.get(1)?))).optional())
        .map_err(unavailable)?;
    row.map(|(fingerprint, result)| {
        Ok(CommandRecord {
            command_id: command_id.to_owned(),
            fingerprint,
            result: serde_json::from_str(&result).map_err(|e| corrupt("command result", e))?,
        })
    })
    .transpose()
}

fn read_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<DomainEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let mut rows = stmt.query(params).map_err(unavailable)?;
    let mut events = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        let event_id: String = row.get(1).map_err(unavailable)?;
        // The JSON is parsed where SQLite holds it, not copied into a string first.
        let json = |column: usize| -> Result<&str, StoreError> {
            row.get_ref(column).map_err(unavailable)?.as_str().map_err(|e| corrupt(&event_id, e))
        };
        events.push(DomainEvent {
            position: row.get(0).map_err(unavailable)?,
            aggregate_id: row.get(2).map_err(unavailable)?,
            aggregate_version: row.get(3).map_err(unavailable)?,
            event_type: row.get(4).map_err(unavailable)?,
            timestamp: row.get(5).map_err(unavailable)?,
            payload: serde_json::from_str(json(6)?).map_err(|e| corrupt(&event_id, e))?,
            metadata: serde_json::from_str(json(7)?).map_err(|e| corrupt(&event_id, e))?,
            event_id,
        });
    }
    Ok(events)
}

impl SqliteEventStore {
    async fn snapshot_where(
        &self,
        aggregate_id: &str,
        taken_at: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let taken_at = taken_at.to_owned();
        let aggregate_id = aggregate_id.to_owned();
        self.readers
            .run(move |conn| {
                let row = conn
                    .prepare_cached(
                        "SELECT version, aggregate_type, schema_version, state, taken_at FROM snapshots \
                         WHERE aggregate_id = ?1 AND taken_at <= ?2 ORDER BY version DESC LIMIT 1",
                    )
                    .and_then(|mut stmt| {
                        stmt.query_row(params![aggregate_id, taken_at], |row| {
                            Ok((
                                row.get::<_, u64>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, u32>(2)?,
                                row.get::<_, String>(3)?,
                                row.get::<_, String>(4)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(unavailable)?;
                row.map(|(version, aggregate_type, schema_version, state, taken_at)| {
                    Ok(Snapshot {
                        state: serde_json::from_str(&state).map_err(|e| corrupt("snapshot state", e))?,
                        aggregate_id: aggregate_id.clone(),
                        aggregate_type,
                        version,
                        schema_version,
                        taken_at,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn submit(&self, work: Work) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .as_ref()
            .expect("the writer's queue lives as long as the store")
            .send(Job { work, reply })
            .map_err(|_| StoreError::Unavailable("the event store writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the event store writer has stopped".into()))?
    }
}

#[async_trait]
impl SnapshotStore for SqliteEventStore {
    async fn latest(&self, aggregate_id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.snapshot_where(aggregate_id, "9999-12-31T23:59:59.999Z").await
    }

    async fn latest_at_or_before(
        &self,
        aggregate_id: &str,
        taken_at: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.snapshot_where(aggregate_id, taken_at).await
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let state = serde_json::to_string(&snapshot.state).map_err(|e| corrupt("snapshot state", e))?;
        self.submit(Work::SaveSnapshot { snapshot, state }).await.map(|_| ())
    }

    async fn stale(
        &self,
        taken_before: &str,
        min_events: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let taken_before = taken_before.to_owned();
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "WITH agg AS (SELECT aggregate_id, MAX(version) AS head, MIN(timestamp) AS first_at \
                                      FROM events GROUP BY aggregate_id), \
                              snap AS (SELECT aggregate_id, version, taken_at FROM snapshots s \
                                       WHERE version = (SELECT MAX(version) FROM snapshots t \
                                                        WHERE t.aggregate_id = s.aggregate_id)) \
                         SELECT agg.aggregate_id FROM agg LEFT JOIN snap USING (aggregate_id) \
                         WHERE agg.head - COALESCE(snap.version, 0) >= ?1 \
                           AND COALESCE(snap.taken_at, agg.first_at) < ?2 \
                         ORDER BY agg.aggregate_id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let ids = stmt
                    .query_map(params![min_events, taken_before, limit as u64], |row| row.get::<_, String>(0))
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                Ok(ids)
            })
            .await
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let encoded = request
            .events
            .iter()
            .map(|event| {
                let payload = serde_json::to_string(&event.payload).map_err(|e| corrupt("payload", e))?;
                let metadata = serde_json::to_string(&event.metadata).map_err(|e| corrupt("metadata", e))?;
                Ok((payload, metadata))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let encoded_result = request
            .command
            .as_ref()
            .map(|command| serde_json::to_string(&command.result).map_err(|e| corrupt("command result", e)))
            .transpose()?;
        self.submit(Work::Append { request, encoded, encoded_result }).await
    }

    async fn read_stream(
        &self,
        aggregate_id: &str,
        from_version: u64,
        to_version: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let aggregate_id = aggregate_id.to_owned();
        let to_version = to_version.unwrap_or(i64::MAX as u64);
        self.readers
            .run(move |conn| {
                read_events(
                    conn,
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = ?1 \
                         AND version >= ?2 AND version <= ?3 ORDER BY version"
                    ),
                    params![aggregate_id, from_version, to_version],
                )
            })
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        if let Some(events) = self.recent.after(after, limit, *self.head.borrow()) {
            return Ok(events);
        }
        // Positions are assigned by the single writer in commit order, so reading past `after`
        // can never skip a position that commits later.
        self.readers
            .run(move |conn| {
                read_events(
                    conn,
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                    ),
                    params![after, limit as u64],
                )
            })
            .await
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let (event_type, start, end) = (event_type.to_owned(), start.to_owned(), end.to_owned());
        self.readers
            .run(move |conn| {
                read_events(
                    conn,
                    &format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE event_type = ?1 AND timestamp >= ?2 \
                         AND timestamp <= ?3 ORDER BY timestamp, position LIMIT ?4"
                    ),
                    params![event_type, start, end, limit as u64],
                )
            })
            .await
    }

    async fn find_command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let command_id = command_id.to_owned();
        self.readers.run(move |conn| find_command(conn, &command_id)).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.readers
            .run(|conn| {
                conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |row| row.get(0))
                    .map_err(unavailable)
            })
            .await
    }

    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut head = self.head.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = *head.borrow_and_update();
            if current > after {
                return Ok(current);
            }
            match tokio::time::timeout_at(deadline, head.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    return Err(StoreError::Unavailable("the event store writer has stopped".into()));
                }
                Err(_) => return Ok(current),
            }
        }
    }
}
