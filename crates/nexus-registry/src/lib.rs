//! The schema registry built into Nexus (seed §6, contract §7).
//!
//! - [`compat`]: the structural diff of two JSON Schemas behind every compatibility decision.
//! - [`Registry`]: Confluent Schema Registry semantics (subjects, versions, global ids,
//!   compatibility levels) over the [`nexus_core::SchemaStore`] port, and the
//!   [`nexus_core::EventValidator`] the command path and the raw append endpoint use, with
//!   compiled validators cached per (subject, version).
//!
//! Architecture invariant: no HTTP and no SQL here; the server maps [`RegistryError`] to the
//! Confluent error shape, the store adapters persist.

pub mod compat;
mod registry;

pub use registry::{Registry, RegistryError};
