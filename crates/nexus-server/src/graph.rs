//! The service graph the architecture policies judge, built from the registrations the server
//! really runs with: the route table, the configured rate limits, the domain's event types and
//! the storage adapter's declared operations. Never written by hand.

use std::collections::BTreeSet;

use nexus_core::Domain;
use nexus_policy::{ApiEndpoint, PolicyEngine, PublishedEvent, ServiceCall, ServiceGraph, TableOperations};

use crate::config::Config;
use crate::rate_limit::RateLimits;
use crate::routes;

/// The graph of a server started with `config` serving `domain`.
pub fn service_graph(config: &Config, domain: &Domain) -> ServiceGraph {
    let limits = RateLimits::new(&config.rate_limits);
    let call = |source: &str, target: &str, protocol: &str| ServiceCall {
        source: source.into(),
        target: target.into(),
        protocol: protocol.into(),
    };
    // The server adds the saga events to every domain it serves (see `run`).
    let domain = nexus_runtime::with_sagas(domain.clone());
    let mut events: Vec<PublishedEvent> = domain
        .events()
        .map(|spec| PublishedEvent {
            event_type: spec.name.to_owned(),
            // Until the schema registry (its own issue) holds them, "registered" means the
            // domain ships a schema for the type that parses as a JSON Schema object.
            schema_registered: serde_json::from_str::<serde_json::Value>(spec.schema)
                .is_ok_and(|s| s.is_object()),
        })
        .collect();
    events.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    let mut endpoints: Vec<ApiEndpoint> = routes::endpoints()
        .into_iter()
        .map(|e| ApiEndpoint {
            method: e.method.into(),
            path: e.path.into(),
            rate_limit_per_minute: e.rate.and_then(|class| limits.per_minute(class)),
        })
        .collect();
    endpoints.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    let roles: BTreeSet<&str> = ["command", "query", "router"].into();
    ServiceGraph {
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        calls: vec![
            // Commands reach read models only as events through the change feed.
            call("command", "query", ServiceCall::EVENT_BUS),
            call("command", "event_store", "sqlite"),
            call("router", "event_store", "sqlite"),
            // The router's checkpoint and the webhook registrations live in the read store; the
            // queue path (embedded: `queue.db`) carries non-core events to webhooks.
            call("router", "read_store", "sqlite"),
            call("router", "queue", if config.queue.url.is_some() { "amqp" } else { "sqlite" }),
            // The core path: NATS when configured (the router publishes, projections read).
            call("router", "stream", if config.stream.url.is_some() { "nats" } else { "change_feed" }),
            call("query", "read_store", "sqlite"),
            // The saga coordinator and process managers keep their change-feed checkpoints there.
            call("command", "read_store", "sqlite"),
        ],
        store_operations: nexus_sqlite::STORE_OPERATIONS
            .iter()
            .map(|(table, operations)| TableOperations {
                table: (*table).to_owned(),
                operations: operations.iter().map(|o| (*o).to_owned()).collect(),
            })
            .collect(),
        events,
        endpoints,
    }
}

/// Every violation message of the architecture policies, when there is any.
#[derive(Debug, thiserror::Error)]
#[error("the service violates the architecture policies:\n  - {}", .0.join("\n  - "))]
pub struct PolicyViolations(pub Vec<String>);

/// Judges `graph` with the policies built into the binary.
pub fn check_policies(graph: &ServiceGraph) -> Result<(), PolicyViolations> {
    let engine =
        PolicyEngine::bundled().map_err(|e| PolicyViolations(vec![format!("policies do not load: {e}")]))?;
    let violations = engine
        .check_graph(graph)
        .map_err(|e| PolicyViolations(vec![format!("policy evaluation failed: {e}")]))?;
    if violations.is_empty() {
        Ok(())
    } else {
        Err(PolicyViolations(violations.into_iter().map(|v| v.message).collect()))
    }
}
