//! How the runtime's loops fail, by kind, and what a projection does with an event its own code
//! fails on.
//!
//! A loop's step fails either because a backend did not answer (the step is tried again, with
//! backoff, for as long as it takes: nothing is skipped) or because the projection's code failed
//! on one event (a poison event: retried with the queue path's backoff, then parked in the
//! dead-letter queue as `projection:{name}` so the read model goes on with the next event).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexus_core::ports::MAX_DELIVERIES;
use nexus_core::{DomainEvent, EventQueue, FailureKind, ProjectionError, StoreError};

/// The longest a loop waits before it tries a backend that failed again (the wait doubles from
/// 100 ms up to it): short enough that everything resumes within seconds of the backend's return.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why one step of a runtime loop (a projection, the router) failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A backend failed (or holds what it cannot read back).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A projection's code failed on one event.
    #[error("event {} at position {}: {error}", event.event_id, event.position)]
    Poison { event: Box<DomainEvent>, error: ProjectionError },
    /// The schema registry could not be asked about an event.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// A task the step started failed (panicked or was cancelled).
    #[error("a runtime task failed: {0}")]
    Task(String),
}

impl StepError {
    /// What kind of failure this is, for logs and dead letters.
    pub fn kind(&self) -> FailureKind {
        match self {
            StepError::Store(StoreError::Unavailable(_))
            | StepError::RegistryUnavailable(_)
            | StepError::Task(_) => FailureKind::Transient,
            StepError::Store(_) => FailureKind::Permanent,
            StepError::Poison { .. } => FailureKind::Projection,
        }
    }
}

impl From<tokio::task::JoinError> for StepError {
    fn from(error: tokio::task::JoinError) -> Self {
        StepError::Task(error.to_string())
    }
}

/// The dead-letter consumer name of projection `name`.
pub fn projection_consumer(name: &str) -> String {
    format!("projection:{name}")
}

/// The projection a dead letter's consumer names, if it is a projection's.
pub fn parked_projection(consumer: &str) -> Option<&str> {
    consumer.strip_prefix("projection:")
}

/// A projection's poison events: how often each has failed, and those parked in the dead-letter
/// queue, which the projection passes by from then on (their documents' versions move past them,
/// so every path that brings them again skips them). Kept in memory: after a restart an event
/// not yet passed is tried again from its first attempt.
pub(crate) struct Parking {
    consumer: String,
    queue: Option<Arc<dyn EventQueue>>,
    retry_base: Duration,
    attempts: Mutex<HashMap<u64, u32>>,
    parked: Mutex<HashSet<u64>>,
}

/// What became of a failed attempt.
pub(crate) enum Attempt {
    /// Try the event again after this long.
    RetryAfter(Duration),
    /// The event is parked: go on.
    Parked,
}

impl Parking {
    /// Without a dead-letter queue a poison event is retried for ever (the projection stalls
    /// there, as it must rather than drop the event).
    pub(crate) fn new(projection: &str, queue: Option<Arc<dyn EventQueue>>, retry_base: Duration) -> Self {
        Self {
            consumer: projection_consumer(projection),
            queue,
            retry_base,
            attempts: Mutex::default(),
            parked: Mutex::default(),
        }
    }

    /// Whether the event at store `position` was parked: the projection passes it by.
    pub(crate) fn is_parked(&self, position: u64) -> bool {
        self.parked.lock().expect("parking poisoned").contains(&position)
    }

    /// Records a failed attempt at `event`: retried with the queue path's backoff until its
    /// [`MAX_DELIVERIES`]th attempt, then parked.
    pub(crate) async fn failed(
        &self,
        event: &DomainEvent,
        error: &ProjectionError,
    ) -> Result<Attempt, StoreError> {
        let attempt = {
            let mut attempts = self.attempts.lock().expect("parking poisoned");
            let attempt = attempts.entry(event.position).or_default();
            *attempt += 1;
            *attempt
        };
        if attempt < MAX_DELIVERIES || self.queue.is_none() {
            return Ok(Attempt::RetryAfter(crate::retry_delay(self.retry_base, attempt)));
        }
        self.park(event, error, attempt).await?;
        Ok(Attempt::Parked)
    }

    /// Parks `event` at once (a rebuild: the same code on the same event fails the same way).
    pub(crate) async fn park_now(
        &self,
        event: &DomainEvent,
        error: &ProjectionError,
    ) -> Result<(), StoreError> {
        match self.queue {
            Some(_) => self.park(event, error, 1).await,
            None => Err(StoreError::Unavailable(
                format!("no dead-letter queue to park event {} in", event.event_id).into(),
            )),
        }
    }

    async fn park(
        &self,
        event: &DomainEvent,
        error: &ProjectionError,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let queue = self.queue.as_ref().expect("checked by the callers");
        let reason = FailureKind::Projection.reason(format!(
            "{} failed on event {} at position {} after {attempts} attempt(s): {error}",
            self.consumer, event.event_id, event.position
        ));
        queue.dead_letter(&self.consumer, event, &reason).await?;
        tracing::warn!(
            consumer = %self.consumer,
            event_id = %event.event_id,
            position = event.position,
            %error,
            "event parked in the dead-letter queue; the projection goes on"
        );
        metrics::counter!("nexus_projection_parked_total", "consumer" => self.consumer.clone()).increment(1);
        self.attempts.lock().expect("parking poisoned").remove(&event.position);
        self.parked.lock().expect("parking poisoned").insert(event.position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_failure() {
        let store = StepError::Store(StoreError::Unavailable("down".into()));
        assert_eq!(store.kind(), FailureKind::Transient);
        assert_eq!(StepError::Store(StoreError::Corrupt("x".into())).kind(), FailureKind::Permanent);
        let poison = StepError::Poison {
            event: Box::new(serde_json::from_value(serde_json::json!({
                "eventId": "e", "eventType": "T", "aggregateId": "a", "aggregateVersion": 1, "position": 1,
                "timestamp": "2026-12-07T00:00:00.000Z", "payload": {},
                "metadata": {"userId": "u", "correlationId": "c", "causationId": "c", "schemaVersion": "1"}
            }))
            .unwrap()),
            error: ProjectionError("boom".into()),
        };
        assert_eq!(poison.kind(), FailureKind::Projection);
        assert_eq!(parked_projection(&projection_consumer("orders")), Some("orders"));
        assert_eq!(parked_projection("webhook:1"), None);
    }
}
