//! Nexus runtime: what happens between the HTTP edge and the ports.
//!
//! - [`CommandBus`]: validate → load → decide → append with the expected version, serialized per
//!   aggregate in this process, re-decided on a conflict with another process, idempotent by
//!   `commandId`.
//! - [`ProjectionRunner`]: tails the change feed from its checkpoint and commits documents and
//!   checkpoint together, then tells the [`Notifier`].
//! - [`SagaCoordinator`]: durable sagas (state only as events in the saga's stream), per-step
//!   timeouts and retries, compensation in reverse, recovery from the change feed; and the
//!   [`ProcessManagerRunner`] that starts sagas from the domain's events.
//! - [`EventRouter`]: change feed → core path or queue path (or the dead-letter queue when the
//!   schema registry refuses an event); [`process_dead_letters`] is the seed's DLQ processor.
//!
//! Architecture invariant: no SQL, no HTTP, no knowledge of which backend is behind a port. Every
//! storage call goes through `nexus_core::ports`.

mod commands;
mod failure;
mod leases;
mod notify;
mod projections;
mod router;
pub mod sagas;
mod schema;
mod stream;
mod stream_projections;
mod upcasting;

pub use commands::{CommandBus, CommandError, CommandRequest, SnapshotPolicy};
pub use failure::{MAX_BACKOFF, StepError, parked_projection, projection_consumer};
pub use leases::InProcessLeases;
pub use notify::{Notifier, ProjectionUpdate};
pub use projections::{ProjectionRunner, ProjectionStatus, Reapplied, RebuildProgress, reapply_parked};
pub use router::{
    DlqAction, DlqPass, EventRouter, Path as RoutePath, ROUTER_CHECKPOINT, ROUTER_CONSUMER, RouterStatus,
    process_dead_letters, retry_delay,
};
pub use sagas::{
    ProcessManagerRunner, SagaCoordinator, SagaError, SagaSettings, SagaView, Started, with_sagas,
};
pub use schema::PayloadValidator;
pub use stream::MemoryEventStream;
pub use stream_projections::StreamProjectionRunner;
pub use upcasting::Upcasting;
