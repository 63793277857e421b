//! The projection runner: change feed → read model, exactly once in effect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_core::{EventStore, Projection, ReadDocument, ReadStore};
use tokio::sync::watch;

use crate::notify::{Notifier, ProjectionUpdate};

/// What the admin API and readiness checks see of a running projection.
#[derive(Default)]
pub struct ProjectionStatus {
    checkpoint: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ProjectionStatus {
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("status poisoned").clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().expect("status poisoned") = error;
    }
}

/// Runs one projection: reads the change feed after its checkpoint in batches, applies the events
/// it handles to the documents they touch, and commits documents and the new checkpoint in one
/// read-store transaction. A crash between two commits replays the uncommitted batch, and the
/// version guard makes that replay a no-op for documents already written.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    events: Arc<dyn EventStore>,
    read: Arc<dyn ReadStore>,
    notifier: Notifier,
    batch_size: usize,
    status: Arc<ProjectionStatus>,
}

impl ProjectionRunner {
    pub fn new(
        projection: Arc<dyn Projection>,
        events: Arc<dyn EventStore>,
        read: Arc<dyn ReadStore>,
        notifier: Notifier,
        batch_size: usize,
    ) -> Self {
        Self { projection, events, read, notifier, batch_size, status: Arc::default() }
    }

    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown` turns true. Every committed batch is a saved checkpoint, so stopping
    /// between batches loses nothing.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.projection.name();
        let mut backoff = Duration::from_millis(100);
        let mut checkpoint = None;
        while !*shutdown.borrow() {
            let step = match checkpoint {
                None => self.read.checkpoint(name).await.map(Some).map_err(|e| e.to_string()),
                Some(position) => self.step(position).await,
            };
            match step {
                Ok(Some(position)) => {
                    checkpoint = Some(position);
                    self.status.checkpoint.store(position, Ordering::Release);
                    self.status.set_error(None);
                    backoff = Duration::from_millis(100);
                }
                Ok(None) => {
                    let position = checkpoint.unwrap_or(0);
                    tokio::select! {
                        _ = self.events.wait_past(position, Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(error) => {
                    tracing::error!(projection = name, %error, "projection stalled; retrying");
                    self.status.set_error(Some(error));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        tracing::debug!(projection = name, "projection stopped");
    }

    /// Applies the next batch after `checkpoint`; `None` when there is nothing new.
    async fn step(&self, checkpoint: u64) -> Result<Option<u64>, String> {
        let name = self.projection.name();
        let batch = self.events.read_all(checkpoint, self.batch_size).await.map_err(|e| e.to_string())?;
        let Some(last) = batch.last() else { return Ok(None) };
        let last_position = last.position;
        let relevant: Vec<_> = batch.iter().filter(|e| self.projection.handles(&e.event_type)).collect();

        let mut docs: HashMap<String, ReadDocument> = HashMap::new();
        let mut updates = Vec::new();
        if !relevant.is_empty() {
            let mut ids: Vec<String> = relevant.iter().map(|e| e.aggregate_id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            for doc in self.read.load(name, &ids).await.map_err(|e| e.to_string())? {
                docs.insert(doc.id.clone(), doc);
            }
            for event in relevant {
                let doc = docs
                    .entry(event.aggregate_id.clone())
                    .or_insert_with(|| ReadDocument::empty(&event.aggregate_id, &event.aggregate_id));
                if event.aggregate_version <= doc.version {
                    continue; // already applied: the version guard makes replays harmless
                }
                self.projection
                    .apply(doc, event)
                    .map_err(|e| format!("event {} at position {}: {e}", event.event_id, event.position))?;
                doc.version = event.aggregate_version;
                doc.last_updated = event.timestamp.clone();
                updates.push(ProjectionUpdate {
                    resource: name.to_owned(),
                    aggregate_id: event.aggregate_id.clone(),
                    version: event.aggregate_version,
                    event_id: event.event_id.clone(),
                    timestamp: event.timestamp.clone(),
                });
            }
        }
        let changed: HashSet<&str> = updates.iter().map(|u| u.aggregate_id.as_str()).collect();
        let touched: Vec<ReadDocument> =
            docs.into_values().filter(|d| changed.contains(d.id.as_str())).collect();
        self.read.commit(name, name, touched, last_position).await.map_err(|e| e.to_string())?;

        if let Ok(at) = DateTime::parse_from_rfc3339(&last.timestamp) {
            let lag = (Utc::now() - at.to_utc()).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
            metrics::histogram!("nexus_projection_lag_seconds", "projection" => name).record(lag);
        }
        metrics::counter!("nexus_projection_events_total", "projection" => name)
            .increment(updates.len() as u64);
        for update in updates {
            self.notifier.publish(update);
        }
        Ok(Some(last_position))
    }
}
