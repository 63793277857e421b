//! The event store on PostgreSQL: one group-committing appender per process under the schema's
//! append lock, and a change feed woken by `LISTEN`/`NOTIFY`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use nexus_core::ports::NewEvent;
use nexus_core::recent::{self, RecentEvents};
use nexus_core::{
    AppendOutcome, AppendRequest, CommandRecord, CommandResult, DomainEvent, EventMetadata, EventStore,
    StoreError,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{AsyncMessage, Client, Row, Statement};

use crate::tls::MakeTls;
use crate::{APPEND_LOCK_CLASS, bigint, corrupt, pool_unavailable, unavailable, unsigned};

/// Most appends one transaction takes; bounds a commit's latency under a flood.
const MAX_BATCH: usize = 1024;
/// Scheduler turns the appender gives the callers it just answered (see `run`).
const YIELDS: usize = 2;
/// Appends waiting for the appender before `append` callers wait for room (backpressure).
const QUEUE: usize = 8192;
/// How stale the head a waiter sees may get when notifications are lost.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// A hung appender (say, a stopped process) releases the append lock after this.
const IDLE_IN_TRANSACTION_MS: u32 = 10_000;
/// The notification channel; the payload is `<schema> <head>`, since channels span the database.
const CHANNEL: &str = "nexus_events";

const EVENT_COLUMNS: &str =
    "position, event_id, aggregate_id, version, event_type, timestamp, payload, metadata";
const HEAD: &str = "SELECT COALESCE(MAX(position), 0) FROM events";

/// PostgreSQL event store. An append is durable (committed, `synchronous_commit` as configured on
/// the server) when `append` returns.
pub struct PostgresEventStore {
    jobs: mpsc::Sender<Job>,
    pool: Pool,
    feed: Arc<HeadFeed>,
    /// The change feed's tail, kept by this process's appender: what consumers that keep up read.
    recent: Arc<RecentEvents>,
    /// Dropped with the store: tells the listener task to stop.
    _stop: watch::Sender<()>,
}

impl PostgresEventStore {
    pub(crate) async fn start(
        config: tokio_postgres::Config,
        tls: MakeTls,
        pool: Pool,
        schema: String,
    ) -> Result<Self, StoreError> {
        let client = pool.get().await.map_err(pool_unavailable)?;
        let head: i64 = client.query_one(HEAD, &[]).await.map_err(unavailable)?.get(0);
        drop(client);
        let feed = Arc::new(HeadFeed::new(unsigned(head, "head position")?));

        let mut appender_config = config.clone();
        let options = appender_config.get_options().unwrap_or_default().to_owned();
        appender_config
            // Generic plans inside `nexus_append`: PostgreSQL otherwise keeps re-planning its
            // array statements per call (measured: ~280 µs per append instead of ~85 µs). A
            // generic plan made while the tables were small would be a sequential scan kept
            // forever, so index paths are forced (every statement of this session is a point
            // lookup or an index-ordered MAX), and JIT is off since a plan without an index path
            // would cost past its threshold.
            .options(format!(
                "{options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} \
                 -c plan_cache_mode=force_generic_plan -c enable_seqscan=off -c jit=off"
            ))
            .application_name(truncate(&format!("nexus-appender/{schema}")));
        let recent = Arc::new(RecentEvents::new(recent::CAPACITY));
        let mut appender = Appender {
            config: appender_config,
            tls: tls.clone(),
            schema: schema.clone(),
            session: None,
            feed: feed.clone(),
            recent: recent.clone(),
        };
        // Connect now, so a server that is not there fails `connect` rather than the first append.
        appender.session().await.map_err(unavailable)?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(appender.run(queue));

        let mut listener_config = config;
        listener_config.application_name(truncate(&format!("nexus-listener/{schema}")));
        let (stop, stopped) = watch::channel(());
        tokio::spawn(listen(listener_config, tls, schema, feed.clone(), stopped));

        Ok(Self { jobs, pool, feed, recent, _stop: stop })
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(pool_unavailable)?;
        let statement = client.prepare_cached(sql).await.map_err(unavailable)?;
        client.query(&statement, params).await.map_err(unavailable)
    }

    async fn read_events(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.query(sql, params).await?.iter().map(decode_event).collect()
    }

    async fn read_head(&self) -> Result<u64, StoreError> {
        let rows = self.query(HEAD, &[]).await?;
        let head = unsigned(rows[0].get(0), "head position")?;
        self.feed.advance(head);
        Ok(head)
    }
}

/// PostgreSQL truncates `application_name` to 63 bytes; do it on a character boundary here.
fn truncate(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

fn decode_event(row: &Row) -> Result<DomainEvent, StoreError> {
    let event_id: String = row.try_get(1).map_err(|e| corrupt("event id", e))?;
    let field = |e: tokio_postgres::Error| corrupt(&event_id, e);
    let position: i64 = row.try_get(0).map_err(field)?;
    let version: i64 = row.try_get(3).map_err(field)?;
    let payload: Value = row.try_get(6).map_err(field)?;
    let Json(metadata): Json<EventMetadata> = row.try_get(7).map_err(field)?;
    Ok(DomainEvent {
        aggregate_id: row.try_get(2).map_err(field)?,
        event_type: row.try_get(4).map_err(field)?,
        timestamp: row.try_get(5).map_err(field)?,
        aggregate_version: unsigned(version, &event_id)?,
        position: unsigned(position, &event_id)?,
        payload: payload.into(),
        metadata,
        event_id,
    })
}

/// The highest position this process knows is committed, for `wait_past`. Fed by notifications,
/// by the appender after each commit, and by a head query at most every [`POLL_EVERY`] while
/// someone waits, so a lost notification or a dropped listener only delays a waiter.
struct HeadFeed {
    head: watch::Sender<u64>,
    epoch: Instant,
    /// Milliseconds after `epoch` when a waiter should next query the head.
    next_poll_ms: AtomicU64,
}

impl HeadFeed {
    fn new(head: u64) -> Self {
        Self { head: watch::channel(head).0, epoch: Instant::now(), next_poll_ms: AtomicU64::new(0) }
    }

    /// Moves the head forward (never back: notifications may arrive out of order).
    fn advance(&self, position: u64) {
        self.head.send_if_modified(|head| {
            let moved = position > *head;
            if moved {
                *head = position;
            }
            moved
        });
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True for the one caller that should query the head now.
    fn claim_poll(&self) -> bool {
        let now = self.now_ms();
        let next = self.next_poll_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_poll_ms
                .compare_exchange(
                    next,
                    now + POLL_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn next_poll_at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.next_poll_ms.load(Ordering::Relaxed))
    }
}

/// Keeps a `LISTEN` session open, reconnecting with backoff, until the store is dropped.
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeTls,
    schema: String,
    feed: Arc<HeadFeed>,
    mut stop: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listened = tokio::select! {
            _ = stop.changed() => return,
            result = listen_once(&config, &tls, &schema, &feed) => match result {
                Ok(()) => {
                    tracing::warn!(schema, "change-feed listener disconnected; reconnecting");
                    true
                }
                Err((listened, error)) => {
                    tracing::warn!(schema, error = %crate::DatabaseError(error), "change-feed listener failed; reconnecting");
                    listened
                }
            },
        };
        if listened {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One `LISTEN` session: returns when the connection ends. The error carries whether the session
/// got as far as listening.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeTls,
    schema: &str,
    feed: &HeadFeed,
) -> Result<(), (bool, tokio_postgres::Error)> {
    let (client, mut connection) = config.connect(tls.clone()).await.map_err(|e| (false, e))?;
    // The head is read after LISTEN, so nothing committed while we were away is missed.
    let setup = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let row = client.query_one(HEAD, &[]).await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    };
    tokio::pin!(setup);
    let mut listening = false;
    loop {
        tokio::select! {
            head = &mut setup, if !listening => {
                feed.advance(head.map_err(|e| (false, e))?.max(0) as u64);
                listening = true;
            }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(note))) if note.channel() == CHANNEL => {
                    if let Some(position) = parse_notification(note.payload(), schema) {
                        feed.advance(position);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err((listening, error)),
                None => return Ok(()),
            },
        }
    }
}

fn parse_notification(payload: &str, schema: &str) -> Option<u64> {
    let (from, position) = payload.split_once(' ')?;
    if from == schema { position.parse().ok() } else { None }
}

/// An append as the appender needs it: parameters encoded by the caller, off the appender task.
struct Job {
    aggregate_id: String,
    aggregate_type: String,
    expected: i64,
    event_ids: Vec<String>,
    event_types: Vec<String>,
    timestamps: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    command_id: Option<String>,
    fingerprint: Option<String>,
    result: Option<String>,
    /// The events themselves, which the appender returns with their positions once committed.
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

impl Job {
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.aggregate_id,
            &self.aggregate_type,
            &self.expected,
            &self.event_ids,
            &self.event_types,
            &self.timestamps,
            &self.payloads,
            &self.metadata,
            &self.command_id,
            &self.fingerprint,
            &self.result,
        ]
    }
}

/// What the database answered for one append.
enum Answer {
    Committed { first_position: u64 },
    Duplicate { fingerprint: String, result: Value },
}

/// What the appender answers the caller.
enum Reply {
    Committed(Vec<DomainEvent>),
    Duplicate { fingerprint: String, result: Value },
}

impl Job {
    /// The reply to this job given its answer: a committed append's events, positioned.
    fn reply_of(&self, answer: Answer) -> Reply {
        match answer {
            Answer::Committed { first_position } => Reply::Committed(
                self.events
                    .iter()
                    .enumerate()
                    .map(|(index, event)| DomainEvent {
                        event_id: event.event_id.clone(),
                        event_type: event.event_type.clone(),
                        aggregate_id: self.aggregate_id.clone(),
                        aggregate_version: self.expected as u64 + index as u64 + 1,
                        position: first_position + index as u64,
                        timestamp: event.timestamp.clone(),
                        payload: event.payload.clone(),
                        metadata: event.metadata.clone(),
                    })
                    .collect(),
            ),
            Answer::Duplicate { fingerprint, result } => Reply::Duplicate { fingerprint, result },
        }
    }
}

/// A connection of the appender and its prepared statements.
struct Session {
    client: Client,
    append: Statement,
    lock: Statement,
    notify: Statement,
}

struct Appender {
    config: tokio_postgres::Config,
    tls: MakeTls,
    schema: String,
    session: Option<Session>,
    feed: Arc<HeadFeed>,
    recent: Arc<RecentEvents>,
}

/// How a pipelined batch ended.
enum Batch {
    /// Committed: an answer per append, and the head after the commit.
    Committed(Vec<Result<Answer, StoreError>>, u64),
    /// An append raised an error; nothing was committed.
    AppendFailed,
    /// Nothing was committed (or the outcome is unknown) for a reason that is no append's fault.
    Failed(tokio_postgres::Error),
}

impl Appender {
    async fn session(&mut self) -> Result<&Session, tokio_postgres::Error> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.session = None;
        }
        if self.session.is_none() {
            let (client, connection) = self.config.connect(self.tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(error = %crate::DatabaseError(error), "appender connection ended");
                }
            });
            let append = client
                .prepare(
                    "SELECT outcome, actual_version, first_position, found_fingerprint, found_result, \
                     clashing_event_id FROM nexus_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .await?;
            let lock = client
                .prepare(&format!("SELECT pg_advisory_xact_lock({APPEND_LOCK_CLASS}, hashtext($1))"))
                .await?;
            // Only when this batch moved the head past what this process knew: a batch of refusals
            // wakes nobody.
            let notify = client
                .prepare(&format!(
                    "SELECT s.head, CASE WHEN s.head > $2 THEN pg_notify('{CHANNEL}', $1 || ' ' || s.head) END \
                     FROM ({HEAD}) AS s(head)"
                ))
                .await?;
            self.session = Some(Session { client, append, lock, notify });
        }
        Ok(self.session.as_ref().expect("session just set"))
    }

    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let answers = self.commit(&batch).await;
            let replied = batch.len();
            for (job, answer) in batch.drain(..).zip(answers) {
                let _ = job.reply.send(answer);
            }
            if replied > 1 {
                // Under load, let the callers just answered run first: most append again at once,
                // and joining the next batch saves them waiting a whole commit for the one after.
                for _ in 0..YIELDS {
                    tokio::task::yield_now().await;
                }
            }
        }
        tracing::debug!(schema = self.schema, "event store appender stopped");
    }

    /// Commits `batch` in one transaction: first all appends pipelined in one round trip without
    /// savepoints (refusals are answers, not errors); if one raised an error, again with a
    /// savepoint per append so the others still commit.
    async fn commit(&mut self, batch: &[Job]) -> Vec<Result<Reply, StoreError>> {
        let known_head = bigint(*self.feed.head.borrow());
        let schema = self.schema.clone();
        let outcome = match self.session().await {
            Err(error) => Err(error),
            Ok(session) => match pipelined(session, &schema, known_head, batch).await {
                Batch::Committed(answers, head) => Ok((answers, head)),
                Batch::Failed(error) => Err(error),
                Batch::AppendFailed => {
                    let retried = one_by_one(session, &schema, known_head, batch).await;
                    if retried.is_err() {
                        let _ = session.client.batch_execute("ROLLBACK").await;
                    }
                    retried
                }
            },
        };
        match outcome {
            Ok((answers, head)) => {
                let replies: Vec<_> = batch
                    .iter()
                    .zip(answers)
                    .map(|(job, answer)| answer.map(|answer| job.reply_of(answer)))
                    .collect();
                // Before the head moves and the callers hear: see `nexus_core::recent`.
                self.recent.extend(replies.iter().flat_map(|reply| match reply {
                    Ok(Reply::Committed(events)) => events.as_slice(),
                    _ => &[],
                }));
                self.feed.advance(head);
                replies
            }
            Err(error) => {
                if error.as_db_error().is_none() {
                    // A broken connection: reconnect for the next batch. The outcome of this one
                    // is unknown; a retry with the same command id is answered as a duplicate.
                    self.session = None;
                }
                let error = crate::DatabaseError(error);
                tracing::error!(%error, appends = batch.len(), "event store commit failed");
                let message = error.to_string();
                batch.iter().map(|_| Err(StoreError::Unavailable(message.clone().into()))).collect()
            }
        }
    }
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<Option<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// `BEGIN`, the lock, every append, the notification and `COMMIT`, sent in one flush and answered
/// in one round trip. If a statement fails, the transaction is aborted and `COMMIT` rolls back.
async fn pipelined(session: &Session, schema: &str, known_head: i64, batch: &[Job]) -> Batch {
    let client = &session.client;
    let params: Vec<_> = batch.iter().map(Job::params).collect();
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(batch.len() + 4);
    steps.push(Box::pin(async move { client.batch_execute("BEGIN").await.map(|()| None) }));
    steps.push(Box::pin(async move { client.execute(&session.lock, &[&schema]).await.map(|_| None) }));
    for params in &params {
        steps.push(Box::pin(async move { client.query_one(&session.append, params).await.map(Some) }));
    }
    steps.push(Box::pin(async move {
        client.query_one(&session.notify, &[&schema, &known_head]).await.map(Some)
    }));
    steps.push(Box::pin(async move { client.batch_execute("COMMIT").await.map(|()| None) }));
    let mut results = in_order(steps).await;

    // Steps: BEGIN, lock, appends (2..2 + n), notify, COMMIT.
    let appends = 2..2 + batch.len();
    // A connection problem first, or a failed BEGIN: then nothing else can be trusted.
    let untrusted = |(index, r): (usize, &Result<_, tokio_postgres::Error>)| {
        r.as_ref().is_err_and(|e| index == 0 || e.as_db_error().is_none())
    };
    if let Some(index) = results.iter().enumerate().position(untrusted) {
        return Batch::Failed(results.swap_remove(index).expect_err("an error"));
    }
    if results[appends.clone()].iter().any(Result::is_err) {
        return Batch::AppendFailed;
    }
    if let Some(index) = results.iter().position(Result::is_err) {
        return Batch::Failed(results.swap_remove(index).expect_err("an error"));
    }
    let head = match &results[appends.end] {
        Ok(Some(row)) => row.try_get::<_, i64>(0).map_or(0, |head| head.max(0) as u64),
        _ => 0,
    };
    let answers = batch
        .iter()
        .zip(results.drain(appends))
        .map(|(job, row)| match row {
            Ok(Some(row)) => decode_answer(job, &row),
            _ => Err(corrupt("append answer", "no row")),
        })
        .collect();
    Batch::Committed(answers, head)
}

/// The slow path: one append at a time, each in its own savepoint.
async fn one_by_one(
    session: &Session,
    schema: &str,
    known_head: i64,
    batch: &[Job],
) -> Result<(Vec<Result<Answer, StoreError>>, u64), tokio_postgres::Error> {
    let client = &session.client;
    client.batch_execute("BEGIN").await?;
    client.execute(&session.lock, &[&schema]).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        client.batch_execute("SAVEPOINT append").await?;
        match client.query_one(&session.append, &job.params()).await {
            Ok(row) => {
                client.batch_execute("RELEASE SAVEPOINT append").await?;
                answers.push(decode_answer(job, &row));
            }
            Err(error) if error.as_db_error().is_some() => {
                client.batch_execute("ROLLBACK TO SAVEPOINT append; RELEASE SAVEPOINT append").await?;
                answers.push(Err(refused(error)));
            }
            Err(error) => return Err(error),
        }
    }
    let head: i64 = client.query_one(&session.notify, &[&schema, &known_head]).await?.get(0);
    client.batch_execute("COMMIT").await?;
    Ok((answers, head.max(0) as u64))
}

/// An append the database refused: bad data (class 22) or a broken constraint (class 23) is the
/// request's fault; anything else is the store's.
fn refused(error: tokio_postgres::Error) -> StoreError {
    let class = error.code().map(|code| code.code()[..2].to_owned());
    match class.as_deref() {
        Some("22") | Some("23") => StoreError::InvalidRequest(crate::DatabaseError(error).to_string()),
        _ => unavailable(error),
    }
}

fn decode_answer(job: &Job, row: &Row) -> Result<Answer, StoreError> {
    let bad = |e: tokio_postgres::Error| corrupt("append answer", e);
    let outcome: &str = row.try_get(0).map_err(bad)?;
    match outcome {
        "committed" => {
            let first: i64 = row.try_get(2).map_err(bad)?;
            Ok(Answer::Committed { first_position: unsigned(first, "position")? })
        }
        "duplicate" => Ok(Answer::Duplicate {
            fingerprint: row.try_get(3).map_err(bad)?,
            result: row.try_get(4).map_err(bad)?,
        }),
        "conflict" => {
            let actual: i64 = row.try_get(1).map_err(bad)?;
            Err(StoreError::WrongExpectedVersion {
                aggregate_id: job.aggregate_id.clone(),
                expected: unsigned(job.expected, "expected version")?,
                actual: unsigned(actual, "version")?,
            })
        }
        "event_id_taken" => {
            let id: Option<String> = row.try_get(5).map_err(bad)?;
            Err(StoreError::InvalidRequest(format!(
                "event id {} is already stored or repeated",
                id.unwrap_or_default()
            )))
        }
        other => Err(corrupt("append answer", format!("unknown outcome '{other}'"))),
    }
}

/// Runs `steps` to completion, giving each its first poll in order: tokio-postgres sends a
/// request when its future is first polled, so this fixes the order of the pipeline.
async fn in_order<T>(steps: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut steps: Vec<_> = steps.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = std::iter::repeat_with(|| None).take(steps.len()).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (step, output) in steps.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = step {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *step = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every step finished")).collect()
}

fn encode(what: &str, value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let expected = i64::try_from(request.expected_version)
            .map_err(|_| StoreError::InvalidRequest("expected version out of range".into()))?;
        let mut request = request;
        let events = std::mem::take(&mut request.events);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            aggregate_id: request.aggregate_id.clone(),
            aggregate_type: request.aggregate_type.clone(),
            expected,
            event_ids: events.iter().map(|e| e.event_id.clone()).collect(),
            event_types: events.iter().map(|e| e.event_type.clone()).collect(),
            timestamps: events.iter().map(|e| e.timestamp.clone()).collect(),
            payloads: events.iter().map(|e| encode("payload", &e.payload)).collect::<Result<_, _>>()?,
            metadata: events.iter().map(|e| encode("metadata", &e.metadata)).collect::<Result<_, _>>()?,
            command_id: request.command.as_ref().map(|c| c.command_id.clone()),
            fingerprint: request.command.as_ref().map(|c| c.fingerprint.clone()),
            result: request.command.as_ref().map(|c| encode("command result", &c.result)).transpose()?,
            events,
            reply,
        };
        let stopped = || StoreError::Unavailable("the event store appender has stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        match answer.await.map_err(|_| stopped())?? {
            Reply::Committed(events) => Ok(AppendOutcome::Committed(events)),
            Reply::Duplicate { fingerprint, result } => {
                let command = request.command.expect("only an append with a command id is a duplicate");
                let result: CommandResult =
                    serde_json::from_value(result).map_err(|e| corrupt("command result", e))?;
                Ok(AppendOutcome::Duplicate(CommandRecord {
                    command_id: command.command_id,
                    fingerprint,
                    result,
                }))
            }
        }
    }

    async fn read_stream(
        &self,
        aggregate_id: &str,
        from_version: u64,
        to_version: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        let to_version = bigint(to_version.unwrap_or(u64::MAX));
        self.read_events(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 AND version >= $2 AND version <= $3 \
                 ORDER BY version"
            ),
            &[&aggregate_id, &bigint(from_version), &to_version],
        )
        .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        if let Some(events) = self.recent.after(after, limit, *self.feed.head.borrow()) {
            return Ok(events);
        }
        // Positions are drawn under the append lock, which is released only after the commit is
        // visible: no position at or below one a reader saw can commit later.
        self.read_events(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"),
            &[&bigint(after), &bigint(limit as u64)],
        )
        .await
    }

    async fn read_by_type(
        &self,
        event_type: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.read_events(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE event_type = $1 AND timestamp >= $2 AND timestamp <= $3 \
                 ORDER BY timestamp, position LIMIT $4"
            ),
            &[&event_type, &start, &end, &bigint(limit as u64)],
        )
        .await
    }

    async fn find_command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let rows = self
            .query("SELECT fingerprint, result FROM commands WHERE command_id = $1", &[&command_id])
            .await?;
        rows.first()
            .map(|row| {
                let bad = |e| corrupt("command record", e);
                let Json(result): Json<CommandResult> = row.try_get(1).map_err(bad)?;
                Ok(CommandRecord {
                    command_id: command_id.to_owned(),
                    fingerprint: row.try_get(0).map_err(bad)?,
                    result,
                })
            })
            .transpose()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read_head().await
    }

    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut head = self.feed.head.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let current = *head.borrow_and_update();
            if current > after || Instant::now() >= deadline {
                return Ok(current);
            }
            if self.feed.claim_poll() {
                self.read_head().await?;
                continue;
            }
            let wake = deadline.min(self.feed.next_poll_at());
            // `changed` fails only when the sender is dropped, and `self.feed` holds it.
            let _ = tokio::time::timeout_at(wake, head.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_their_schema() {
        assert_eq!(parse_notification("s1 42", "s1"), Some(42));
        assert_eq!(parse_notification("s2 42", "s1"), None);
        assert_eq!(parse_notification("s1 x", "s1"), None);
        assert_eq!(parse_notification("42", "s1"), None);
    }

    #[test]
    fn application_names_fit_postgres() {
        assert_eq!(truncate("short"), "short");
        assert_eq!(truncate(&"é".repeat(40)).len(), 62);
    }
}
