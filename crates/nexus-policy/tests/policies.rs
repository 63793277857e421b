//! The repository's `policies/` judged through the public API: each rule catches its violation
//! with its message, compliant facts pass, and the Rego unit tests run like `opa test`.

use std::path::{Path, PathBuf};

use nexus_policy::{
    ApiEndpoint, PolicyEngine, PolicyError, PublishedEvent, ServiceCall, ServiceGraph, TableOperations,
    Violation,
};
use serde_json::{Value, json};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

fn engine() -> PolicyEngine {
    PolicyEngine::load_dir(policies_dir()).expect("the repository's policies load")
}

/// The messages raised against one fact.
fn messages(fact: Value) -> Vec<String> {
    engine().check_facts(&fact).unwrap().into_iter().map(|v| v.message).collect()
}

// --- each rule, caught with its message --------------------------------------------------------

#[test]
fn direct_http_between_command_and_query_is_denied() {
    let fact = json!({"type": "service_call", "source": "command_service", "target": "query_dashboard", "protocol": "http"});
    assert_eq!(
        messages(fact),
        ["Direct HTTP calls between Command Service and Query Dashboard are prohibited. Use Event Bus."]
    );
}

#[test]
fn event_store_mutations_are_denied() {
    let fact = json!({"type": "database_operation", "table": "EventStore", "operation": "DELETE"});
    assert_eq!(
        messages(fact),
        [
            "Event Store mutations are prohibited. Only INSERT operations allowed (found DELETE on EventStore)."
        ]
    );
    for operation in ["UPDATE", "TRUNCATE", "delete"] {
        let fact = json!({"type": "database_operation", "table": "events", "operation": operation});
        assert_eq!(messages(fact).len(), 1, "{operation} on events must be denied");
    }
}

#[test]
fn event_without_registered_schema_is_denied() {
    let fact = json!({"type": "event_publish", "eventType": "OrderShipped", "schemaRegistered": false});
    assert_eq!(messages(fact), ["Event type 'OrderShipped' has no registered schema in Schema Registry"]);
}

#[test]
fn temporal_query_without_its_limit_is_denied() {
    let fact = json!({"type": "api_endpoint", "method": "GET", "path": "/api/queries/temporal/{aggregateId}", "rateLimitPerMinute": 60});
    assert_eq!(
        messages(fact),
        ["Temporal query endpoints must have rate limit of 10 requests/minute/client \
             (GET /api/queries/temporal/{aggregateId} has 60 requests/minute)"]
    );
    let fact =
        json!({"type": "api_endpoint", "method": "GET", "path": "/api/events", "rateLimitPerMinute": null});
    assert_eq!(
        messages(fact),
        ["Temporal query endpoints must have rate limit of 10 requests/minute/client \
             (GET /api/events has no rate limit)"]
    );
}

// --- compliant facts, arrays, errors -------------------------------------------------------------

fn compliant_facts() -> Value {
    json!([
        {"type": "service_call", "source": "command", "target": "query", "protocol": "event_bus"},
        {"type": "service_call", "source": "router", "target": "command", "protocol": "http"},
        {"type": "database_operation", "table": "events", "operation": "INSERT"},
        {"type": "database_operation", "table": "events", "operation": "SELECT"},
        {"type": "database_operation", "table": "documents", "operation": "UPDATE"},
        {"type": "event_publish", "eventType": "OrderPlaced", "schemaRegistered": true},
        {"type": "api_endpoint", "method": "GET", "path": "/api/queries/temporal/{aggregateId}", "rateLimitPerMinute": 10},
        {"type": "api_endpoint", "method": "GET", "path": "/api/events", "rateLimitPerMinute": 10},
        {"type": "api_endpoint", "method": "GET", "path": "/api/queries/{resourceType}", "rateLimitPerMinute": 1000},
        {"type": "api_endpoint", "method": "POST", "path": "/api/commands/{commandType}", "rateLimitPerMinute": null},
        {"type": "role", "name": "command"}
    ])
}

#[test]
fn compliant_facts_pass() {
    assert_eq!(engine().check_facts(&compliant_facts()).unwrap(), []);
}

#[test]
fn violations_name_the_offending_fact() {
    let mut facts = compliant_facts();
    let list = facts.as_array_mut().unwrap();
    list.push(json!({"type": "database_operation", "table": "EventStore", "operation": "UPDATE"}));
    list.insert(1, json!({"type": "event_publish", "eventType": "Ghost"}));

    let violations = engine().check_facts(&facts).unwrap();
    assert_eq!(
        violations,
        [
            Violation {
                fact_index: 1,
                message: "Event type 'Ghost' has no registered schema in Schema Registry".into()
            },
            Violation {
                fact_index: 12,
                message: "Event Store mutations are prohibited. Only INSERT operations allowed \
                          (found UPDATE on EventStore)."
                    .into()
            },
        ]
    );
}

#[test]
fn a_fact_that_is_not_an_object_is_an_error() {
    let err = engine().check_facts(&json!([{"type": "role", "name": "x"}, "oops"])).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidFact { index: 1, .. }), "{err}");
}

#[test]
fn a_policy_dir_without_the_deny_rule_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other.rego"), "package other\n\nallow := true\n").unwrap();
    let engine = PolicyEngine::load_dir(dir.path()).unwrap();
    let err = engine.check_facts(&json!({"type": "role"})).unwrap_err();
    assert!(matches!(err, PolicyError::Evaluation { .. }), "{err}");
}

#[test]
fn loading_reports_empty_dirs_and_invalid_rego() {
    let dir = tempfile::tempdir().unwrap();
    let err = PolicyEngine::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, PolicyError::NoPolicies { .. }), "{err}");

    // Old (v0) syntax is refused: the policies are Rego v1.
    std::fs::write(dir.path().join("old.rego"), "package old\n\ndeny[msg] {\n  msg := \"x\"\n}\n").unwrap();
    let err = PolicyEngine::load_dir(dir.path()).unwrap_err();
    assert!(matches!(&err, PolicyError::Parse { path, .. } if path.ends_with("old.rego")), "{err}");

    let err = PolicyEngine::load_dir(dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, PolicyError::Io { .. }), "{err}");
}

// --- the Rego unit tests -------------------------------------------------------------------------

#[test]
fn the_repository_policy_tests_all_pass() {
    let outcomes = engine().run_tests();
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed).collect();
    assert!(failed.is_empty(), "failing policy tests: {failed:#?}");
    assert!(outcomes.len() >= 8, "expected at least 8 policy tests, found {}", outcomes.len());
    // Every test rule in the files was found (opa fmt puts rule heads at column 0).
    let declared = std::fs::read_to_string(policies_dir().join("architecture_test.rego"))
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("test_"))
        .count();
    assert_eq!(outcomes.len(), declared, "{outcomes:#?}");
    assert!(outcomes.iter().all(|o| o.name.starts_with("data.nexus.architecture.test_")), "{outcomes:#?}");
}

#[test]
fn a_failing_policy_test_is_reported_as_failing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(policies_dir().join("architecture.rego"), dir.path().join("architecture.rego")).unwrap();
    std::fs::write(
        dir.path().join("broken_test.rego"),
        r#"package nexus.architecture

import rego.v1

# Wrong on purpose: a DELETE on the event store is denied, so this must fail.
test_delete_is_allowed if {
	result := deny with input as {"type": "database_operation", "table": "EventStore", "operation": "DELETE"}
	count(result) == 0
}

test_insert_is_allowed if {
	result := deny with input as {"type": "database_operation", "table": "EventStore", "operation": "INSERT"}
	count(result) == 0
}

# Not a test: a helper whose name only mentions test_ in a comment.
helper := true
"#,
    )
    .unwrap();

    let outcomes = PolicyEngine::load_dir(dir.path()).unwrap().run_tests();
    let summary: Vec<(&str, bool)> = outcomes.iter().map(|o| (o.name.as_str(), o.passed)).collect();
    assert_eq!(
        summary,
        [
            ("data.nexus.architecture.test_delete_is_allowed", false),
            ("data.nexus.architecture.test_insert_is_allowed", true),
        ]
    );
}

#[test]
fn the_bundled_policies_are_the_repository_policies() {
    let files = std::fs::read_dir(policies_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "rego"))
        .count();
    let bundled = PolicyEngine::bundled().unwrap();
    assert_eq!(bundled.packages().len(), files, "BUNDLED_POLICIES must list every file in policies/");
    assert_eq!(bundled.run_tests(), engine().run_tests());
}

// --- the service graph -----------------------------------------------------------------------

/// A graph shaped like the reference server's: every role, the store's real operations.
fn reference_graph() -> ServiceGraph {
    let endpoint = |method: &str, path: &str, limit: Option<u32>| ApiEndpoint {
        method: method.into(),
        path: path.into(),
        rate_limit_per_minute: limit,
    };
    ServiceGraph {
        roles: vec!["router".into(), "command".into(), "query".into()],
        calls: vec![
            ServiceCall { source: "router".into(), target: "command".into(), protocol: "http".into() },
            ServiceCall { source: "router".into(), target: "query".into(), protocol: "http".into() },
            ServiceCall {
                source: "command".into(),
                target: "query".into(),
                protocol: ServiceCall::EVENT_BUS.into(),
            },
        ],
        store_operations: vec![
            TableOperations { table: "events".into(), operations: vec!["INSERT".into(), "SELECT".into()] },
            TableOperations {
                table: "documents".into(),
                operations: vec!["INSERT".into(), "UPDATE".into(), "SELECT".into()],
            },
        ],
        events: ["OrderPlaced", "OrderCancelled", "UserRegistered"]
            .into_iter()
            .map(|t| PublishedEvent { event_type: t.into(), schema_registered: true })
            .collect(),
        endpoints: vec![
            endpoint("POST", "/api/commands/{commandType}", None),
            endpoint("GET", "/api/events", Some(10)),
            endpoint("GET", "/api/events/{aggregateId}", Some(1000)),
            endpoint("GET", "/api/queries/{resourceType}", Some(1000)),
            endpoint("GET", "/api/queries/temporal/{aggregateId}", Some(10)),
        ],
    }
}

#[test]
fn a_compliant_graph_passes() {
    assert_eq!(engine().check_graph(&reference_graph()).unwrap(), []);
}

#[test]
fn a_temporal_endpoint_without_its_limit_is_caught_from_the_graph() {
    let mut graph = reference_graph();
    let temporal = graph.endpoints.iter_mut().find(|e| e.path.starts_with("/api/queries/temporal")).unwrap();
    temporal.rate_limit_per_minute = None;

    let facts = graph.facts();
    let violations = engine().check_facts(&Value::Array(facts.clone())).unwrap();
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(facts[violations[0].fact_index]["path"], "/api/queries/temporal/{aggregateId}");
    assert_eq!(
        violations[0].message,
        "Temporal query endpoints must have rate limit of 10 requests/minute/client \
         (GET /api/queries/temporal/{aggregateId} has no rate limit)"
    );
}

#[test]
fn every_rule_is_caught_from_a_graph() {
    let mut graph = reference_graph();
    graph.calls.push(ServiceCall {
        source: "query".into(),
        target: "command".into(),
        protocol: "http".into(),
    });
    graph.store_operations[0].operations.push("DELETE".into());
    graph.events.push(PublishedEvent { event_type: "Unregistered".into(), schema_registered: false });
    graph.endpoints.push(ApiEndpoint {
        method: "GET".into(),
        path: "/api/queries/temporal/{aggregateId}/history".into(),
        rate_limit_per_minute: Some(100),
    });

    let mut messages: Vec<String> =
        engine().check_graph(&graph).unwrap().into_iter().map(|v| v.message).collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            "Direct HTTP calls between Query Service and Command Service are prohibited. Use Event Bus.",
            "Event Store mutations are prohibited. Only INSERT operations allowed (found DELETE on events).",
            "Event type 'Unregistered' has no registered schema in Schema Registry",
            "Temporal query endpoints must have rate limit of 10 requests/minute/client \
             (GET /api/queries/temporal/{aggregateId}/history has 100 requests/minute)",
        ]
    );
}
