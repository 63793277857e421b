//! The runtime's integration tests, one binary, against the embedded stores (and the real backends
//! where a test says so); `common` holds the test projection and event helpers.

mod common;

mod commit_interval;

mod poison;
mod rebuild;
mod router;
mod saga_leases;
mod sagas;
mod snapshots;
mod stream;
mod stream_projection;
mod validation;
