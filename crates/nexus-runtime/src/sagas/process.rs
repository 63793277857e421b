//! Runs a [`ProcessManager`]: tails the change feed from its own checkpoint, starts the sagas
//! its trigger events ask for, and issues its follow-up commands once those sagas end.

use std::sync::Arc;
use std::time::Duration;

use nexus_core::{ProcessManager, SagaOutcome, derived_id};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{SAGAS_RESOURCE, SagaCoordinator, SagaError, TERMINAL_EVENTS, checkpoint};

/// One process manager over the change feed. Every effect is idempotent (a saga id derived from
/// its trigger, command ids derived from the saga id), so a batch is simply replayed after a crash
/// or an error, and its checkpoint moves only once the whole batch is done.
pub struct ProcessManagerRunner {
    manager: Arc<dyn ProcessManager>,
    coordinator: SagaCoordinator,
}

impl ProcessManagerRunner {
    pub fn new(manager: Arc<dyn ProcessManager>, coordinator: SagaCoordinator) -> Self {
        Self { manager, coordinator }
    }

    /// The read-store checkpoint this runner keeps.
    pub fn checkpoint_name(&self) -> String {
        format!("process-manager:{}", self.manager.name())
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.checkpoint_name();
        let shared = self.coordinator.0.clone();
        let Some(mut position) = checkpoint(shared.read.as_ref(), &name, &mut shutdown).await else { return };
        tracing::info!(
            process_manager = self.manager.name(),
            checkpoint = position,
            "process manager started"
        );
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            match self.step(&name, position).await {
                Ok(Some(next)) => {
                    position = next;
                    backoff = Duration::from_millis(100);
                }
                Ok(None) => {
                    tokio::select! {
                        _ = shared.events.wait_past(position, Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::error!(process_manager = self.manager.name(), %error, "process manager stalled; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(crate::failure::MAX_BACKOFF);
                }
            }
        }
    }

    /// Handles the next batch after `after`; `None` when there is nothing new.
    async fn step(&self, name: &str, after: u64) -> Result<Option<u64>, String> {
        let shared = &self.coordinator.0;
        let batch =
            shared.events.read_all(after, shared.settings.batch_size).await.map_err(|e| e.to_string())?;
        let Some(last) = batch.last().map(|e| e.position) else { return Ok(None) };
        let mut work: JoinSet<Result<(), String>> = JoinSet::new();
        for event in &batch {
            if self.manager.handles(&event.event_type) {
                match self.manager.start(event) {
                    Ok(Some(definition)) => {
                        let coordinator = self.coordinator.clone();
                        let manager = self.manager.name();
                        work.spawn(async move {
                            let saga_id = definition.saga_id.clone();
                            match coordinator.start(definition).await {
                                Ok(_) => Ok(()),
                                Err(SagaError::Store(error)) => Err(error.to_string()),
                                // A bug in the process manager, or an id taken by someone else:
                                // retrying cannot help, and stalling would stop every other saga.
                                Err(error) => {
                                    tracing::error!(process_manager = manager, saga_id, %error, "saga not started");
                                    Ok(())
                                }
                            }
                        });
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(
                        process_manager = self.manager.name(),
                        event_id = event.event_id,
                        %error,
                        "event skipped: the process manager cannot read it"
                    ),
                }
            }
            let ends_own_saga = TERMINAL_EVENTS.contains(&event.event_type.as_str())
                && event.payload.get("sagaType").and_then(|t| t.as_str()) == Some(self.manager.saga_type());
            if ends_own_saga {
                let (coordinator, manager) = (self.coordinator.clone(), self.manager.clone());
                let saga_id = event.aggregate_id.clone();
                work.spawn(async move { settle(coordinator, manager, saga_id).await });
            }
        }
        let mut first_error = None;
        while let Some(done) = work.join_next().await {
            let outcome = done.map_err(|e| e.to_string()).and_then(|inner| inner);
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            return Err(error); // the batch is replayed; what succeeded replays as a no-op
        }
        shared.read.commit(name, SAGAS_RESOURCE, Vec::new(), last).await.map_err(|e| e.to_string())?;
        Ok(Some(last))
    }
}

/// Issues the process manager's follow-up commands for an ended saga, each under a command id
/// derived from the saga id and its index. A rejected command is logged and skipped (e.g. the
/// order was cancelled meanwhile); an unavailable store fails the batch, which is replayed.
async fn settle(
    coordinator: SagaCoordinator,
    manager: Arc<dyn ProcessManager>,
    saga_id: String,
) -> Result<(), String> {
    let Some(saga) = coordinator.load(&saga_id).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let (Some(definition), view) = (saga.definition(), saga.view()) else { return Ok(()) };
    let outcome = SagaOutcome { status: view.status, error: view.error.clone() };
    for (index, command) in manager.ended(definition, &outcome).iter().enumerate() {
        let command_id = derived_id(&[&saga_id, "ended", &index.to_string()]);
        if let Err(failure) = coordinator.issue(definition, command, command_id).await {
            if failure.reason.is_transient() {
                return Err(failure.error);
            }
            tracing::warn!(
                process_manager = manager.name(),
                saga_id,
                command = command.command_type,
                error = failure.error,
                "follow-up command refused; skipped"
            );
        }
    }
    Ok(())
}
