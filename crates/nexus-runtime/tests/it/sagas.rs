//! The saga coordinator against the real SQLite store: completion, compensation in reverse order,
//! timeouts, retries, failed compensations, and resuming from the stored events.
//!
//! Faults come from a decorator of the real store that acts on aggregate ids by prefix: `slow-`
//! appends wait before reaching the store (a step that never answers in time and never applies),
//! `late-` appends commit and then answer late (a step that times out but applied), `flaky-`
//! appends fail as unavailable a given number of times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_core::ports::{AppendOutcome, AppendRequest, CommandRecord};
use nexus_core::{Domain, DomainEvent, EventStore, SagaDefinition, SagaStatus, StoreError};
use nexus_runtime::sagas::{SagaCoordinator, SagaSettings, SagaView, saga_view, with_sagas};
use nexus_runtime::{CommandBus, CommandRequest, Started};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};
use serde_json::{Value, json};
use tokio::sync::watch;

struct Faulty {
    inner: Arc<SqliteEventStore>,
    flaky_failures: AtomicU32,
}

#[async_trait]
impl EventStore for Faulty {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let id = request.aggregate_id.clone();
        if id.starts_with("slow-") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if id.starts_with("flaky-")
            && self
                .flaky_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Unavailable("injected: the store is down".into()));
        }
        let outcome = self.inner.append(request).await;
        if id.starts_with("late-") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        outcome
    }
    async fn read_stream(
        &self,
        id: &str,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.read_stream(id, from, to).await
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }
    async fn read_by_type(
        &self,
        t: &str,
        s: &str,
        e: &str,
        l: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        self.inner.read_by_type(t, s, e, l).await
    }
    async fn find_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.inner.find_command(id).await
    }
    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }
    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_past(after, timeout).await
    }
}

fn settings() -> SagaSettings {
    SagaSettings {
        default_step_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(10),
        step_attempts: 3,
        compensation_attempts: 3,
        step_delay: Duration::ZERO,
        batch_size: 100,
        lease_poll: Duration::from_millis(20),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<Faulty>,
    bus: Arc<CommandBus>,
    coordinator: SagaCoordinator,
    stop: watch::Sender<bool>,
    running: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn start(settings: SagaSettings) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), settings, true).await
    }

    async fn start_in(dir: tempfile::TempDir, settings: SagaSettings, run: bool) -> Self {
        let inner = Arc::new(SqliteEventStore::open(dir.path()).unwrap());
        let read = Arc::new(SqliteReadStore::open(dir.path()).unwrap());
        let store = Arc::new(Faulty { inner, flaky_failures: AtomicU32::new(0) });
        let domain: Arc<Domain> = Arc::new(with_sagas(nexus_domain::domain()));
        let bus = Arc::new(CommandBus::new(domain.clone(), store.clone(), 1000).unwrap());
        let coordinator = SagaCoordinator::new(bus.clone(), store.clone(), read, domain, settings).unwrap();
        let (stop, stopped) = watch::channel(false);
        let running = run.then(|| tokio::spawn(coordinator.clone().run(stopped)));
        Self { _dir: dir, store, bus, coordinator, stop, running }
    }

    /// Stops the coordinator (its drivers are aborted mid-step, like a crash) and hands back
    /// the data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.send(true);
        if let Some(running) = self.running.take() {
            running.await.unwrap();
        }
        self._dir
    }

    async fn command(&self, command_type: &str, aggregate_id: &str, payload: Value) {
        let request = CommandRequest {
            command_type: command_type.into(),
            aggregate_id: Some(aggregate_id.into()),
            payload,
            ..CommandRequest::default()
        };
        self.bus.handle(request).await.unwrap_or_else(|e| panic!("{command_type} on {aggregate_id}: {e}"));
    }

    async fn start_saga(&self, definition: Value) -> String {
        let definition: SagaDefinition = serde_json::from_value(definition).unwrap();
        let id = definition.saga_id.clone();
        assert_eq!(self.coordinator.start(definition).await.unwrap(), Started::New);
        id
    }

    async fn wait_for_end(&self, saga_id: &str) -> SagaView {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view = saga_view(self.store.as_ref(), saga_id).await.unwrap();
            if let Some(view) = view.filter(|v| v.status.is_terminal()) {
                return view;
            }
            assert!(Instant::now() < deadline, "saga {saga_id} did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn events(&self, aggregate_id: &str) -> Vec<DomainEvent> {
        self.store.read_stream(aggregate_id, 1, None).await.unwrap()
    }

    async fn event_types(&self, aggregate_id: &str) -> Vec<String> {
        self.events(aggregate_id).await.into_iter().map(|e| e.event_type).collect()
    }

    /// `(eventType, stepId)` of each step-level event of a saga, in stream order.
    async fn step_events(&self, saga_id: &str) -> Vec<(String, String)> {
        self.events(saga_id)
            .await
            .into_iter()
            .filter_map(|e| Some((e.event_type, e.payload.get("stepId")?.as_str()?.to_owned())))
            .collect()
    }
}

fn step(id: &str, command: Value, compensation: Option<Value>) -> Value {
    let mut step = json!({"stepId": id, "command": command});
    if let Some(compensation) = compensation {
        step["compensatingCommand"] = compensation;
    }
    step
}

fn cmd(command_type: &str, aggregate_id: &str, payload: Value) -> Value {
    json!({"commandType": command_type, "aggregateId": aggregate_id, "payload": payload})
}

fn reserve(id: &str, product: &str, quantity: u64) -> Value {
    step(
        id,
        cmd("ReserveStock", product, json!({"orderId": "o-1", "quantity": quantity})),
        Some(cmd("ReleaseStock", product, json!({"orderId": "o-1"}))),
    )
}

fn saga(id: &str, steps: Vec<Value>) -> Value {
    json!({"sagaId": id, "sagaType": "Test", "steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_completes_once_in_order() {
    let h = Harness::start(settings()).await;
    let steps = ["a", "b", "c"]
        .iter()
        .map(|p| step(p, cmd("AddStock", &format!("p-{p}"), json!({"quantity": 5})), None))
        .collect();
    let id = h.start_saga(saga("s-complete", steps)).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.completed_steps, ["a", "b", "c"]);
    assert_eq!((view.current_step, view.total_steps), (3, 3));
    assert_eq!(
        h.event_types(&id).await,
        ["SagaStarted", "SagaStepCompleted", "SagaStepCompleted", "SagaStepCompleted", "SagaCompleted"]
    );
    let started = &h.events(&id).await[0];
    assert_eq!(started.payload["steps"][0]["timeoutMs"], 5000, "the default timeout is resolved at start");
    for p in ["a", "b", "c"] {
        assert_eq!(h.event_types(&format!("p-{p}")).await, ["StockAdded"]);
    }
    // Each step ran under its derived command id.
    let completed = &h.events(&id).await[1];
    assert_eq!(completed.payload["commandId"], "s-complete:a");
    assert!(h.store.find_command("s-complete:a").await.unwrap().is_some());

    // Starting it again is a no-op; another definition under the same id is refused.
    let again: SagaDefinition = serde_json::from_value(saga("s-complete", vec![])).unwrap();
    assert!(h.coordinator.start(again).await.is_err(), "invalid: no steps");
    let same: SagaDefinition = serde_json::from_value(saga(
        "s-complete",
        ["a", "b", "c"]
            .iter()
            .map(|p| step(p, cmd("AddStock", &format!("p-{p}"), json!({"quantity": 5})), None))
            .collect(),
    ))
    .unwrap();
    assert_eq!(h.coordinator.start(same).await.unwrap(), Started::Existing);
    let other: SagaDefinition = serde_json::from_value(saga(
        "s-complete",
        vec![step("x", cmd("AddStock", "p-x", json!({"quantity": 1})), None)],
    ))
    .unwrap();
    assert!(matches!(h.coordinator.start(other).await, Err(nexus_runtime::SagaError::Conflict(_))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_step_compensates_the_completed_ones_in_reverse_order_at_once() {
    let h = Harness::start(settings()).await;
    for p in ["p-1", "p-2", "p-3"] {
        h.command("AddStock", p, json!({"quantity": 10})).await;
    }
    let steps = vec![
        reserve("first", "p-1", 1),
        // No compensating command: nothing to undo for it.
        step("note", cmd("AddStock", "p-9", json!({"quantity": 1})), None),
        reserve("second", "p-2", 2),
        reserve("too-many", "p-3", 11),
        reserve("never", "p-1", 1),
    ];
    let id = h.start_saga(saga("s-reject", steps)).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.failed_step.as_deref(), Some("too-many"));
    assert!(view.error.as_deref().unwrap().contains("insufficient stock"), "{view:?}");
    assert_eq!(view.compensated_steps, ["second", "first"]);
    assert_eq!(
        h.step_events(&id).await,
        [
            ("SagaStepCompleted".into(), "first".into()),
            ("SagaStepCompleted".into(), "note".into()),
            ("SagaStepCompleted".into(), "second".into()),
            ("SagaStepFailed".into(), "too-many".into()),
            ("SagaStepCompensated".into(), "second".into()),
            ("SagaStepCompensated".into(), "first".into()),
        ]
    );
    let failed = h.events(&id).await.into_iter().find(|e| e.event_type == "SagaStepFailed").unwrap();
    assert_eq!(failed.payload["reason"], "REJECTED");
    assert_eq!(failed.payload["attempts"], 1, "a business-rule violation is not retried");
    assert_eq!(h.event_types(&id).await.last().unwrap(), "SagaCompensated");
    assert_eq!(h.event_types("p-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    assert_eq!(h.event_types("p-2").await, ["StockAdded", "StockReserved", "StockReleased"]);
    assert_eq!(h.event_types("p-3").await, ["StockAdded"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_times_out_is_retried_then_compensated() {
    let h = Harness::start(settings()).await;
    h.command("AddStock", "p-1", json!({"quantity": 10})).await;
    let mut slow = step("slow", cmd("AddStock", "slow-1", json!({"quantity": 1})), None);
    slow["timeoutMs"] = json!(100);
    let started = Instant::now();
    let id = h.start_saga(saga("s-timeout", vec![reserve("first", "p-1", 1), slow])).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    let failed = h.events(&id).await.into_iter().find(|e| e.event_type == "SagaStepFailed").unwrap();
    assert_eq!(failed.payload["reason"], "TIMEOUT");
    assert_eq!(failed.payload["attempts"], 3, "timeouts are retried");
    // 3 attempts of 100 ms with 10 + 20 ms between them: well under the 3 s the store would take.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(view.compensated_steps, ["first"]);
    assert_eq!(h.event_types("p-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    assert!(h.event_types("slow-1").await.is_empty(), "the timed-out step never applied");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_step_that_applied_late_is_compensated_too() {
    let mut settings = settings();
    settings.step_attempts = 1;
    let h = Harness::start(settings).await;
    for p in ["p-1", "late-1"] {
        h.command("AddStock", p, json!({"quantity": 10})).await;
    }
    let mut late = reserve("late", "late-1", 2);
    late["timeoutMs"] = json!(200);
    let id = h.start_saga(saga("s-late", vec![reserve("first", "p-1", 1), late])).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.failed_step.as_deref(), Some("late"));
    assert_eq!(view.compensated_steps, ["late", "first"], "the late step first, it is the most recent");
    assert_eq!(h.event_types("late-1").await, ["StockAdded", "StockReserved", "StockReleased"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_is_retried_with_backoff_before_giving_up() {
    let h = Harness::start(settings()).await;
    h.store.flaky_failures.store(2, Ordering::SeqCst);
    let id = h
        .start_saga(saga(
            "s-flaky",
            vec![step("flaky", cmd("AddStock", "flaky-1", json!({"quantity": 1})), None)],
        ))
        .await;
    assert_eq!(h.wait_for_end(&id).await.status, SagaStatus::Completed, "two failures, bridged by retries");
    assert_eq!(h.event_types("flaky-1").await, ["StockAdded"]);

    // Down for longer than the bus's own retries (3 per command) can bridge, every attempt.
    h.store.flaky_failures.store(1000, Ordering::SeqCst);
    let id = h
        .start_saga(saga(
            "s-down",
            vec![
                reserve_stocked(&h, "p-1").await,
                step("flaky", cmd("AddStock", "flaky-2", json!({"quantity": 1})), None),
            ],
        ))
        .await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    let failed = h.events(&id).await.into_iter().find(|e| e.event_type == "SagaStepFailed").unwrap();
    assert_eq!(
        (failed.payload["reason"].clone(), failed.payload["attempts"].clone()),
        (json!("UNAVAILABLE"), json!(3))
    );
    h.stop().await;
}

async fn reserve_stocked(h: &Harness, product: &str) -> Value {
    h.command("AddStock", product, json!({"quantity": 10})).await;
    reserve("first", product, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_that_keeps_failing_ends_the_saga_failed() {
    let h = Harness::start(settings()).await;
    for p in ["p-1", "p-2"] {
        h.command("AddStock", p, json!({"quantity": 10})).await;
    }
    // The first step's compensation releases an order that holds nothing: always refused.
    let broken = step(
        "first",
        cmd("ReserveStock", "p-1", json!({"orderId": "o-1", "quantity": 1})),
        Some(cmd("ReleaseStock", "p-1", json!({"orderId": "o-nobody"}))),
    );
    let steps = vec![broken, reserve("second", "p-2", 1), reserve("too-many", "p-2", 100)];
    let id = h.start_saga(saga("s-fail", steps)).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Failed);
    assert_eq!(view.compensated_steps, ["second"], "compensation stops at the one that failed");
    let error = view.error.unwrap();
    assert!(error.contains("compensation of step first failed after 3 attempts"), "{error}");
    assert!(error.contains("has no stock reserved"), "{error}");
    assert_eq!(h.event_types(&id).await.last().unwrap(), "SagaFailed");
    // Retried: three refusals, nothing appended by them.
    assert_eq!(h.event_types("p-1").await, ["StockAdded", "StockReserved"]);
    h.stop().await;
}

/// A crash after a step's command committed but before the saga recorded it: the resumed saga
/// runs the step again under the same command id, which replays the result instead of applying
/// the step a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_saga_never_applies_a_step_twice() {
    let h = Harness::start_in(tempfile::tempdir().unwrap(), settings(), false).await;
    let steps = ["a", "b"]
        .iter()
        .map(|p| step(p, cmd("AddStock", &format!("r-{p}"), json!({"quantity": 1})), None))
        .collect();
    let id = h.start_saga(saga("s-resume", steps)).await;
    // What the dead process did: step a's command, under its derived id, and no record of it.
    let request = CommandRequest {
        command_type: "AddStock".into(),
        aggregate_id: Some("r-a".into()),
        command_id: Some("s-resume:a".into()),
        payload: json!({"quantity": 1}),
        ..CommandRequest::default()
    };
    h.bus.handle(request).await.unwrap();
    let dir = h.stop().await;

    let h = Harness::start_in(dir, settings(), true).await;
    assert_eq!(h.wait_for_end(&id).await.status, SagaStatus::Completed);
    assert_eq!(h.event_types("r-a").await, ["StockAdded"], "applied once");
    assert_eq!(h.event_types("r-b").await, ["StockAdded"]);
    h.stop().await;
}

/// A coordinator stopped between two steps (its driver aborted) resumes the saga on its next
/// start, from the low-water checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_interrupted_between_steps_resumes_on_the_next_start() {
    let mut slow = settings();
    slow.step_delay = Duration::from_millis(300);
    let h = Harness::start(slow).await;
    let steps = ["a", "b", "c"]
        .iter()
        .map(|p| step(p, cmd("AddStock", &format!("i-{p}"), json!({"quantity": 1})), None))
        .collect();
    let id = h.start_saga(saga("s-interrupted", steps)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.event_types(&id).await.len() < 2 {
        assert!(Instant::now() < deadline, "the first step did not complete");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dir = h.stop().await;

    let h = Harness::start_in(dir, settings(), true).await;
    let view = h.wait_for_end(&id).await;
    assert_eq!(view.status, SagaStatus::Completed);
    for p in ["a", "b", "c"] {
        assert_eq!(h.event_types(&format!("i-{p}")).await, ["StockAdded"], "{p} applied once");
    }
    assert_eq!(h.event_types(&id).await.iter().filter(|t| *t == "SagaStepCompleted").count(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_checked_with_contract_paths() {
    let h = Harness::start_in(tempfile::tempdir().unwrap(), settings(), false).await;
    let definition: SagaDefinition = serde_json::from_value(json!({
        "sagaId": "bad id",
        "sagaType": "Test",
        "steps": [
            {"stepId": "a", "command": cmd("NoSuchCommand", "x", json!({}))},
            {"stepId": "a", "command": cmd("ReserveStock", "p", json!({"quantity": 0})),
             "compensatingCommand": cmd("ReleaseStock", "", json!({"orderId": "o"})), "timeoutMs": 0}
        ]
    }))
    .unwrap();
    let Err(nexus_runtime::SagaError::Invalid(errors)) = h.coordinator.start(definition).await else {
        panic!("accepted an invalid saga");
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "sagaId",
        "steps[0].command.commandType",
        "steps[1].stepId",
        "steps[1].command.payload.orderId",
        "steps[1].command.payload.quantity",
        "steps[1].compensatingCommand.aggregateId",
        "steps[1].timeoutMs",
    ] {
        assert!(fields.contains(&expected), "{expected} missing from {fields:?}");
    }
    h.stop().await;
}
