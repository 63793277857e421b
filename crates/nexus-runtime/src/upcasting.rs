//! Upcasting as a decorator of the `EventStore` port: every read (events API, projections,
//! rehydration, temporal queries) sees events at their current schema version, whatever version
//! they were stored at. Written once here, not once per backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_core::ports::{AppendOutcome, AppendRequest, CommandRecord};
use nexus_core::{Domain, DomainEvent, EventStore, StoreError};

/// An [`EventStore`] whose reads are upcast by the domain's [`nexus_core::Upcaster`] chains.
/// Appends pass through untouched: events are stored as they were written.
pub struct Upcasting {
    inner: Arc<dyn EventStore>,
    domain: Arc<Domain>,
}

impl Upcasting {
    pub fn new(inner: Arc<dyn EventStore>, domain: Arc<Domain>) -> Self {
        Self { inner, domain }
    }

    /// Brings one event up to the newest version its chain reaches.
    pub fn upcast(domain: &Domain, mut event: DomainEvent) -> DomainEvent {
        let version =
            event.metadata.schema_version.strip_suffix(".0").unwrap_or(&event.metadata.schema_version);
        let Ok(mut version) = version.parse::<u32>() else { return event };
        let mut changed = false;
        while let Some(upcaster) = domain.upcaster_from(&event.event_type, version) {
            event.payload =
                Arc::new((upcaster.upcast)(Arc::unwrap_or_clone(std::mem::take(&mut event.payload))));
            version += 1;
            changed = true;
        }
        if changed {
            event.metadata.schema_version = version.to_string();
        }
        event
    }

    fn all(&self, events: Vec<DomainEvent>) -> Vec<DomainEvent> {
        events.into_iter().map(|e| Self::upcast(&self.domain, e)).collect()
    }
}

#[async_trait]
impl EventStore for Upcasting {
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        id: &str,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        Ok(self.all(self.inner.read_stream(id, from, to).await?))
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        Ok(self.all(self.inner.read_all(after, limit).await?))
    }

    async fn read_by_type(
        &self,
        t: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<DomainEvent>, StoreError> {
        Ok(self.all(self.inner.read_by_type(t, start, end, limit).await?))
    }

    async fn find_command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        self.inner.find_command(command_id).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn wait_past(&self, after: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_past(after, timeout).await
    }
}
