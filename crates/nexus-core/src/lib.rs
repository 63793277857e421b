//! Nexus core: the domain model and the ports, nothing else.
//!
//! This crate owns the vocabulary every other crate speaks: [`Command`], [`DomainEvent`],
//! [`CommandResult`], the pure [`Aggregate`] and [`Projection`] traits, the [`Domain`] registry a
//! service is assembled from, sagas as data ([`SagaDefinition`]) and as code ([`ProcessManager`]),
//! and the port traits ([`EventStore`], [`ReadStore`]) that adapters
//! implement.
//!
//! Architecture invariant: the core does no I/O. No tokio, no SQL, no HTTP, no clock reads except
//! through values handed in by the caller. Adapters depend on the core, never the reverse, so a new
//! backend (PostgreSQL, NATS, RabbitMQ) slots in without a change here.

mod aggregate;
mod domain;
mod model;
pub mod ports;
mod projection;
pub mod recent;
mod saga;
#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{
    Aggregate, AggregateHandler, AggregateState, CommandSpec, DecideError, DomainError, EventDraft, EventSpec,
};
pub use domain::{Domain, Upcaster};
pub use model::{
    Command, CommandMetadata, CommandResult, DomainEvent, EventMetadata, FieldError, format_timestamp,
    is_valid_aggregate_id, read_tagged,
};
pub use ports::{
    AppendOutcome, AppendRequest, CommandRecord, DeadLetter, Delivery, EventQueue, EventRejection,
    EventStore, EventStream, EventValidator, FailureKind, Filter, Lease, Leases, ListQuery, NewEvent, Page,
    ReadStore, RegisteredSchema, SchemaStore, SearchQuery, SearchResults, Snapshot, SnapshotStore, SortOrder,
    StoreError, StreamEvent, partition_of,
};
pub use projection::{Keying, Projection, ProjectionError, ReadDocument};
pub use saga::{
    ProcessError, ProcessManager, SagaDefinition, SagaMetadata, SagaOutcome, SagaStatus, SagaStep,
    StepCommand, derived_id,
};
