//! `GET /api/openapi.json` (contract §10): the description covers exactly what the server serves,
//! and a command's documented body is the schema its payload is validated with.

use std::collections::BTreeSet;

use crate::support::TestServer;
use nexus_server::config::Role;
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every route of the table, as `x-nexus-route` names it.
const ROUTES: [&str; 36] = [
    "POST /api/commands/{command_type}",
    "GET /api/events",
    "GET /api/events/{aggregate_id}",
    "POST /api/events/{aggregate_id}",
    "GET /api/queries/temporal/{aggregate_id}",
    "GET /api/queries/{resource}",
    "GET /api/queries/{resource}/search",
    "GET /api/queries/{resource}/{id}",
    "GET /api/subscriptions",
    "GET /api/admin/projections",
    "POST /api/admin/projections/{name}/rebuild",
    "POST /api/sagas",
    "GET /api/sagas/{saga_id}/status",
    "GET /api/admin/sagas",
    "GET /api/schema-registry/subjects",
    "GET /api/schema-registry/subjects/{subject}/versions",
    "POST /api/schema-registry/subjects/{subject}/versions",
    "GET /api/schema-registry/subjects/{subject}/versions/{version}",
    "GET /api/schema-registry/subjects/{subject}/versions/{version}/schema",
    "POST /api/schema-registry/subjects/{subject}",
    "GET /api/schema-registry/schemas/ids/{id}",
    "POST /api/schema-registry/compatibility/subjects/{subject}/versions/{version}",
    "GET /api/schema-registry/config",
    "PUT /api/schema-registry/config",
    "GET /api/schema-registry/config/{subject}",
    "PUT /api/schema-registry/config/{subject}",
    "POST /api/admin/webhooks",
    "GET /api/admin/webhooks",
    "DELETE /api/admin/webhooks/{id}",
    "GET /api/admin/dlq",
    "POST /api/admin/dlq/{id}/retry",
    "POST /api/admin/dlq/{id}/skip",
    "GET /health/live",
    "GET /health/ready",
    "GET /metrics",
    "GET /api/openapi.json",
];

const COMMANDS: [&str; 11] = [
    "AddStock",
    "CancelOrder",
    "ChargePayment",
    "ConfirmOrder",
    "OpenAccount",
    "PlaceOrder",
    "RefundPayment",
    "RegisterUser",
    "ReleaseStock",
    "ReserveStock",
    "ShipOrder",
];

async fn document(server: &TestServer) -> Value {
    let reply = server.get("/api/openapi.json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.header("content-type").is_some_and(|t| t.starts_with("application/json")));
    reply.body
}

/// Every operation: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, &'static str, &Value)> {
    let paths = doc["paths"].as_object().expect("paths object");
    let mut found = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((path.clone(), method, operation));
            }
        }
    }
    found
}

/// The component a `$ref` (`#/components/...`) points at.
fn resolve<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
    let pointer = reference.as_str().and_then(|r| r.strip_prefix('#')).expect("a local $ref");
    // Component names hold dots, never slashes, so the pointer needs no unescaping here.
    doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {reference} points at nothing"))
}

/// A JSON Schema that validates like the component `name`, with every `$ref` of the document
/// resolvable (the components ride along as an unknown keyword of the root).
fn component_schema(doc: &Value, name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]})
}

fn request_body_schema<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let schema = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} has no JSON request body");
    schema
}

/// The shape every OpenAPI 3.1 document and operation must have, as far as this server goes.
fn structure_schema() -> Value {
    json!({
        "type": "object",
        "required": ["openapi", "info", "paths", "components"],
        "properties": {
            "openapi": {"type": "string", "pattern": "^3\\.1\\.\\d+$"},
            "info": {
                "type": "object",
                "required": ["title", "version"],
                "properties": {"title": {"const": "Nexus"}, "version": {"type": "string", "minLength": 1}}
            },
            "paths": {
                "type": "object",
                "propertyNames": {"pattern": "^/"},
                "additionalProperties": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"$ref": "#/$defs/operation"}
                }
            },
            "components": {
                "type": "object",
                "required": ["schemas", "responses", "securitySchemes"],
                "properties": {
                    "schemas": {"type": "object", "propertyNames": {"pattern": "^[a-zA-Z0-9._-]+$"}},
                    "responses": {"type": "object", "propertyNames": {"pattern": "^[a-zA-Z0-9._-]+$"}}
                }
            }
        },
        "$defs": {
            "operation": {
                "type": "object",
                "required": ["operationId", "summary", "tags", "responses", "x-nexus-route", "x-nexus-scope"],
                "properties": {
                    "operationId": {"type": "string", "minLength": 1},
                    "summary": {"type": "string", "minLength": 1},
                    "tags": {"type": "array", "minItems": 1, "items": {"enum": [
                        "commands", "events", "queries", "sagas", "schema-registry", "admin", "operations"
                    ]}},
                    "parameters": {"type": "array", "items": {
                        "type": "object",
                        "required": ["name", "in", "schema"],
                        "properties": {"in": {"enum": ["path", "query", "header"]}}
                    }},
                    "responses": {
                        "type": "object",
                        "minProperties": 1,
                        "propertyNames": {"pattern": "^[1-5][0-9][0-9]$"},
                        "additionalProperties": {"type": "object", "anyOf": [
                            {"required": ["$ref"]}, {"required": ["description"]}
                        ]}
                    },
                    "security": {"type": "array", "items": {"type": "object"}},
                    "x-nexus-scope": {"enum": ["public", "commands", "queries", "admin"]}
                }
            }
        }
    })
}

/// Every `$ref` string anywhere in `value`.
fn refs(value: &Value, found: &mut Vec<Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    found.push(child.clone());
                } else {
                    refs(child, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_well_formed_openapi_3_1() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let structure = jsonschema::validator_for(&structure_schema()).expect("the structure schema compiles");
    let errors: Vec<String> =
        structure.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "the document is malformed: {errors:#?}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut ids = BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        let id = operation["operationId"].as_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        // Each `{name}` of the path is a required path parameter, and nothing else is.
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .map(|params| {
                params
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .inspect(|p| assert_eq!(p["required"], true, "{method} {path}: {p}"))
                    .map(|p| p["name"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(in_path, declared, "path parameters of {method} {path}");
        // Scope and security agree.
        let scope = operation["x-nexus-scope"].as_str().unwrap();
        if scope == "public" {
            assert!(operation.get("security").is_none(), "{method} {path} is public: {operation}");
        } else {
            assert_eq!(
                operation["security"],
                json!([{"bearerAuth": [scope]}, {"apiKey": [scope]}]),
                "{method} {path}"
            );
            assert_eq!(
                resolve(&doc, &operation["responses"]["401"]["$ref"])["content"]["application/json"]["schema"]
                    ["$ref"],
                "#/components/schemas/Error"
            );
            assert!(operation["responses"]["403"].is_object(), "{method} {path}");
        }
    }

    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 50, "{} $refs", found.len());
    for reference in &found {
        resolve(&doc, reference);
    }
    // Every component schema is a JSON Schema (2020-12, the dialect of OpenAPI 3.1).
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        jsonschema::validator_for(&component_schema(&doc, name))
            .unwrap_or_else(|e| panic!("component {name} is not a valid JSON Schema: {e}"));
    }

    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["code", "message"]));
    assert_eq!(
        resolve(&doc, &error["properties"]["fields"]["items"]["$ref"])["required"],
        json!(["field", "error"])
    );
    let security = &doc["components"]["securitySchemes"];
    assert_eq!(security["bearerAuth"]["scheme"], "bearer");
    assert_eq!(security["apiKey"]["in"], "header");
    assert_eq!(security["apiKey"]["name"], "X-API-Key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_table_is_described() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let operations = operations(&doc);
    let routes: BTreeSet<&str> =
        operations.iter().map(|(_, _, operation)| operation["x-nexus-route"].as_str().unwrap()).collect();
    assert_eq!(routes, BTreeSet::from(ROUTES), "the described routes differ from the table");
    // Each route appears under its own path, except commands: one operation per command type.
    for route in ROUTES {
        let (method, path) = route.split_once(' ').unwrap();
        if path == "/api/commands/{command_type}" {
            continue;
        }
        assert!(doc["paths"][path][method.to_ascii_lowercase()].is_object(), "{route} is not described");
    }
    let commands: BTreeSet<String> = operations
        .iter()
        .filter_map(|(path, _, _)| path.strip_prefix("/api/commands/").map(str::to_owned))
        .collect();
    assert_eq!(commands, COMMANDS.iter().map(|c| c.to_string()).collect(), "command operations");

    // The contract's parameters, rate limits and answers of a few endpoints.
    let params = |path: &str| -> BTreeSet<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(params("/api/queries/{resource}/{id}"), names(&["minVersion", "minPosition", "timeoutMs"]));
    assert_eq!(
        params("/api/queries/{resource}"),
        names(&["sort", "limit", "nextToken", "minPosition", "timeoutMs", "filters"])
    );
    assert_eq!(
        params("/api/queries/{resource}/search"),
        names(&["q", "facets", "limit", "nextToken", "minPosition", "timeoutMs", "filters"])
    );
    assert_eq!(params("/api/queries/temporal/{aggregate_id}"), names(&["asOf", "minPosition", "timeoutMs"]));
    assert_eq!(params("/api/events"), names(&["eventType", "startTime", "endTime", "limit"]));
    assert_eq!(params("/api/events/{aggregate_id}"), names(&["fromVersion", "toVersion"]));
    let list = &doc["paths"]["/api/queries/{resource}"]["get"];
    assert_eq!(list["x-nexus-rate-limit"], json!({"class": "list", "perMinute": 1000}));
    assert!(list["responses"]["429"].is_object(), "{list}");
    assert_eq!(list["tags"], json!(["queries"]));
    let resource = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "resource").unwrap();
    // The reference domain's projections, and the saga read model every server adds.
    assert_eq!(resource["schema"]["enum"], json!(["customers", "orders", "sagas", "users"]));
    assert_eq!(doc["paths"]["/api/queries/{resource}/search"]["get"]["x-nexus-rate-limit"]["perMinute"], 100);
    assert_eq!(
        doc["paths"]["/api/queries/temporal/{aggregate_id}"]["get"]["x-nexus-rate-limit"]["perMinute"],
        10
    );
    assert!(doc["paths"]["/api/queries/{resource}/{id}"]["get"]["responses"]["504"].is_object());
    assert!(doc["paths"]["/api/queries/{resource}/{id}"]["get"].get("x-nexus-rate-limit").is_none());
    let live = &doc["paths"]["/health/live"]["get"];
    assert_eq!(live["x-nexus-scope"], "public");
    assert_eq!(live["tags"], json!(["operations"]));
    assert_eq!(doc["paths"]["/api/admin/dlq"]["get"]["x-nexus-scope"], "admin");
    assert_eq!(doc["paths"]["/api/schema-registry/subjects"]["get"]["tags"], json!(["schema-registry"]));
    let place = &doc["paths"]["/api/commands/PlaceOrder"]["post"];
    assert_eq!(place["x-nexus-scope"], "commands");
    assert_eq!(place["tags"], json!(["commands"]));
    let statuses: BTreeSet<&str> =
        place["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(statuses, BTreeSet::from(["202", "400", "401", "403", "409", "413", "415", "503"]));
}

/// The other direction: each described operation is served (with sample path values it may
/// answer 400 or 404 from its handler, but never the router's "no such endpoint" nor 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_served() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let is_fallback =
        |reply: &crate::support::Reply| reply.status == 404 && reply.body["message"] == "no such endpoint";
    let unknown = server.get("/api/no-such-thing").await;
    assert!(is_fallback(&unknown), "the fallback changed: {} {}", unknown.status, unknown.body);

    for (path, method, _) in operations(&doc) {
        // Values no resource has: a request reaches its handler and changes nothing.
        let url = path
            .split('/')
            .map(|segment| if segment.starts_with('{') { "sample-0" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        let request = match method {
            "get" => server.http.get(server.url(&url)),
            "post" => server.http.post(server.url(&url)).json(&json!({})),
            "put" => server.http.put(server.url(&url)).json(&json!({})),
            "delete" => server.http.delete(server.url(&url)),
            other => panic!("unexpected method {other}"),
        };
        let reply = crate::support::Reply::read(request.send().await.expect("request")).await;
        assert!(!is_fallback(&reply), "{method} {url} ({path}) is described but not served: {}", reply.body);
        assert_ne!(reply.status, 405, "{method} {url} ({path}) is described but its method is not served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_bodies_are_the_schemas_the_bus_validates_with() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let domain = nexus_domain::domain();
    let schemas = &doc["components"]["schemas"];

    // The payload schemas and event schemas are the domain's, verbatim.
    for name in COMMANDS {
        let (spec, _) = domain.command(name).expect("a command of the domain");
        let shipped: Value = serde_json::from_str(spec.schema).unwrap();
        assert_eq!(schemas[format!("commands.{name}")], shipped, "payload schema of {name}");
    }
    for spec in domain.events() {
        let shipped: Value = serde_json::from_str(spec.schema).unwrap();
        assert_eq!(schemas[format!("events.{}", spec.name)], shipped, "schema of event {}", spec.name);
    }

    // PlaceOrder's body: the payload schema plus the envelope keys.
    let reference = &request_body_schema(&doc, "/api/commands/PlaceOrder", "post")["$ref"];
    let body = resolve(&doc, reference);
    let required: BTreeSet<&str> =
        body["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(required, BTreeSet::from(["customerId", "items"]), "{body}");
    for key in ["customerId", "items", "aggregateId", "commandId", "expectedVersion", "metadata"] {
        assert!(body["properties"][key].is_object(), "{key} in {body}");
    }
    assert_eq!(body["properties"]["items"]["items"]["required"], json!(["productId", "quantity"]));
    // A command that acts on an existing aggregate needs its id.
    let confirm = resolve(&doc, &request_body_schema(&doc, "/api/commands/ConfirmOrder", "post")["$ref"]);
    assert!(confirm["required"].as_array().unwrap().contains(&json!("aggregateId")), "{confirm}");

    // What the document accepts, the server accepts; what it refuses, the server refuses.
    let place = jsonschema::validator_for(&component_schema(&doc, "commands.PlaceOrder.request")).unwrap();
    let good = json!({
        "aggregateId": "o-openapi-1",
        "commandId": "c-openapi-1",
        "metadata": {"userId": "u-1", "correlationId": "k-1"},
        "customerId": "c-1",
        "items": [{"productId": "p-1", "quantity": 2, "unitPrice": 3.5}]
    });
    assert!(
        place.is_valid(&good),
        "{:?}",
        place.iter_errors(&good).map(|e| e.to_string()).collect::<Vec<_>>()
    );
    server.accepted("PlaceOrder", good).await;
    let bad = json!({
        "aggregateId": "o-openapi-2",
        "customerId": "c-1",
        "items": [{"productId": "p-1", "quantity": 0}]
    });
    assert!(!place.is_valid(&bad));
    assert_eq!(server.command("PlaceOrder", bad).await.error_fields(), ["items[0].quantity"]);
    let unknown_key =
        json!({"customerId": "c-1", "items": [{"productId": "p-1", "quantity": 1}], "colour": "red"});
    assert!(!place.is_valid(&unknown_key));
    assert_eq!(server.command("PlaceOrder", unknown_key).await.error_fields(), ["colour"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_server_describes_only_what_it_serves() {
    let server = TestServer::start_with(|config| config.role = Role::Query).await;
    let doc = document(&server).await;
    let described: BTreeSet<String> = operations(&doc)
        .iter()
        .map(|(path, method, _)| format!("{} {path}", method.to_ascii_uppercase()))
        .collect();
    assert!(!described.iter().any(|route| route.starts_with("POST /api/commands/")), "{described:#?}");
    for absent in [
        "POST /api/sagas",
        "POST /api/events/{aggregate_id}",
        "GET /api/admin/webhooks",
        "GET /api/admin/dlq",
    ] {
        assert!(!described.contains(absent), "{absent} is described by a query server");
    }
    for present in [
        "GET /api/queries/{resource}/{id}",
        "GET /api/events/{aggregate_id}",
        "GET /api/subscriptions",
        "GET /api/schema-registry/subjects",
        "GET /health/live",
        "GET /api/openapi.json",
    ] {
        assert!(described.contains(present), "{present} is missing");
    }
    assert!(doc["components"]["schemas"].get("commands.PlaceOrder").is_none());
    assert!(doc["components"]["schemas"]["events.OrderPlaced"].is_object());
    // And indeed it does not serve commands.
    let reply = server.command("PlaceOrder", json!({"customerId": "c-1", "items": []})).await;
    assert_eq!((reply.status, reply.body["message"].as_str()), (404, Some("no such endpoint")));
}
