//! Nexus as a library: a service built on Nexus registers its aggregates, projections, process
//! managers and schemas in a [`Domain`](nexus_core::Domain) and calls [`cli::main`] to get the
//! whole command line and API for it. The stock `nexus` binary is that call with the reference
//! domain.

mod bench;
pub mod cli;
mod raw_ceiling;
