//! The service graph: what the server is made of, in the terms the architecture rules judge.
//! The server fills it from its own registrations (never by hand); [`ServiceGraph::facts`]
//! flattens it into the facts `policies/architecture.rego` reads.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Everything the policies judge about one deployment of Nexus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceGraph {
    /// The roles that run, e.g. `command`, `query`, `router`.
    pub roles: Vec<String>,
    /// Which role talks to which, and how (the edges of the graph).
    pub calls: Vec<ServiceCall>,
    /// The operations the store issues, per table.
    pub store_operations: Vec<TableOperations>,
    /// Every event type the domain publishes.
    pub events: Vec<PublishedEvent>,
    /// Every HTTP endpoint served.
    pub endpoints: Vec<ApiEndpoint>,
}

/// One directed edge: `source` calls `target` over `protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceCall {
    /// Caller role. The rules treat `command`/`command_service` as the command side and
    /// `query`/`query_service`/`query_dashboard` as the query side.
    pub source: String,
    pub target: String,
    /// `event_bus` is the only protocol allowed between the command and query sides; anything
    /// else (`http`, `grpc`, `in_process`, …) is a direct call.
    pub protocol: String,
}

impl ServiceCall {
    /// The protocol of a call that goes through the event bus.
    pub const EVENT_BUS: &str = "event_bus";
}

/// The SQL operations issued on one table, e.g. `events`: `["INSERT", "SELECT"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableOperations {
    /// The event store's table is recognised as `EventStore`, `event_store` or `events`.
    pub table: String,
    /// Operation verbs, upper case by convention (`INSERT`, `SELECT`, `UPDATE`, `DELETE`, …).
    pub operations: Vec<String>,
}

/// An event type the domain publishes, and whether the schema registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishedEvent {
    pub event_type: String,
    pub schema_registered: bool,
}

/// An HTTP endpoint and its per-client rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiEndpoint {
    /// `GET`, `POST`, …
    pub method: String,
    /// The route as registered, e.g. `/api/queries/temporal/{aggregateId}`.
    pub path: String,
    /// Requests per minute per client; `None` means unlimited.
    pub rate_limit_per_minute: Option<u32>,
}

impl ServiceGraph {
    /// The graph as facts, in the shapes the rules read (one JSON object each), in this order:
    /// - `{"type": "role", "name"}` per role (informational; no rule reads it),
    /// - `{"type": "service_call", "source", "target", "protocol"}` per call,
    /// - `{"type": "database_operation", "table", "operation"}` per table and operation,
    /// - `{"type": "event_publish", "eventType", "schemaRegistered"}` per event type,
    /// - `{"type": "api_endpoint", "method", "path", "rateLimitPerMinute"}` per endpoint
    ///   (`rateLimitPerMinute` is `null` when unlimited).
    pub fn facts(&self) -> Vec<Value> {
        let roles = self.roles.iter().map(|name| json!({"type": "role", "name": name}));
        let calls = self.calls.iter().map(|call| {
            json!({
                "type": "service_call",
                "source": call.source,
                "target": call.target,
                "protocol": call.protocol,
            })
        });
        let operations = self.store_operations.iter().flat_map(|table| {
            table.operations.iter().map(|operation| {
                json!({"type": "database_operation", "table": table.table, "operation": operation})
            })
        });
        let events = self.events.iter().map(|event| {
            json!({
                "type": "event_publish",
                "eventType": event.event_type,
                "schemaRegistered": event.schema_registered,
            })
        });
        let endpoints = self.endpoints.iter().map(|endpoint| {
            json!({
                "type": "api_endpoint",
                "method": endpoint.method,
                "path": endpoint.path,
                "rateLimitPerMinute": endpoint.rate_limit_per_minute,
            })
        });
        roles.chain(calls).chain(operations).chain(events).chain(endpoints).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_flatten_every_part_of_the_graph_in_order() {
        let graph = ServiceGraph {
            roles: vec!["command".into()],
            calls: vec![ServiceCall {
                source: "command".into(),
                target: "query".into(),
                protocol: ServiceCall::EVENT_BUS.into(),
            }],
            store_operations: vec![TableOperations {
                table: "events".into(),
                operations: vec!["INSERT".into(), "SELECT".into()],
            }],
            events: vec![PublishedEvent { event_type: "TicketOpened".into(), schema_registered: true }],
            endpoints: vec![ApiEndpoint {
                method: "GET".into(),
                path: "/api/events".into(),
                rate_limit_per_minute: None,
            }],
        };
        assert_eq!(
            graph.facts(),
            vec![
                json!({"type": "role", "name": "command"}),
                json!({"type": "service_call", "source": "command", "target": "query", "protocol": "event_bus"}),
                json!({"type": "database_operation", "table": "events", "operation": "INSERT"}),
                json!({"type": "database_operation", "table": "events", "operation": "SELECT"}),
                json!({"type": "event_publish", "eventType": "TicketOpened", "schemaRegistered": true}),
                json!({"type": "api_endpoint", "method": "GET", "path": "/api/events", "rateLimitPerMinute": null}),
            ]
        );
    }

    #[test]
    fn graph_round_trips_through_json_in_camel_case() {
        let graph = ServiceGraph {
            endpoints: vec![ApiEndpoint {
                method: "GET".into(),
                path: "/api/queries/temporal/{aggregateId}".into(),
                rate_limit_per_minute: Some(10),
            }],
            ..ServiceGraph::default()
        };
        let json = serde_json::to_value(&graph).unwrap();
        assert_eq!(json["endpoints"][0]["rateLimitPerMinute"], 10);
        assert_eq!(json["storeOperations"], json!([]));
        assert_eq!(serde_json::from_value::<ServiceGraph>(json).unwrap(), graph);
    }
}
