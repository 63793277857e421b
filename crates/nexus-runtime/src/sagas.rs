//! The saga coordinator: durable sagas with per-step timeouts, retries, compensation and crash
//! recovery (seed §8 and Error Handling §4; contract §6).
//!
//! State lives only in the saga's own stream (aggregate id = saga id): `SagaStarted` holds the
//! whole definition, then one event per step outcome and one terminal event. The coordinator is
//! the only writer of saga streams and appends with the expected version, straight through the
//! [`EventStore`] port: a saga is not commanded by anyone, so it is no command handler, but its
//! events are registered as the `Saga` aggregate's ([`with_sagas`]) so that they have schemas and
//! a fold like every other event.
//!
//! How a saga runs:
//! - [`SagaCoordinator::start`] validates a definition and appends `SagaStarted` (idempotent per
//!   saga id). Nothing else: the coordinator's [`run`](SagaCoordinator::run) loop tails the
//!   change feed and drives every saga whose `SagaStarted` it reads, one task per saga.
//! - A step's command goes through the [`CommandBus`] under a command id derived from the saga
//!   and step ids, so running a step again after a crash replays its recorded result instead of
//!   applying it twice. Each attempt is bounded by the step's timeout; timeouts and an
//!   unavailable store are retried with exponential backoff, business-rule rejections and invalid
//!   commands are not; then the step fails and the completed steps are compensated in reverse
//!   order. A compensation is retried whatever the failure (it has no fallback); one that still
//!   fails is recorded (`SagaStepFailed` with `compensation`) and the earlier steps are still
//!   compensated. Then the saga is `COMPENSATED`, or `FAILED` when a step stayed uncompensated,
//!   for a person to resolve.
//! - Recovery: the loop's checkpoint is a low-water mark, the position before the oldest
//!   `SagaStarted` whose saga this process has not seen end. A restart reads the feed from there
//!   and drives every saga it finds again; those that had ended find nothing to do.
//!
//! Exactly one driver per saga: within a process, the loop spawns one task per `SagaStarted`;
//! across processes (several command processes on one PostgreSQL store), a driver first takes the
//! saga's lease ([`Leases`], a PostgreSQL advisory lock there). The others keep the saga in their
//! low-water mark and look again every `lease_poll` until it ends or its driver dies and they get
//! the lease. Without the lease it would still be correct (expected-version appends let one
//! driver record each outcome, the derived command ids apply each step once), only duplicated.
//!
//! Architecture invariant: like the rest of the runtime, no SQL, no HTTP.

mod model;
mod process;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
use nexus_core::{
    Aggregate, CommandResult, Domain, DomainEvent, EventMetadata, EventRejection, EventStore, EventValidator,
    FieldError, Leases, ReadStore, SagaDefinition, StepCommand, StoreError, derived_id, format_timestamp,
    is_valid_aggregate_id,
};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::commands::{CommandBus, CommandError, CommandRequest};
use crate::schema::PayloadValidator;

pub use model::{
    Action, FailureReason, SAGA_STARTED, SAGAS_RESOURCE, Saga, SagaCompensated, SagaCompleted, SagaEvent,
    SagaFailed, SagaStepCompensated, SagaStepCompleted, SagaStepFailed, SagaView, SagasProjection,
    TERMINAL_EVENTS, read_saga_event,
};
pub use process::ProcessManagerRunner;

/// The coordinator's checkpoint in the read store (a low-water mark, see the module docs).
pub const COORDINATOR_CHECKPOINT: &str = "saga-coordinator";
/// At most this many steps per saga.
pub const MAX_STEPS: usize = 100;
/// The longest step timeout a definition may ask for (1 h).
pub const MAX_STEP_TIMEOUT_MS: u64 = 3_600_000;

/// Registers what serving sagas needs in `domain`: the saga event types (as the `Saga`
/// aggregate, which takes no commands) with the upcasters of their older versions, and the
/// `sagas` projection. Idempotent.
pub fn with_sagas(domain: Domain) -> Domain {
    let domain = if domain.event(SAGA_STARTED).is_none() {
        model::UPCASTERS.into_iter().fold(domain.aggregate::<Saga>(), Domain::upcaster)
    } else {
        domain
    };
    if domain.projection_named(SAGAS_RESOURCE).is_none() {
        domain.projection(SagasProjection)
    } else {
        domain
    }
}

/// How the coordinator runs steps.
#[derive(Clone, Debug)]
pub struct SagaSettings {
    /// A step's timeout when its definition names none (seed: 30 s).
    pub default_step_timeout: Duration,
    /// First retry delay; doubled after each failed attempt.
    pub retry_base: Duration,
    /// Attempts of a step's command before it fails (transient failures only are retried).
    pub step_attempts: u32,
    /// Attempts of a compensating command before its step is left uncompensated (and the saga
    /// ends `FAILED`).
    pub compensation_attempts: u32,
    /// A pause before each command a saga runs and before recording its outcome. Zero in
    /// production; tests and demos use it to make the windows between steps observable.
    pub step_delay: Duration,
    /// Events read from the change feed at a time.
    pub batch_size: usize,
    /// How often a process that could not lease a saga looks again (has it ended, or did its
    /// driver die?).
    pub lease_poll: Duration,
}

/// Why a saga was not started.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error("the saga definition is invalid")]
    Invalid(Vec<FieldError>),
    /// The saga id is taken: by a saga with another definition, or by another aggregate.
    #[error("sagaId '{0}' is already used by a different saga or aggregate")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`SagaCoordinator::start`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    New,
    /// The same saga was started before (same id and definition): nothing appended.
    Existing,
}

/// Starts sagas and drives them to an end. Cheap to clone.
#[derive(Clone)]
pub struct SagaCoordinator(Arc<Shared>);

struct Shared {
    bus: Arc<CommandBus>,
    events: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    domain: Arc<Domain>,
    validator: PayloadValidator,
    /// The schema registry's check of every saga event before it is appended.
    event_validator: Option<Arc<dyn EventValidator>>,
    settings: SagaSettings,
    /// One driver per saga across processes.
    leases: Arc<dyn Leases>,
}

/// Why driving a saga stopped before its end.
enum DriveError {
    /// Try again later (the store is unavailable).
    Retry(String),
    /// The stream cannot be read: a person has to look.
    Broken(String),
}

/// One command of a saga that did not succeed.
#[derive(Debug)]
struct Failure {
    reason: FailureReason,
    error: String,
    attempts: u32,
}

impl SagaCoordinator {
    /// Fails when a command schema of `domain` does not compile.
    pub fn new(
        bus: Arc<CommandBus>,
        events: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        domain: Arc<Domain>,
        settings: SagaSettings,
    ) -> Result<Self, String> {
        let validator = PayloadValidator::for_commands(&domain)?;
        let leases: Arc<dyn Leases> = Arc::new(crate::InProcessLeases::default());
        Ok(Self(Arc::new(Shared {
            bus,
            events,
            read,
            domain,
            validator,
            event_validator: None,
            settings,
            leases,
        })))
    }

    /// Leases shared by every process that drives sagas on the same store (the default, in
    /// memory, is right for one process only).
    ///
    /// # Panics
    /// When the coordinator was cloned already: configure it before sharing it.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>) -> Self {
        Arc::get_mut(&mut self.0).expect("configured before it is shared").leases = leases;
        self
    }

    /// Validates every saga event against its registered schema before appending it, as the
    /// command path does for the domain's events.
    ///
    /// # Panics
    /// When the coordinator was cloned already: configure it before sharing it.
    pub fn with_event_validator(mut self, validator: Arc<dyn EventValidator>) -> Self {
        Arc::get_mut(&mut self.0).expect("configured before it is shared").event_validator = Some(validator);
        self
    }

    pub fn settings(&self) -> &SagaSettings {
        &self.0.settings
    }

    /// Every problem of `definition`, each named by its path (`steps[0].command.commandType`).
    pub fn check(&self, definition: &SagaDefinition) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !is_valid_aggregate_id(&definition.saga_id) {
            errors.push(FieldError::new("sagaId", "must be 1-128 characters of [A-Za-z0-9._:-]"));
        }
        if !is_valid_aggregate_id(&definition.saga_type) {
            errors.push(FieldError::new("sagaType", "must be 1-128 characters of [A-Za-z0-9._:-]"));
        }
        if definition.steps.is_empty() {
            errors.push(FieldError::new("steps", "must have at least one step"));
        }
        if definition.steps.len() > MAX_STEPS {
            errors.push(FieldError::new("steps", format!("must have at most {MAX_STEPS} steps")));
        }
        let mut seen = HashSet::new();
        for (i, step) in definition.steps.iter().enumerate() {
            if !is_valid_aggregate_id(&step.step_id) {
                errors.push(FieldError::new(
                    format!("steps[{i}].stepId"),
                    "must be 1-128 characters of [A-Za-z0-9._:-]",
                ));
            } else if !seen.insert(step.step_id.as_str()) {
                errors.push(FieldError::new(format!("steps[{i}].stepId"), "is used by an earlier step"));
            }
            self.check_command(&format!("steps[{i}].command"), &step.command, &mut errors);
            if let Some(compensation) = &step.compensating_command {
                self.check_command(&format!("steps[{i}].compensatingCommand"), compensation, &mut errors);
            }
            if step.timeout_ms.is_some_and(|timeout| !(1..=MAX_STEP_TIMEOUT_MS).contains(&timeout)) {
                errors.push(FieldError::new(
                    format!("steps[{i}].timeoutMs"),
                    format!("must be from 1 to {MAX_STEP_TIMEOUT_MS}"),
                ));
            }
        }
        errors
    }

    fn check_command(&self, path: &str, command: &StepCommand, errors: &mut Vec<FieldError>) {
        if self.0.domain.command(&command.command_type).is_none() {
            errors.push(FieldError::new(
                format!("{path}.commandType"),
                format!("no handler for command type '{}'", command.command_type),
            ));
        } else if command.payload.is_object() {
            for error in self.0.validator.check(&command.command_type, &command.payload) {
                let field = if error.field == "payload" {
                    format!("{path}.payload")
                } else {
                    format!("{path}.payload.{}", error.field)
                };
                errors.push(FieldError::new(field, error.error));
            }
        }
        if !is_valid_aggregate_id(&command.aggregate_id) {
            errors.push(FieldError::new(
                format!("{path}.aggregateId"),
                "must be 1-128 characters of [A-Za-z0-9._:-]",
            ));
        }
        if !command.payload.is_object() {
            errors.push(FieldError::new(format!("{path}.payload"), "must be an object"));
        }
    }

    /// Validates `definition`, resolves its step timeouts and appends `SagaStarted`. Starting a
    /// saga again with the same id and steps is a no-op; the [`run`](Self::run) loop drives it.
    pub async fn start(&self, mut definition: SagaDefinition) -> Result<Started, SagaError> {
        let errors = self.check(&definition);
        if !errors.is_empty() {
            return Err(SagaError::Invalid(errors));
        }
        let default_timeout = self.0.settings.default_step_timeout.as_millis() as u64;
        for step in &mut definition.steps {
            step.timeout_ms.get_or_insert(default_timeout);
        }
        let started = SagaEvent::SagaStarted(definition.clone());
        match self.0.append(&definition, 0, &started).await {
            Ok(_) => {
                metrics::counter!("nexus_sagas_started_total", "saga_type" => definition.saga_type.clone())
                    .increment(1);
                Ok(Started::New)
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {
                let first = self.0.events.read_stream(&definition.saga_id, 1, Some(1)).await?;
                match first.first().map(read_saga_event) {
                    Some(Ok(SagaEvent::SagaStarted(existing)))
                        if existing.saga_type == definition.saga_type
                            && existing.steps == definition.steps =>
                    {
                        Ok(Started::Existing)
                    }
                    _ => Err(SagaError::Conflict(definition.saga_id)),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Tails the change feed from the low-water checkpoint and drives every saga it starts seeing,
    /// until `shutdown` turns true. Drivers are then aborted: stopping mid-step is a crash the
    /// saga is built to survive, and the next start resumes it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let shared = self.0;
        let Some(mut position) =
            checkpoint(shared.read.as_ref(), COORDINATOR_CHECKPOINT, &mut shutdown).await
        else {
            return;
        };
        tracing::info!(checkpoint = position, "saga coordinator started");
        let mut committed = position;
        // Start position of each saga being driven → its id. The smallest key bounds the
        // checkpoint: a restart must see that saga's `SagaStarted` again.
        let mut active: BTreeMap<u64, String> = BTreeMap::new();
        let mut drivers: JoinSet<u64> = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        let pacer = crate::projections::CheckpointPacer::new();
        while !*shutdown.borrow() {
            while let Some(done) = drivers.try_join_next() {
                ended(&mut active, done);
            }
            // Nothing new to read: a good time to save a paced checkpoint.
            let mut idle = false;
            match shared.events.read_all(position, shared.settings.batch_size).await {
                Ok(batch) if !batch.is_empty() => {
                    for event in &batch {
                        if event.event_type == SAGA_STARTED {
                            active.insert(event.position, event.aggregate_id.clone());
                            drivers.spawn(drive(shared.clone(), event.aggregate_id.clone(), event.position));
                        }
                    }
                    position = batch.last().map_or(position, |e| e.position);
                    backoff = Duration::from_millis(100);
                }
                Ok(_) => {
                    idle = true;
                    tokio::select! {
                        _ = shared.events.wait_past(position, Duration::from_secs(1)) => {}
                        Some(done) = drivers.join_next(), if !drivers.is_empty() => ended(&mut active, done),
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "saga coordinator cannot read the change feed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
                }
            }
            let low = active.keys().next().map_or(position, |start| start - 1);
            // Paced: a low-water mark that lags is always safe (a restart re-reads ended sagas,
            // which find nothing to do), and a commit per batch was a read-store write each.
            if low > committed && (idle || pacer.due(low)) {
                match shared.read.commit(COORDINATOR_CHECKPOINT, SAGAS_RESOURCE, Vec::new(), low).await {
                    Ok(()) => {
                        committed = low;
                        pacer.committed();
                    }
                    Err(error) => tracing::warn!(%error, "saga checkpoint not saved; retrying"),
                }
            }
            metrics::gauge!("nexus_sagas_active").set(active.len() as f64);
        }
        drivers.abort_all();
        while drivers.join_next().await.is_some() {}
        let low = active.keys().next().map_or(position, |start| start - 1);
        if low > committed
            && let Err(error) =
                shared.read.commit(COORDINATOR_CHECKPOINT, SAGAS_RESOURCE, Vec::new(), low).await
        {
            tracing::warn!(%error, "saga checkpoint not saved on the way out");
        }
        tracing::debug!("saga coordinator stopped");
    }

    /// Issues `command` under `command_id` with the saga's retry policy: used by process
    /// managers for the commands they issue once a saga ended.
    async fn issue(
        &self,
        saga: &SagaDefinition,
        command: &StepCommand,
        command_id: String,
    ) -> Result<(), Failure> {
        let timeout = self.0.settings.default_step_timeout;
        let attempts = self.0.settings.step_attempts;
        self.0.execute(saga, command, command_id, timeout, attempts, false).await.map(|_| ())
    }

    /// The saga's state folded from its stream.
    async fn load(&self, saga_id: &str) -> Result<Option<Saga>, StoreError> {
        let events = self.0.events.read_stream(saga_id, 1, None).await?;
        fold(&events).map_err(StoreError::Corrupt)
    }
}

/// A saga's status folded from its stream on request (when the `sagas` read model has not seen
/// it yet); `None` when no saga has that id.
pub async fn saga_view(events: &dyn EventStore, saga_id: &str) -> Result<Option<SagaView>, StoreError> {
    let stream = events.read_stream(saga_id, 1, None).await?;
    Ok(fold(&stream).map_err(StoreError::Corrupt)?.map(|saga| saga.view().clone()))
}

/// `None` when the stream is empty or is not a saga's.
fn fold(events: &[DomainEvent]) -> Result<Option<Saga>, String> {
    match events.first() {
        Some(first) if first.event_type == SAGA_STARTED => {}
        _ => return Ok(None),
    }
    let mut saga = Saga::default();
    for event in events {
        saga.apply(read_saga_event(event)?);
    }
    Ok(Some(saga))
}

fn ended(active: &mut BTreeMap<u64, String>, done: Result<u64, tokio::task::JoinError>) {
    match done {
        Ok(start) => {
            active.remove(&start);
        }
        // A panicking driver keeps its saga in `active`: the checkpoint stays before it, so the
        // next start tries it again.
        Err(error) if error.is_panic() => tracing::error!(%error, "a saga driver panicked"),
        Err(_) => {}
    }
}

/// The checkpoint named `name`, retried until the read store answers; `None` on shutdown.
async fn checkpoint(read: &dyn ReadStore, name: &str, shutdown: &mut watch::Receiver<bool>) -> Option<u64> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match read.checkpoint(name).await {
            Ok(position) => return Some(position),
            Err(error) => tracing::error!(name, %error, "cannot read the checkpoint; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return None;
        }
        backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
    }
}

/// Drives one saga to its end once it holds the saga's lease, retrying while the store is
/// unavailable; or, while another process holds the lease, waits for the saga to end. Returns the
/// position of its `SagaStarted`, so the loop can move its low-water mark.
async fn drive(shared: Arc<Shared>, saga_id: String, start: u64) -> u64 {
    let name = format!("saga:{saga_id}");
    let mut backoff = shared.settings.retry_base.max(Duration::from_millis(10));
    let _lease = loop {
        match shared.leases.try_lease(&name).await {
            Ok(Some(lease)) => break lease,
            Ok(None) => match shared.events.read_stream(&saga_id, 1, None).await {
                // Ended by whoever holds the lease: nothing left for this process.
                Ok(stream)
                    if stream.last().is_some_and(|e| TERMINAL_EVENTS.contains(&e.event_type.as_str())) =>
                {
                    return start;
                }
                Ok(_) => tokio::time::sleep(shared.settings.lease_poll).await,
                Err(error) => {
                    tracing::warn!(saga_id, %error, "cannot read a leased saga; retrying");
                    tokio::time::sleep(shared.settings.lease_poll).await;
                }
            },
            Err(error) => {
                tracing::warn!(saga_id, %error, "cannot take the saga's lease; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
            }
        }
    };
    let mut backoff = shared.settings.retry_base.max(Duration::from_millis(10));
    loop {
        match shared.drive_once(&saga_id).await {
            Ok(()) => return start,
            Err(DriveError::Broken(error)) => {
                metrics::counter!("nexus_saga_errors_total").increment(1);
                tracing::error!(saga_id, %error, "saga cannot be driven; it needs manual resolution");
                return start;
            }
            Err(DriveError::Retry(error)) => {
                tracing::warn!(saga_id, %error, "saga interrupted; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
            }
        }
    }
}

impl Shared {
    /// Runs the saga's next actions until it ends, recording each outcome before the next action.
    async fn drive_once(&self, saga_id: &str) -> Result<(), DriveError> {
        let events = self.events.read_stream(saga_id, 1, None).await.map_err(retry)?;
        let Some(mut saga) = fold(&events).map_err(DriveError::Broken)? else {
            return Err(DriveError::Broken(format!("stream {saga_id} does not start with SagaStarted")));
        };
        let mut version = events.last().map_or(0, |e| e.aggregate_version);
        let started_at = events.first().and_then(|e| DateTime::parse_from_rfc3339(&e.timestamp).ok());
        // Asked once per load: whether the failed step's command was applied after all.
        let mut failed_step_applied = None;
        loop {
            if failed_step_applied.is_none() && saga.failure().is_some() {
                failed_step_applied = Some(self.failed_step_applied(&saga).await.map_err(retry)?);
            }
            let action = saga.next(failed_step_applied.unwrap_or(false));
            let definition = saga.definition().expect("folded from SagaStarted").clone();
            let event = match action {
                Action::Done => return Ok(()),
                Action::Run(index) => self.run_step(&definition, index).await,
                Action::Complete => {
                    SagaEvent::SagaCompleted(SagaCompleted { saga_type: definition.saga_type.clone() })
                }
                Action::Compensate(index) => self.compensate_step(&saga, index).await,
                Action::FinishCompensation => SagaEvent::SagaCompensated(SagaCompensated {
                    saga_type: definition.saga_type.clone(),
                    error: saga.view().error.clone().unwrap_or_default(),
                }),
                Action::Fail => saga_failed(&saga),
            };
            match self.append(&definition, version, &event).await {
                Ok(stored) => {
                    version = stored.aggregate_version;
                    record_end(&definition.saga_type, &event, started_at);
                    saga.apply(event);
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    // Someone else recorded an outcome (another process driving the same saga):
                    // start over from what is stored.
                    return Err(DriveError::Retry(format!("saga {saga_id} moved on; reloading")));
                }
                Err(error) => return Err(retry(error)),
            }
        }
    }

    async fn failed_step_applied(&self, saga: &Saga) -> Result<bool, StoreError> {
        let Some(index) = saga.failed_step_to_check() else { return Ok(false) };
        let definition = saga.definition().expect("folded from SagaStarted");
        let command_id = derived_id(&[&definition.saga_id, &definition.steps[index].step_id]);
        Ok(self.events.find_command(&command_id).await?.is_some())
    }

    async fn run_step(&self, definition: &SagaDefinition, index: usize) -> SagaEvent {
        let step = &definition.steps[index];
        let command_id = derived_id(&[&definition.saga_id, &step.step_id]);
        let timeout = self.step_timeout(step.timeout_ms);
        self.pause().await;
        let outcome = self
            .execute(
                definition,
                &step.command,
                command_id.clone(),
                timeout,
                self.settings.step_attempts,
                false,
            )
            .await;
        self.pause().await;
        match outcome {
            Ok(result) => SagaEvent::SagaStepCompleted(SagaStepCompleted {
                step_id: step.step_id.clone(),
                command_id,
                aggregate_id: result.aggregate_id,
                version: result.version,
            }),
            Err(failure) => {
                tracing::info!(
                    saga_id = definition.saga_id,
                    step = step.step_id,
                    error = failure.error,
                    "saga step failed; compensating"
                );
                SagaEvent::SagaStepFailed(SagaStepFailed {
                    step_id: step.step_id.clone(),
                    reason: failure.reason,
                    error: failure.error,
                    attempts: failure.attempts,
                    compensation: false,
                })
            }
        }
    }

    async fn compensate_step(&self, saga: &Saga, index: usize) -> SagaEvent {
        let definition = saga.definition().expect("folded from SagaStarted");
        let step = &definition.steps[index];
        let command = step.compensating_command.as_ref().expect("next() picks compensable steps");
        let command_id = derived_id(&[&definition.saga_id, &step.step_id, "compensate"]);
        let timeout = self.step_timeout(step.timeout_ms);
        self.pause().await;
        let outcome = self
            .execute(
                definition,
                command,
                command_id.clone(),
                timeout,
                self.settings.compensation_attempts,
                true,
            )
            .await;
        self.pause().await;
        match outcome {
            Ok(_) => SagaEvent::SagaStepCompensated(SagaStepCompensated {
                step_id: step.step_id.clone(),
                command_id,
            }),
            Err(failure) => {
                tracing::error!(
                    saga_id = definition.saga_id,
                    step = step.step_id,
                    error = failure.error,
                    "compensation failed; the step stays uncompensated, the earlier steps are still compensated"
                );
                SagaEvent::SagaStepFailed(SagaStepFailed {
                    step_id: step.step_id.clone(),
                    reason: failure.reason,
                    error: failure.error,
                    attempts: failure.attempts,
                    compensation: true,
                })
            }
        }
    }

    fn step_timeout(&self, timeout_ms: Option<u64>) -> Duration {
        timeout_ms.map_or(self.settings.default_step_timeout, Duration::from_millis)
    }

    async fn pause(&self) {
        if !self.settings.step_delay.is_zero() {
            tokio::time::sleep(self.settings.step_delay).await;
        }
    }

    /// Runs `command` until it succeeds or `attempts` are spent: each attempt bounded by
    /// `timeout`, retried after `retry_base * 2^(attempt-1)` when the failure is transient (or
    /// always, for compensations). The same command id every time: an attempt that timed out but
    /// committed later is replayed, not applied again.
    async fn execute(
        &self,
        saga: &SagaDefinition,
        command: &StepCommand,
        command_id: String,
        timeout: Duration,
        attempts: u32,
        retry_every_failure: bool,
    ) -> Result<CommandResult, Failure> {
        let request = CommandRequest {
            command_type: command.command_type.clone(),
            aggregate_id: Some(command.aggregate_id.clone()),
            command_id: Some(command_id),
            expected_version: None,
            payload: command.payload.clone(),
            user_id: saga.metadata.user_id.clone(),
            correlation_id: Some(
                saga.metadata.correlation_id.clone().unwrap_or_else(|| saga.saga_id.clone()),
            ),
            causation_id: Some(saga.saga_id.clone()),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (reason, error) = match tokio::time::timeout(timeout, self.bus.handle(request.clone())).await
            {
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(error)) => classify(error),
                Err(_) => {
                    metrics::counter!("nexus_saga_step_timeouts_total", "saga_type" => saga.saga_type.clone())
                        .increment(1);
                    (FailureReason::Timeout, format!("no answer within {} ms", timeout.as_millis()))
                }
            };
            if attempt >= attempts.max(1) || !(retry_every_failure || reason.is_transient()) {
                return Err(Failure { reason, error, attempts: attempt });
            }
            tracing::debug!(
                saga_id = saga.saga_id,
                command = command.command_type,
                attempt,
                error,
                "retrying"
            );
            let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
            let delay = self.settings.retry_base.saturating_mul(factor).min(Duration::from_secs(60));
            tokio::time::sleep(delay).await;
        }
    }

    /// Appends one saga event at `expected` (the coordinator is the stream's only writer).
    async fn append(
        &self,
        definition: &SagaDefinition,
        expected: u64,
        event: &SagaEvent,
    ) -> Result<DomainEvent, StoreError> {
        let encoded = serde_json::to_value(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (Some(Value::String(event_type)), Some(payload)) =
            (encoded.get("eventType"), encoded.get("payload"))
        else {
            return Err(StoreError::Corrupt("a saga event is adjacently tagged".into()));
        };
        let schema_version = self.domain.event(event_type).map_or(1, |spec| spec.schema_version).to_string();
        if let Some(validator) = &self.event_validator {
            validator.validate(event_type, &schema_version, payload).await.map_err(|rejection| {
                match rejection {
                    EventRejection::Unavailable(error) => error,
                    // Our own schemas refuse our own event: a bug, not something a retry fixes.
                    other => {
                        StoreError::Corrupt(format!("saga event refused by the schema registry: {other}"))
                    }
                }
            })?;
        }
        let new = NewEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.clone(),
            timestamp: format_timestamp(Utc::now()),
            payload: Arc::new(payload.clone()),
            metadata: EventMetadata {
                correlation_id: definition
                    .metadata
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| definition.saga_id.clone()),
                causation_id: definition.saga_id.clone(),
                user_id: definition.metadata.user_id.clone().unwrap_or_else(|| "saga-coordinator".into()),
                schema_version,
            },
        };
        let request = AppendRequest {
            aggregate_id: definition.saga_id.clone(),
            aggregate_type: Saga::KIND.to_owned(),
            expected_version: expected,
            events: vec![new],
            command: None,
        };
        match self.events.append(request).await? {
            AppendOutcome::Committed(mut stored) if stored.len() == 1 => {
                metrics::counter!("nexus_events_appended_total").increment(1);
                Ok(stored.remove(0))
            }
            _ => Err(StoreError::Corrupt("the store answered a saga append without its event".into())),
        }
    }
}

/// The end of a saga whose compensations all ran but some kept failing: which steps stayed
/// uncompensated, why, and why the saga was compensating at all.
fn saga_failed(saga: &Saga) -> SagaEvent {
    let failures = saga.compensation_failures();
    let reasons: Vec<String> = failures
        .iter()
        .map(|f| {
            format!("compensation of step {} failed after {} attempts: {}", f.step_id, f.attempts, f.error)
        })
        .collect();
    let cause = saga.view().error.as_deref().unwrap_or_default();
    SagaEvent::SagaFailed(SagaFailed {
        saga_type: saga.definition().expect("folded from SagaStarted").saga_type.clone(),
        step_id: failures.first().expect("next() fails a saga with failed compensations").step_id.clone(),
        error: format!(
            "left uncompensated: {}; {} (compensating because {cause})",
            saga.view().uncompensated_steps.join(", "),
            reasons.join("; ")
        ),
    })
}

/// Counts a saga's end and its duration.
fn record_end(saga_type: &str, event: &SagaEvent, started_at: Option<DateTime<chrono::FixedOffset>>) {
    let status = match event {
        SagaEvent::SagaCompleted(_) => "COMPLETED",
        SagaEvent::SagaCompensated(_) => "COMPENSATED",
        SagaEvent::SagaFailed(_) => "FAILED",
        _ => return,
    };
    let counter = match status {
        "COMPLETED" => "nexus_sagas_completed_total",
        "COMPENSATED" => "nexus_sagas_compensated_total",
        _ => "nexus_sagas_failed_total",
    };
    metrics::counter!(counter, "saga_type" => saga_type.to_owned()).increment(1);
    if let Some(started) = started_at {
        let seconds = (Utc::now() - started.to_utc()).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        metrics::histogram!("nexus_saga_duration_seconds", "saga_type" => saga_type.to_owned(), "status" => status)
            .record(seconds);
    }
}

fn retry(error: StoreError) -> DriveError {
    match error {
        StoreError::Corrupt(message) => DriveError::Broken(message),
        other => DriveError::Retry(other.to_string()),
    }
}

/// Whether a failed attempt is worth another: only an unavailable store (and timeouts, above).
fn classify(error: CommandError) -> (FailureReason, String) {
    let reason = match &error {
        CommandError::Rejected(_) => FailureReason::Rejected,
        CommandError::Invalid(_) | CommandError::UnknownCommand(_) => FailureReason::Invalid,
        // The bus has tried the store again itself by then.
        CommandError::Unavailable { .. } => FailureReason::Unavailable,
        _ => FailureReason::Error,
    };
    let message = match error {
        CommandError::Invalid(fields) => {
            let fields: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.field, f.error)).collect();
            format!("invalid command: {}", fields.join("; "))
        }
        other => other.to_string(),
    };
    (reason, message)
}
