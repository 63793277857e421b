//! The command path: validate, load, decide, append; per-aggregate serialization; idempotency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use nexus_core::ports::{AppendOutcome, AppendRequest, CommandRecord, NewEvent};
use nexus_core::{
    AggregateHandler, AggregateState, CommandResult, DecideError, Domain, DomainError, EventMetadata,
    EventRejection, EventStore, EventValidator, FieldError, Snapshot, SnapshotStore, StoreError,
    format_timestamp, is_valid_aggregate_id,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::schema::PayloadValidator;

/// How often a command is re-decided after losing a race with another process before giving up.
const MAX_ATTEMPTS: usize = 32;

/// A command as the edge received it; the bus fills in what is missing.
#[derive(Clone, Debug, Default)]
pub struct CommandRequest {
    pub command_type: String,
    pub aggregate_id: Option<String>,
    /// Client-chosen idempotency key; generated when absent.
    pub command_id: Option<String>,
    pub expected_version: Option<u64>,
    pub payload: Value,
    pub user_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no handler for command type '{0}'")]
    UnknownCommand(String),
    #[error("the command is invalid")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Rejected(DomainError),
    #[error("expected version {expected}, but the aggregate is at version {actual}")]
    Concurrency { expected: u64, actual: u64 },
    #[error("commandId '{command_id}' was already used for a different command")]
    IdempotencyConflict { command_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store stayed unavailable through every try (see [`CommandBus::with_store_retries`]):
    /// the command may or may not have committed; sent again with `command_id`, it is answered
    /// from the record if it did, and appended once if it did not.
    #[error(
        "the event store stayed unavailable ({source}); send the command again with commandId '{command_id}'"
    )]
    Unavailable { command_id: String, source: StoreError },
    /// An event the aggregate decided does not match its registered schema (or has none).
    #[error("event refused by the schema registry: {0}")]
    EventRejected(EventRejection),
    /// The domain code broke a rule of the framework (e.g. emitted an unregistered event type).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The cached, loaded state of one aggregate. Its mutex is what serializes commands on one
/// aggregate inside this process; the expected-version check serializes them across processes.
#[derive(Default)]
struct Slot {
    kind: &'static str,
    version: u64,
    state: Option<AggregateState>,
    /// The state is known to be current without asking the store (a just-generated id).
    fresh: bool,
    /// Events and payload bytes folded in since the last snapshot: the snapshot trigger.
    since_snapshot_events: u64,
    since_snapshot_bytes: u64,
}

impl Slot {
    fn initial(handler: &dyn AggregateHandler) -> Self {
        Slot { kind: handler.kind(), state: Some(handler.initial_state()), ..Slot::default() }
    }
}

/// When the command path takes a snapshot (seed: Snapshot Manager, multi-metric trigger).
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// Events since the last snapshot (seed: 1000).
    pub every_events: u64,
    /// Payload bytes appended since the last snapshot (seed: 1 MB). The seed's "total size"
    /// would snapshot on every command once an aggregate passed it; bytes since the last snapshot
    /// keeps the intent without that.
    pub every_bytes: u64,
}

/// Handles commands for every aggregate of a [`Domain`].
pub struct CommandBus {
    domain: Arc<Domain>,
    store: Arc<dyn EventStore>,
    snapshots: Option<(Arc<dyn SnapshotStore>, SnapshotPolicy)>,
    /// The schema registry's check of every event before it is appended.
    events: Option<Arc<dyn EventValidator>>,
    validator: PayloadValidator,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    cache_capacity: usize,
    /// Tries again after an unavailable store: how often, and the first wait (doubling).
    store_retries: u32,
    store_retry_base: Duration,
}

impl CommandBus {
    /// Builds the bus; fails when a command schema of the domain does not compile.
    pub fn new(
        domain: Arc<Domain>,
        store: Arc<dyn EventStore>,
        cache_capacity: usize,
    ) -> Result<Self, String> {
        let validator = PayloadValidator::for_commands(&domain)?;
        Ok(Self {
            domain,
            store,
            snapshots: None,
            events: None,
            validator,
            slots: Mutex::new(HashMap::new()),
            cache_capacity,
            store_retries: 3,
            store_retry_base: Duration::from_millis(100),
        })
    }

    /// A command that finds the store unavailable is tried again `retries` times (default 3),
    /// `base` apart at first and twice as long each time (default 100 ms), before the error
    /// reaches the caller. Each try asks the store first whether an earlier one committed (its
    /// outcome is unknown when the connection broke during the commit): what committed is
    /// answered as committed, never appended twice.
    pub fn with_store_retries(mut self, retries: u32, base: Duration) -> Self {
        self.store_retries = retries;
        self.store_retry_base = base;
        self
    }

    /// Validates every event against its registered schema before appending it (born governed).
    pub fn with_event_validator(mut self, validator: Arc<dyn EventValidator>) -> Self {
        self.events = Some(validator);
        self
    }

    /// Loads aggregates from their latest snapshot and takes snapshots by `policy`.
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, policy: SnapshotPolicy) -> Self {
        self.snapshots = Some((store, policy));
        self
    }

    pub async fn handle(&self, request: CommandRequest) -> Result<CommandResult, CommandError> {
        let started = Instant::now();
        let command_type = request.command_type.clone();
        // Fixed before the first try, so that every try is the same command to the store. Ids the
        // server makes are time-ordered (UUIDv7), as are generated aggregate ids: each lands at the
        // end of its store index, so a group commit writes a few index pages instead of one a
        // command (see ARCHITECTURE.md, "The command path").
        let command_id = request.command_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut tries = 0;
        let result = loop {
            // After an unavailable store, the earlier try may have committed: look first.
            let recorded_maybe = request.command_id.is_some() || tries > 0;
            let result = self.handle_inner(&request, &command_id, recorded_maybe).await;
            match result {
                Err(CommandError::Store(StoreError::Unavailable(ref error)))
                    if tries < self.store_retries =>
                {
                    let delay = self.store_retry_base * 2u32.saturating_pow(tries);
                    tracing::warn!(%error, command_id, try_again_in = ?delay, "store unavailable; trying the command again");
                    metrics::counter!("nexus_command_store_retries_total").increment(1);
                    tries += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(CommandError::Store(source @ StoreError::Unavailable(_))) => {
                    break Err(CommandError::Unavailable { command_id, source });
                }
                result => break result,
            }
        };
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(CommandError::Invalid(_) | CommandError::UnknownCommand(_)) => "invalid",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Concurrency { .. } | CommandError::IdempotencyConflict { .. }) => "conflict",
            Err(_) => "error",
        };
        metrics::histogram!("nexus_command_duration_seconds", "command" => command_type, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// One try of `request` as command `command_id`; with `recorded_maybe`, a command of that id
    /// already recorded is answered from the record.
    async fn handle_inner(
        &self,
        request: &CommandRequest,
        command_id: &str,
        recorded_maybe: bool,
    ) -> Result<CommandResult, CommandError> {
        let (spec, handler) = self
            .domain
            .command(&request.command_type)
            .ok_or_else(|| CommandError::UnknownCommand(request.command_type.clone()))?;
        let mut errors = self.validator.check(&request.command_type, &request.payload);
        let aggregate_id = match &request.aggregate_id {
            Some(id) if is_valid_aggregate_id(id) => id.clone(),
            Some(_) => {
                errors.push(FieldError::new("aggregateId", "must be 1-128 characters of [A-Za-z0-9._:-]"));
                String::new()
            }
            None if spec.creates => uuid::Uuid::now_v7().to_string(),
            None => {
                errors.push(FieldError::new("aggregateId", format!("is required for {}", spec.name)));
                String::new()
            }
        };
        if let Some(id) = &request.command_id
            && (id.is_empty() || id.len() > 128)
        {
            errors.push(FieldError::new("commandId", "must be 1-128 characters"));
        }
        if !errors.is_empty() {
            return Err(CommandError::Invalid(errors));
        }
        // The id as the client sent it: a retry of a creating command without `aggregateId`
        // must fingerprint the same, though the first attempt generated an id.
        let fingerprint = fingerprint(
            &request.command_type,
            request.aggregate_id.as_deref().unwrap_or(""),
            &request.payload,
        );
        if recorded_maybe && let Some(record) = self.store.find_command(command_id).await? {
            return replay(self.store.as_ref(), record, &fingerprint).await;
        }

        let slot = self.slot(&aggregate_id);
        let mut guard = slot.lock().await;
        let slot: &mut Slot = &mut guard;
        if request.aggregate_id.is_none() {
            // We generated this id a moment ago: nothing is stored under it, so skip the reads.
            *slot = Slot { fresh: true, ..Slot::initial(handler.as_ref()) };
        }
        let client_command_id = recorded_maybe;
        if client_command_id {
            // A copy of this command may have committed while we waited for the lock.
            if let Some(record) = self.store.find_command(command_id).await? {
                return replay(self.store.as_ref(), record, &fingerprint).await;
            }
        }
        let result = self
            .decide_and_append(request, handler.as_ref(), slot, &aggregate_id, command_id, &fingerprint)
            .await;
        match result {
            // A copy committed by another process makes this one look stale or invalid; the
            // recorded result is the right answer then.
            Err(CommandError::Rejected(_) | CommandError::Concurrency { .. }) if client_command_id => {
                match self.store.find_command(command_id).await? {
                    Some(record) => replay(self.store.as_ref(), record, &fingerprint).await,
                    None => result,
                }
            }
            other => other,
        }
    }

    async fn decide_and_append(
        &self,
        request: &CommandRequest,
        handler: &dyn AggregateHandler,
        slot: &mut Slot,
        aggregate_id: &str,
        command_id: &str,
        fingerprint: &str,
    ) -> Result<CommandResult, CommandError> {
        let (aggregate_id, command_id) = (aggregate_id.to_owned(), command_id.to_owned());
        for _ in 0..MAX_ATTEMPTS {
            self.catch_up(handler, &aggregate_id, slot).await?;
            if let Some(expected) = request.expected_version
                && expected != slot.version
            {
                return Err(CommandError::Concurrency { expected, actual: slot.version });
            }
            let state = slot.state.as_ref().expect("caught up");
            let drafts =
                handler.decide(state, &request.command_type, &request.payload).map_err(|e| match e {
                    DecideError::Invalid(fields) => CommandError::Invalid(fields),
                    DecideError::Rejected(error) => CommandError::Rejected(error),
                })?;
            let timestamp = format_timestamp(Utc::now());
            let mut events = Vec::with_capacity(drafts.len());
            for draft in drafts {
                let spec = self.domain.event(&draft.event_type).ok_or_else(|| {
                    CommandError::Internal(format!(
                        "{} emitted event type {} that no aggregate registered",
                        handler.kind(),
                        draft.event_type
                    ))
                })?;
                events.push(NewEvent {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    event_type: draft.event_type,
                    timestamp: timestamp.clone(),
                    payload: draft.payload.into(),
                    metadata: EventMetadata {
                        correlation_id: request.correlation_id.clone().unwrap_or_else(|| command_id.clone()),
                        causation_id: request.causation_id.clone().unwrap_or_else(|| command_id.clone()),
                        user_id: request.user_id.clone().unwrap_or_else(|| "anonymous".into()),
                        schema_version: spec.schema_version.to_string(),
                    },
                });
            }
            if let Some(validator) = &self.events {
                for event in &events {
                    validator
                        .validate(&event.event_type, &event.metadata.schema_version, &event.payload)
                        .await
                        .map_err(CommandError::EventRejected)?;
                }
            }
            let result = CommandResult {
                success: true,
                command_id: command_id.clone(),
                aggregate_id: aggregate_id.clone(),
                version: slot.version + events.len() as u64,
                position: 0,
                event_ids: events.iter().map(|e| e.event_id.clone()).collect(),
            };
            let append = AppendRequest {
                aggregate_id: aggregate_id.clone(),
                aggregate_type: handler.kind().to_owned(),
                expected_version: slot.version,
                events,
                command: Some(CommandRecord {
                    command_id: command_id.clone(),
                    fingerprint: fingerprint.to_owned(),
                    result: result.clone(),
                }),
            };
            match self.store.append(append).await {
                Ok(AppendOutcome::Committed(events)) => {
                    metrics::counter!("nexus_events_appended_total").increment(events.len() as u64);
                    let state = slot.state.as_mut().expect("caught up");
                    for event in &events {
                        if let Err(error) = handler.apply(state, event) {
                            // Stored but not foldable: drop the cache, the next command reloads
                            // and reports it.
                            *slot = Slot::default();
                            return Err(CommandError::Internal(error));
                        }
                        slot.version = event.aggregate_version;
                        slot.since_snapshot_events += 1;
                        slot.since_snapshot_bytes += json_size(&event.payload);
                    }
                    self.maybe_snapshot(handler, &aggregate_id, slot);
                    let mut result = result;
                    result.position = events.last().map_or(0, |event| event.position);
                    return Ok(result);
                }
                Ok(AppendOutcome::Duplicate(record)) => {
                    return replay(self.store.as_ref(), record, fingerprint).await;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    if let Some(expected) = request.expected_version {
                        return Err(CommandError::Concurrency { expected, actual });
                    }
                    // Another process appended first: catch up and decide again.
                    continue;
                }
                Err(error) => {
                    *slot = Slot::default();
                    return Err(error.into());
                }
            }
        }
        Err(StoreError::Unavailable(
            format!("aggregate {aggregate_id} kept changing; gave up after {MAX_ATTEMPTS} attempts").into(),
        )
        .into())
    }

    /// Brings the slot's state up to the store's latest version: from the latest usable snapshot
    /// when the state is not cached, then the events after it.
    async fn catch_up(
        &self,
        handler: &dyn AggregateHandler,
        aggregate_id: &str,
        slot: &mut Slot,
    ) -> Result<(), CommandError> {
        if std::mem::take(&mut slot.fresh) && slot.state.is_some() {
            return Ok(());
        }
        let rehydrating = slot.state.is_none() || slot.kind != handler.kind();
        if rehydrating {
            *slot = Slot::initial(handler);
            if let Some((snapshots, _)) = &self.snapshots {
                self.restore_snapshot(snapshots.as_ref(), handler, aggregate_id, slot).await;
            }
        }
        let events = self.store.read_stream(aggregate_id, slot.version + 1, None).await?;
        let state = slot.state.as_mut().expect("initialized above");
        for event in &events {
            if let Err(error) = handler.apply(state, event) {
                *slot = Slot::default();
                // Another kind of aggregate owns this id: say so, not what serde thought of it.
                if !handler.events().iter().any(|spec| spec.name == event.event_type) {
                    tracing::debug!(aggregate_id, %error, "command sent to an aggregate of another kind");
                    return Err(CommandError::Rejected(DomainError::rule(format!(
                        "aggregate '{aggregate_id}' is not of kind {}: it holds {} events",
                        handler.kind(),
                        event.event_type
                    ))));
                }
                return Err(CommandError::Rejected(DomainError::rule(format!(
                    "aggregate '{aggregate_id}' cannot take this command: {error}"
                ))));
            }
            slot.version = event.aggregate_version;
            slot.since_snapshot_events += 1;
            slot.since_snapshot_bytes += json_size(&event.payload);
        }
        if rehydrating {
            metrics::histogram!("nexus_rehydration_events", "aggregate" => handler.kind())
                .record(events.len() as f64);
        }
        Ok(())
    }

    /// Starts `slot` from the latest snapshot when there is one of the current format. A
    /// snapshot that cannot be read is logged and skipped: events alone are always enough.
    async fn restore_snapshot(
        &self,
        snapshots: &dyn SnapshotStore,
        handler: &dyn AggregateHandler,
        aggregate_id: &str,
        slot: &mut Slot,
    ) {
        match snapshots.latest(aggregate_id).await {
            Ok(Some(snapshot))
                if snapshot.schema_version == handler.snapshot_version()
                    && snapshot.aggregate_type == handler.kind() =>
            {
                let version = snapshot.version;
                match handler.restore(snapshot.state) {
                    Some(state) => {
                        slot.state = Some(state);
                        slot.version = version;
                    }
                    None => tracing::warn!(
                        aggregate_id,
                        version,
                        "snapshot does not restore; rebuilding from events"
                    ),
                }
            }
            Ok(Some(snapshot)) => tracing::debug!(
                aggregate_id,
                schema_version = snapshot.schema_version,
                "snapshot of an older format ignored; rebuilding from events"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(aggregate_id, %error, "snapshot unreadable; rebuilding from events"),
        }
    }

    /// The synchronous trigger, evaluated right after an append: when a threshold is crossed, the
    /// state is captured now (under the aggregate's lock) and saved in the background, off the
    /// command's latency.
    fn maybe_snapshot(&self, handler: &dyn AggregateHandler, aggregate_id: &str, slot: &mut Slot) {
        let Some((store, policy)) = &self.snapshots else { return };
        if slot.since_snapshot_events < policy.every_events && slot.since_snapshot_bytes < policy.every_bytes
        {
            return;
        }
        if let Some(snapshot) = capture(handler, aggregate_id, slot) {
            let store = store.clone();
            tokio::spawn(async move { save_snapshot(store.as_ref(), snapshot).await });
        }
    }

    /// The time-based trigger (seed: a daily sweep): snapshots every aggregate with at least
    /// `min_events` events since a snapshot older than `max_age`. Returns how many were taken.
    pub async fn snapshot_stale(
        &self,
        max_age: std::time::Duration,
        min_events: u64,
    ) -> Result<usize, CommandError> {
        let Some((store, _)) = &self.snapshots else { return Ok(0) };
        let cutoff = Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::days(1));
        let mut taken = 0;
        for aggregate_id in store.stale(&format_timestamp(cutoff), min_events, 1000).await? {
            let first = self.store.read_stream(&aggregate_id, 1, Some(1)).await?;
            let Some(handler) = first.first().and_then(|e| self.domain.aggregate_of_event(&e.event_type))
            else {
                continue;
            };
            let slot = self.slot(&aggregate_id);
            let mut guard = slot.lock().await;
            self.catch_up(handler.as_ref(), &aggregate_id, &mut guard).await?;
            if let Some(snapshot) = capture(handler.as_ref(), &aggregate_id, &mut guard)
                && save_snapshot(store.as_ref(), snapshot).await
            {
                taken += 1;
            }
        }
        Ok(taken)
    }

    fn slot(&self, aggregate_id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().expect("slot table poisoned");
        if slots.len() >= self.cache_capacity {
            // Forget idle aggregates (nobody holds their slot); their state reloads on demand.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.entry(aggregate_id.to_owned()).or_default().clone()
    }
}

fn capture(handler: &dyn AggregateHandler, aggregate_id: &str, slot: &mut Slot) -> Option<Snapshot> {
    let state = handler.snapshot(slot.state.as_ref()?)?;
    slot.since_snapshot_events = 0;
    slot.since_snapshot_bytes = 0;
    Some(Snapshot {
        aggregate_id: aggregate_id.to_owned(),
        aggregate_type: handler.kind().to_owned(),
        version: slot.version,
        schema_version: handler.snapshot_version(),
        state,
        taken_at: format_timestamp(Utc::now()),
    })
}

async fn save_snapshot(store: &dyn SnapshotStore, snapshot: Snapshot) -> bool {
    let (aggregate_id, version) = (snapshot.aggregate_id.clone(), snapshot.version);
    match store.save(snapshot).await {
        Ok(()) => {
            metrics::counter!("nexus_snapshots_taken_total").increment(1);
            tracing::debug!(aggregate_id, version, "snapshot taken");
            true
        }
        Err(error) => {
            metrics::counter!("nexus_snapshot_failures_total").increment(1);
            tracing::error!(aggregate_id, version, %error, "snapshot failed; the next trigger retries");
            false
        }
    }
}

/// Serialized size of a JSON value, without building the string.
fn json_size(value: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len() as u64;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The original result of a command id sent again, with the position of its last event (the
/// record is written before the store assigns positions, so it is looked up).
async fn replay(
    store: &dyn EventStore,
    record: CommandRecord,
    fingerprint: &str,
) -> Result<CommandResult, CommandError> {
    if record.fingerprint != fingerprint {
        return Err(CommandError::IdempotencyConflict { command_id: record.command_id });
    }
    let mut result = record.result;
    if result.position == 0 && !result.event_ids.is_empty() {
        let last = store.read_stream(&result.aggregate_id, result.version, Some(result.version)).await?;
        result.position = last.first().map_or(0, |event| event.position);
    }
    Ok(result)
}

/// What the command asked for, independent of key order: serde_json's default map is sorted.
fn fingerprint(command_type: &str, aggregate_id: &str, payload: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(command_type.as_bytes());
    hasher.update([0]);
    hasher.update(aggregate_id.as_bytes());
    hasher.update([0]);
    hasher.update(payload.to_string().as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
