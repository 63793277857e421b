//! The binary's integration tests, one binary: each module runs the real `nexus` (built by cargo for
//! the tests) as a user would, through `common`.

mod common;

mod alert_rules;
mod auth_cli;
mod crash;
mod customers;
mod dlq_cli;
mod policy;
mod registry_interop;
mod roles;
mod router_crash;
mod saga_crash;
mod shared_engines;
mod tls;
