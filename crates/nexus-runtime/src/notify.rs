//! Projection-update notifications: what WebSocket subscribers and `minVersion` readers wait on.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// One document changed by one event, published after the read store committed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionUpdate {
    #[serde(skip)]
    pub resource: String,
    pub aggregate_id: String,
    pub version: u64,
    pub event_id: String,
    pub timestamp: String,
}

/// Fan-out of [`ProjectionUpdate`]s. A receiver that falls behind by more than the buffer is told
/// how many it missed (broadcast `Lagged`), never blocks the projection.
#[derive(Clone)]
pub struct Notifier {
    sender: broadcast::Sender<Arc<ProjectionUpdate>>,
}

impl Notifier {
    pub fn new(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity).0 }
    }

    pub fn publish(&self, update: ProjectionUpdate) {
        // No receiver is not an error: nobody is listening right now.
        let _ = self.sender.send(Arc::new(update));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ProjectionUpdate>> {
        self.sender.subscribe()
    }
}
