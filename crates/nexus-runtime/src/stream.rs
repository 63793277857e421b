//! The embedded core path: in-process ordered partitions behind the `EventStream` port.
//!
//! Process-local by design: it holds what was published since the process started, and reader
//! positions in memory. The embedded server does not need it for durability, because there the
//! projections tail the store's change feed (which *is* the ordered, durable core path of one
//! process); it is the reference the NATS backend is checked against, and a core path for tests.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nexus_core::ports::{EventStream, StreamEvent, partition_of};
use nexus_core::{DomainEvent, StoreError};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    logs: Vec<Vec<StreamEvent>>,
    published: HashSet<String>,
    next_sequence: u64,
    /// Per reader and partition: acknowledged up to.
    positions: HashMap<(String, u32), u64>,
}

pub struct MemoryEventStream {
    partitions: u32,
    // A std mutex: held for vector pushes and slices only, never across an await.
    state: Mutex<State>,
    appended: Notify,
}

impl MemoryEventStream {
    pub fn new(partitions: u32) -> Self {
        let partitions = partitions.max(1);
        let state = State { logs: (0..partitions).map(|_| Vec::new()).collect(), ..State::default() };
        Self { partitions, state: Mutex::new(state), appended: Notify::new() }
    }

    /// Everything `reader` has not acknowledged on `partition`, up to `max`: as on NATS, a batch
    /// that was fetched and not acknowledged (its step failed) comes again, before anything newer.
    fn take(&self, reader: &str, partition: u32, max: usize) -> Vec<StreamEvent> {
        let state = self.state.lock().expect("stream state poisoned");
        let acked = state.positions.get(&(reader.to_owned(), partition)).copied().unwrap_or(0);
        let log = &state.logs[partition as usize];
        let start = log.partition_point(|e| e.sequence <= acked);
        log[start..].iter().take(max).cloned().collect()
    }
}

#[async_trait]
impl EventStream for MemoryEventStream {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        {
            let mut state = self.state.lock().expect("stream state poisoned");
            for event in events {
                if !state.published.insert(event.event_id.clone()) {
                    continue;
                }
                state.next_sequence += 1;
                let sequence = state.next_sequence;
                let partition = partition_of(&event.aggregate_id, self.partitions);
                state.logs[partition as usize].push(StreamEvent {
                    partition,
                    sequence,
                    event: event.clone(),
                });
            }
        }
        self.appended.notify_waiters();
        Ok(())
    }

    async fn fetch(
        &self,
        reader: &str,
        partition: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        if partition >= self.partitions {
            return Err(StoreError::InvalidRequest(format!("no partition {partition}")));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let appended = self.appended.notified();
            let batch = self.take(reader, partition, max);
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(batch);
            }
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn ack(&self, reader: &str, partition: u32, sequence: u64) -> Result<(), StoreError> {
        let mut state = self.state.lock().expect("stream state poisoned");
        let acked = state.positions.entry((reader.to_owned(), partition)).or_default();
        *acked = (*acked).max(sequence);
        Ok(())
    }

    async fn backlog(&self, reader: &str, partition: u32) -> Result<u64, StoreError> {
        if partition >= self.partitions {
            return Err(StoreError::InvalidRequest(format!("no partition {partition}")));
        }
        let state = self.state.lock().expect("stream state poisoned");
        let acked = state.positions.get(&(reader.to_owned(), partition)).copied().unwrap_or(0);
        let log = &state.logs[partition as usize];
        Ok((log.len() - log.partition_point(|e| e.sequence <= acked)) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(()) // in this process: always there
    }
}
