//! `GET /api/openapi.json` (contract §10): the OpenAPI 3.1 description of what this process
//! serves, built from the route table ([`super::endpoints`]) and the domain's own schemas.
//!
//! Nothing here lists routes. Every operation comes from a table entry that the router serves
//! under the same role filter ([`super::served`]), so a route cannot be served without being
//! described, nor described without being served. The body documented for a command is the JSON
//! Schema that the command bus validates its payload with, and each event type's registered
//! schema is a component. What the table does not say (query parameters, bodies, answers) is keyed
//! here by method and path in [`detail`]; an entry missing there is still described, with its
//! path parameters and the answers every endpoint of its kind has.
//!
//! The domain's schemas are copied into the document after utoipa's model is serialized,
//! verbatim but for their local `$ref`s (rebased onto the component): OpenAPI 3.1 schemas are
//! JSON Schema 2020-12, while utoipa's `Schema` models only part of it, and a round trip through
//! it could silently drop a keyword the bus enforces.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use nexus_core::CommandSpec;
use serde_json::{Value, json};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{
    Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, ParameterStyle,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::schema::{AdditionalProperties, Object, SchemaType};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ArrayBuilder, Components, ComponentsBuilder, ContentBuilder, HeaderBuilder, HttpMethod, InfoBuilder,
    KnownFormat, ObjectBuilder, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr, Required, Response,
    ResponseBuilder, Responses, ResponsesBuilder, Schema, SchemaFormat, SecurityRequirement, Type,
};

use super::{Endpoint, served};
use crate::AppState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::rate_limit::RateClass;

/// The route whose one table entry is documented as one operation per command type.
const COMMAND_ROUTE: &str = "/api/commands/{command_type}";

/// `GET /api/openapi.json`. Built per request: it is small, rarely asked for, and always
/// describes what this process serves with its current configuration.
pub(crate) async fn document(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    build(&state).map(Json)
}

fn build(state: &AppState) -> Result<Value, ApiError> {
    let mut paths = PathsBuilder::new();
    let mut areas = BTreeSet::new();
    let mut commands_served = false;
    for endpoint in served(state.config.role) {
        let method = http_method(endpoint.method)?;
        areas.insert(area(endpoint.path));
        if endpoint.method == "POST" && endpoint.path == COMMAND_ROUTE {
            commands_served = true;
            for spec in sorted_commands(state) {
                let path = COMMAND_ROUTE.replace("{command_type}", spec.name);
                paths = paths
                    .path(path, PathItem::new(method.clone(), command_operation(state, &endpoint, spec)));
            }
        } else {
            paths = paths.path(endpoint.path, PathItem::new(method, operation(state, &endpoint)));
        }
    }
    let tags = TAGS
        .iter()
        .filter(|(name, _)| areas.contains(name))
        .map(|(name, description)| TagBuilder::new().name(*name).description(Some(*description)).build());
    let info = InfoBuilder::new()
        .title("Nexus")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Event sourcing and CQRS over HTTP. This document describes exactly what this process serves \
             (its role and configuration): it is generated from the server's route table and the \
             domain's JSON Schemas. When auth is on, each operation needs a bearer JWT or an API key \
             with the scope named in its `security` and `x-nexus-scope`.",
        ))
        .build();
    let openapi = OpenApiBuilder::new()
        .info(info)
        .paths(paths)
        .components(Some(components(state)))
        .tags(Some(tags))
        .build();
    let mut document = serde_json::to_value(&openapi).map_err(|e| ApiError::Internal(e.to_string()))?;
    let schemas = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::Internal("the OpenAPI document has no components.schemas".into()))?;
    if commands_served {
        for spec in sorted_commands(state) {
            let name = format!("commands.{}", spec.name);
            let payload = component_schema(&name, spec.schema)?;
            schemas.insert(format!("{name}.request"), request_schema(spec, &payload)?);
            schemas.insert(name, payload);
        }
    }
    let mut events: Vec<_> = state.domain.events().collect();
    events.sort_by_key(|spec| spec.name);
    for spec in events {
        let name = format!("events.{}", spec.name);
        schemas.insert(name.clone(), component_schema(&name, spec.schema)?);
    }
    Ok(document)
}

fn sorted_commands(state: &AppState) -> Vec<&CommandSpec> {
    let mut commands: Vec<_> = state.domain.commands().collect();
    commands.sort_by_key(|spec| spec.name);
    commands
}

/// A domain schema as the component `component`: verbatim, except that its local references
/// (`#/$defs/...`) are rebased onto the component, since in the document `#` is the document.
fn component_schema(component: &str, text: &str) -> Result<Value, ApiError> {
    // The bus and the registry compiled these at start-up, so this only fails on a broken build.
    let mut schema: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::Internal(format!("schema of {component} is not JSON: {e}")))?;
    // With an `$id` the schema is its own resource, and `#` already means the schema itself.
    if schema.get("$id").is_none() {
        rebase_refs(&mut schema, &format!("#/components/schemas/{component}"));
    }
    Ok(schema)
}

fn rebase_refs(schema: &mut Value, base: &str) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(reference) if key == "$ref" && reference.starts_with('#') => {
                        *reference = format!("{base}{}", &reference[1..]);
                    }
                    _ => rebase_refs(value, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, base)),
        _ => {}
    }
}

fn http_method(method: &str) -> Result<HttpMethod, ApiError> {
    Ok(match method {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        "PATCH" => HttpMethod::Patch,
        other => return Err(ApiError::Internal(format!("the route table has an unknown method {other}"))),
    })
}

const TAGS: [(&str, &str); 7] = [
    ("commands", "The write side: one operation per command type of the domain (contract §3)."),
    ("events", "The audit store, read-only except for admin imports (contract §4)."),
    ("queries", "Read models, full-text search, temporal queries and subscriptions (contract §5)."),
    ("sagas", "Multi-step transactions with compensation (contract §6)."),
    ("schema-registry", "The Confluent Schema Registry REST API for JSON Schema (contract §7)."),
    ("admin", "Projections, webhooks and the dead-letter queue (contract §9)."),
    ("operations", "Health, metrics and this description (contract §10)."),
];

/// The tag of an endpoint: the contract's area it belongs to.
fn area(path: &str) -> &'static str {
    if path.starts_with("/api/commands/") {
        "commands"
    } else if path.starts_with("/api/events") {
        "events"
    } else if path.starts_with("/api/queries/") || path == "/api/subscriptions" {
        "queries"
    } else if path.starts_with("/api/sagas") || path.starts_with("/api/admin/sagas") {
        "sagas"
    } else if path.starts_with("/api/schema-registry/") {
        "schema-registry"
    } else if path.starts_with("/api/admin/") {
        "admin"
    } else {
        "operations"
    }
}

/// What the table does not say about an endpoint.
struct Detail {
    operation_id: &'static str,
    description: Option<&'static str>,
    /// Query and header parameters (path parameters come from the path itself).
    params: Vec<Parameter>,
    body: Option<RequestBody>,
    /// The success status and its answer.
    ok: (&'static str, Response),
    /// Named error answers beyond those the endpoint's kind implies (see [`responses`]).
    errors: Vec<&'static str>,
    /// Whether it reads or writes a backend, and so can answer 503.
    backend: bool,
    /// Answers of its own beyond the success and the named errors.
    answers: Vec<(&'static str, Response)>,
}

impl Detail {
    fn new(operation_id: &'static str, ok: (&'static str, Response)) -> Self {
        Self {
            operation_id,
            description: None,
            params: Vec::new(),
            body: None,
            ok,
            errors: Vec::new(),
            backend: true,
            answers: Vec::new(),
        }
    }

    fn answer(mut self, status: &'static str, response: Response) -> Self {
        self.answers.push((status, response));
        self
    }

    fn params(mut self, params: impl IntoIterator<Item = Parameter>) -> Self {
        self.params.extend(params);
        self
    }

    fn body(mut self, description: &str, schema: impl Into<RefOr<Schema>>) -> Self {
        self.body = Some(json_body(description, schema));
        self
    }

    fn errors(mut self, names: &[&'static str]) -> Self {
        self.errors.extend_from_slice(names);
        self
    }

    fn describe(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }

    fn no_backend(mut self) -> Self {
        self.backend = false;
        self
    }
}

fn operation(state: &AppState, endpoint: &Endpoint) -> Operation {
    let detail = detail(state, endpoint.method, endpoint.path);
    let operation_id = match detail.operation_id {
        "" => fallback_id(endpoint.method, endpoint.path),
        id => id.to_owned(),
    };
    let description = detail.description.map(str::to_owned);
    finish(state, endpoint, endpoint.path, operation_id, endpoint.summary.to_owned(), description, detail)
}

/// `POST /api/commands/{name}` for one command type: its body is the command's own schema.
fn command_operation(state: &AppState, endpoint: &Endpoint, spec: &CommandSpec) -> Operation {
    let schema_description = serde_json::from_str::<Value>(spec.schema)
        .ok()
        .and_then(|schema| schema.get("description").and_then(Value::as_str).map(str::to_owned));
    let aggregate = if spec.creates {
        "Creates its aggregate: `aggregateId` may be omitted and is then generated."
    } else {
        "Acts on an existing aggregate: `aggregateId` is required."
    };
    let description = [
        schema_description.as_deref().unwrap_or(""),
        aggregate,
        "The body is the payload (`commands.{name}`, the schema it is validated with) plus the envelope keys \
         `aggregateId`, `commandId` (idempotency key; the same id sent again answers the same result and \
         appends nothing), `expectedVersion` (optimistic concurrency: 409 when the aggregate is elsewhere) \
         and `metadata`. The seed's full `Command` envelope (`{commandType, aggregateId, payload, ...}`) is \
         accepted too. 202 means the events are durable.",
    ]
    .iter()
    .filter(|part| !part.is_empty())
    .map(|part| part.replace("{name}", spec.name))
    .collect::<Vec<_>>()
    .join("\n\n");
    let ok = json_response("Accepted: the events are durable.", Ref::from_schema_name("CommandResult"));
    let detail = Detail::new("", ("202", ok))
        .params([
            header_param("Idempotency-Key", "The `commandId` when the body names none."),
            header_param("X-Correlation-Id", "The `metadata.correlationId` when the body names none."),
        ])
        .body(
            &format!("The {} payload and the envelope keys.", spec.name),
            Ref::from_schema_name(format!("commands.{}.request", spec.name)),
        )
        .errors(&["Conflict"]);
    let path = COMMAND_ROUTE.replace("{command_type}", spec.name);
    let summary = format!("{}: {}", endpoint.summary, spec.name);
    finish(state, endpoint, &path, format!("send{}", spec.name), summary, Some(description), detail)
}

/// The operation from its table entry and its detail: parameters, security, limits, answers.
fn finish(
    state: &AppState,
    endpoint: &Endpoint,
    path: &str,
    operation_id: String,
    summary: String,
    description: Option<String>,
    detail: Detail,
) -> Operation {
    let per_minute = endpoint.rate.and_then(|class| state.rate_limits.per_minute(class));
    let mut extensions = ExtensionsBuilder::new()
        .add("x-nexus-route", format!("{} {}", endpoint.method, endpoint.path))
        .add("x-nexus-scope", endpoint.scope.name());
    let mut notes: Vec<String> = description.into_iter().collect();
    if let (Some(class), Some(per_minute)) = (endpoint.rate, per_minute) {
        let class = rate_class_name(class);
        extensions = extensions.add("x-nexus-rate-limit", json!({"class": class, "perMinute": per_minute}));
        notes.push(format!("Rate limit: {per_minute} requests per minute per client (class `{class}`)."));
    }
    if endpoint.scope != Scope::Public {
        notes.push(format!("Scope: `{}` (when auth is on).", endpoint.scope.name()));
    }
    let responses = responses(endpoint, path, &detail, per_minute.is_some());
    let mut operation = OperationBuilder::new()
        .operation_id(Some(operation_id))
        .summary(Some(summary))
        .description(Some(notes.join("\n\n")))
        .tag(area(endpoint.path))
        .request_body(detail.body)
        .responses(responses)
        .extensions(Some(extensions.build()));
    for param in path_params(state, path).into_iter().chain(detail.params) {
        operation = operation.parameter(param);
    }
    if endpoint.scope != Scope::Public {
        let scope = endpoint.scope.name();
        operation = operation
            .security(SecurityRequirement::new(BEARER, [scope]))
            .security(SecurityRequirement::new(API_KEY, [scope]));
    }
    operation.build()
}

fn fallback_id(method: &str, path: &str) -> String {
    let words = path.split(['/', '{', '}', '-', '.', '_']).filter(|w| !w.is_empty());
    let mut id = method.to_ascii_lowercase();
    for word in words {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn rate_class_name(class: RateClass) -> &'static str {
    match class {
        RateClass::List => "list",
        RateClass::Search => "search",
        RateClass::Temporal => "temporal",
        RateClass::Commands => "commands",
        RateClass::Reads => "reads",
        RateClass::Registry => "registry",
        RateClass::Admin => "admin",
    }
}

/// Error answers: (status, component name, description). The contract's shape (`Error`) unless
/// named `Registry…` (Confluent's shape, `RegistryError`).
const ERRORS: [(&str, &str, &str); 14] = [
    (
        "400",
        "BadRequest",
        "`VALIDATION_ERROR`: malformed JSON, wrong types, missing or invalid fields or parameters; `fields` \
         names each (`items[0].quantity`). `BUSINESS_RULE_VIOLATION`: the aggregate's rules reject the \
         command. `TIME_RANGE_EXCEEDED`: a temporal query further back than the limit.",
    ),
    ("401", "Unauthenticated", "`UNAUTHENTICATED`: auth is on and the credential is missing or invalid."),
    ("403", "Forbidden", "`FORBIDDEN`: the credential lacks the operation's scope."),
    ("404", "NotFound", "`NOT_FOUND`: no such resource."),
    (
        "409",
        "Conflict",
        "`CONCURRENCY_CONFLICT`: `expectedVersion` differs from the aggregate's version (the body adds \
         `expectedVersion` and `actualVersion`). `IDEMPOTENCY_CONFLICT`: a `commandId` (or `sagaId`) reused \
         with a different request.",
    ),
    ("413", "PayloadTooLarge", "`PAYLOAD_TOO_LARGE`: the body is over the server's limit."),
    (
        "415",
        "UnsupportedMediaType",
        "`UNSUPPORTED_MEDIA_TYPE`: the body is not JSON (`Content-Type: application/json`).",
    ),
    (
        "429",
        "RateLimited",
        "`RATE_LIMITED`: the client's limit for this endpoint is reached; `Retry-After` says when to retry.",
    ),
    (
        "503",
        "Unavailable",
        "`UNAVAILABLE`: a backend is down; nothing acknowledged was lost. `Retry-After` says when to retry.",
    ),
    (
        "504",
        "ProjectionTimeout",
        "`PROJECTION_TIMEOUT`: the read model did not reach `minVersion` (or `minPosition`) within \
         `timeoutMs` (the body adds `minVersion` and `currentVersion`, or `minPosition` and \
         `currentPosition`).",
    ),
    (
        "404",
        "RegistryNotFound",
        "Subject (40401), version (40402), schema (40403) or subject compatibility level (40408) not found.",
    ),
    (
        "409",
        "RegistryIncompatible",
        "The schema is incompatible with the subject's versions under its compatibility level; the message \
         lists each violation.",
    ),
    ("422", "RegistryInvalid", "Invalid schema (42201), version (42202) or compatibility level (42203)."),
    ("500", "RegistryStoreError", "The registry's store failed (50001)."),
];

fn error_status(name: &str) -> &'static str {
    ERRORS.iter().find(|(_, n, _)| *n == name).map_or("default", |(status, _, _)| status)
}

/// The success answer, the errors the endpoint's kind implies, and the detail's own.
fn responses(endpoint: &Endpoint, path: &str, detail: &Detail, rate_limited: bool) -> Responses {
    let registry = endpoint.path.starts_with("/api/schema-registry/");
    let mut names: Vec<&str> = Vec::new();
    // The schema registry answers in Confluent's shape; the contract's errors do not apply there.
    if !registry {
        if !detail.params.is_empty() || detail.body.is_some() {
            names.push("BadRequest");
        }
        if path.contains('{') {
            names.push("NotFound");
        }
        if detail.body.is_some() {
            names.extend(["PayloadTooLarge", "UnsupportedMediaType"]);
        }
        if detail.backend {
            names.push("Unavailable");
        }
    }
    if endpoint.scope != Scope::Public {
        names.extend(["Unauthenticated", "Forbidden"]);
    }
    if rate_limited {
        names.push("RateLimited");
    }
    names.extend(detail.errors.iter().copied());
    let mut responses = ResponsesBuilder::new().response(detail.ok.0, detail.ok.1.clone());
    for (status, response) in &detail.answers {
        responses = responses.response(*status, response.clone());
    }
    for name in names {
        responses = responses.response(error_status(name), Ref::from_response_name(name));
    }
    responses.build()
}

/// Query and header parameters, bodies and answers, by route.
fn detail(state: &AppState, method: &str, path: &str) -> Detail {
    let found = match path {
        _ if path.starts_with("/api/events") => events_detail(method, path),
        _ if path.starts_with("/api/queries/") || path == "/api/subscriptions" => {
            queries_detail(state, method, path)
        }
        _ if path.starts_with("/api/sagas") || path.starts_with("/api/admin/sagas") => {
            sagas_detail(state, method, path)
        }
        _ if path.starts_with("/api/schema-registry/") => registry_detail(method, path),
        _ => admin_detail(method, path).or_else(|| operations_detail(method, path)),
    };
    // A route added to the table without a detail here: still described, generically.
    found.unwrap_or_else(|| Detail::new("", ("200", ResponseBuilder::new().description("Success.").build())))
}

fn events_detail(method: &str, path: &str) -> Option<Detail> {
    let version =
        |name: &str, description: &str| query_param(name, description, integer().minimum(Some(1)), false);
    Some(match (method, path) {
        ("GET", "/api/events") => {
            Detail::new("listEventsByType", ok("Events of the type, in time order.", events_body(false)))
                .params([
                    query_param("eventType", "The event type.", string().min_length(Some(1)), true),
                    query_param("startTime", "Earliest timestamp (inclusive).", timestamp(), false),
                    query_param("endTime", "Latest timestamp (inclusive).", timestamp(), false),
                    query_param(
                        "limit",
                        "Most events returned.",
                        integer().minimum(Some(1)).maximum(Some(1000)).default(Some(json!(100))),
                        false,
                    ),
                ])
        }
        ("GET", "/api/events/{aggregate_id}") => Detail::new(
            "getAggregateEvents",
            ok(
                "The aggregate's events in version order, upcast to the current schema versions.",
                events_body(true),
            ),
        )
        .params([
            version("fromVersion", "First version (default 1)."),
            version("toVersion", "Last version (default: the latest)."),
        ]),
        ("POST", "/api/events/{aggregate_id}") => {
            let appended = object()
                .property("aggregateId", string())
                .property("version", integer())
                .property("eventIds", array(string()))
                .required("aggregateId")
                .required("version")
                .required("eventIds");
            Detail::new("appendEvents", ("201", json_response("Appended.", appended)))
                .describe(
                    "For imports and migrations: each event must validate against its registered schema \
                     version, and is upcast when read like any other.",
                )
                .body("Raw events to append.", raw_append())
                .errors(&["Conflict"])
        }
        _ => return None,
    })
}

fn queries_detail(state: &AppState, method: &str, path: &str) -> Option<Detail> {
    let limits = &state.config.limits;
    let page_limit = || page_limit(state);
    let next_token = || query_param("nextToken", "The `nextToken` of the previous page.", string(), false);
    let timeout = || {
        integer()
            .minimum(Some(0))
            .maximum(Some(limits.max_wait_ms))
            .default(Some(json!(limits.min_version_timeout_ms)))
    };
    let min_position = || {
        let text = "Read-your-writes: wait until the resource's projection has applied every event up to this \
                    store position (the `position` of a command's 202).";
        query_param("minPosition", text, integer().minimum(Some(0)), false)
    };
    let timeout_ms =
        || query_param("timeoutMs", "How long `minPosition` or `minVersion` waits.", timeout(), false);
    let filters = || {
        ParameterBuilder::new()
            .name("filters")
            .parameter_in(ParameterIn::Query)
            .description(Some(
                "Any other parameter `<field>=<value>` keeps the documents whose field equals the value.",
            ))
            .style(Some(ParameterStyle::Form))
            .explode(Some(true))
            .schema(Some(object().additional_properties(Some(string()))))
            .build()
    };
    Some(match (method, path) {
        ("GET", "/api/queries/temporal/{aggregate_id}") => {
            let state_at = object()
                .property("aggregateId", string())
                .property("version", integer())
                .property("asOf", timestamp())
                .property("state", free_object())
                .required("aggregateId")
                .required("version")
                .required("asOf")
                .required("state");
            let as_of = format!(
                "The moment to rebuild the state at; at most {} days back.",
                limits.temporal_max_days
            );
            Detail::new(
                "getTemporalState",
                ok("The aggregate as its read model showed it at `asOf`.", state_at),
            )
            .params([query_param("asOf", &as_of, timestamp(), true), min_position(), timeout_ms()])
            .errors(&["ProjectionTimeout"])
        }
        ("GET", "/api/queries/{resource}") => {
            let page = object()
                .property("items", array(Ref::from_schema_name("ReadDocument")))
                .property("total", integer())
                .property("nextToken", nullable_string())
                .required("items")
                .required("total");
            let cache = HeaderBuilder::new().schema(Some(string())).description(Some("`max-age=60`")).build();
            let response =
                json_response_with("A page of documents.", page).header("Cache-Control", cache).build();
            let sort = string().pattern(Some("^[^:]+(:(asc|desc|ASC|DESC))?$"));
            Detail::new("listDocuments", ("200", response))
                .params([
                    query_param("sort", "`<field>:asc` or `<field>:desc`.", sort, false),
                    page_limit(),
                    next_token(),
                    min_position(),
                    timeout_ms(),
                    filters(),
                ])
                .errors(&["ProjectionTimeout"])
        }
        ("GET", "/api/queries/{resource}/search") => {
            let facets = object()
                .description(Some("Per faceted field, the count of each value."))
                .additional_properties(Some(object().additional_properties(Some(integer()))));
            let found = object()
                .property("results", array(Ref::from_schema_name("ReadDocument")))
                .property("total", integer())
                .property("facets", facets)
                .property("nextToken", nullable_string())
                .property("took", integer().description(Some("Milliseconds the search took.")))
                .required("results")
                .required("total")
                .required("facets")
                .required("took");
            let facets_param = "Comma-separated fields to count values of, e.g. `status,tags`.";
            Detail::new("searchDocuments", ok("Ranked matches with facet counts.", found))
                .params([
                    query_param("q", "Full-text query over `searchableText`.", string(), false),
                    query_param("facets", facets_param, string(), false),
                    page_limit(),
                    next_token(),
                    min_position(),
                    timeout_ms(),
                    filters(),
                ])
                .errors(&["ProjectionTimeout"])
        }
        ("GET", "/api/queries/{resource}/{id}") => {
            let min_version = "Read-your-writes: wait until the document reached this version.";
            Detail::new("getDocument", ok("The read-model document.", Ref::from_schema_name("ReadDocument")))
                .params([
                    query_param("minVersion", min_version, integer().minimum(Some(1)), false),
                    min_position(),
                    timeout_ms(),
                ])
                .errors(&["ProjectionTimeout"])
        }
        ("GET", "/api/subscriptions") => {
            let switching =
                ResponseBuilder::new().description("Switching to the WebSocket protocol.").build();
            Detail::new("subscribe", ("101", switching))
                .describe(
                    "A WebSocket. The client sends `{\"type\": \"subscribe\", \"aggregateIds\": [...]}` (and \
                     `unsubscribe`), answered by `{\"type\": \"subscribed\", \"aggregateIds\": [...]}` (and \
                     `unsubscribed`) once in effect; after each projection update of a subscribed aggregate \
                     the server pushes `{\"type\": \"projection_updated\", \"aggregateId\", \"version\", \
                     \"eventId\", \"timestamp\"}`. Per client: a limited number of connections (429 beyond) \
                     and of notifications per second.",
                )
                .params([query_param(
                    "access_token",
                    "When auth is on: the JWT or API key, for clients that cannot set headers on a \
                     WebSocket upgrade (browsers). Percent-encode it.",
                    string(),
                    false,
                )])
                .errors(&["RateLimited"])
                .no_backend()
        }
        _ => return None,
    })
}

fn sagas_detail(state: &AppState, method: &str, path: &str) -> Option<Detail> {
    Some(match (method, path) {
        ("POST", "/api/sagas") => {
            let started = object().property("sagaId", string()).required("sagaId");
            let correlation = "The `metadata.correlationId` when the body names none.";
            Detail::new(
                "startSaga",
                ("202", json_response("Started; the saga runs in the background.", started)),
            )
            .params([header_param("X-Correlation-Id", correlation)])
            .body("The saga's steps.", Ref::from_schema_name("SagaDefinition"))
            .errors(&["Conflict"])
        }
        ("GET", "/api/sagas/{saga_id}/status") => {
            Detail::new("getSagaStatus", ok("The saga's progress.", Ref::from_schema_name("SagaStatus")))
        }
        ("GET", "/api/admin/sagas") => {
            let page = object()
                .property("items", array(Ref::from_schema_name("SagaStatus")))
                .property("total", integer())
                .property("nextToken", nullable_string())
                .required("items")
                .required("total");
            Detail::new("listSagas", ok("Sagas, most recent first.", page)).params([
                query_param("status", "Only sagas in this status.", saga_status(), false),
                query_param("sagaType", "Only sagas of this type.", string(), false),
                page_limit(state),
                query_param("nextToken", "The `nextToken` of the previous page.", string(), false),
            ])
        }
        _ => return None,
    })
}

/// The schema registry answers in Confluent's shape (`RegistryError`).
fn registry_detail(method: &str, path: &str) -> Option<Detail> {
    let registered = || Ref::from_schema_name("RegisteredSchema");
    let schema_request = || Ref::from_schema_name("SchemaRequest");
    let level = |key: &str| object().property(key, compatibility());
    let level_body = || object().property("compatibility", compatibility()).required("compatibility");
    const NOT_FOUND: [&str; 2] = ["RegistryNotFound", "RegistryStoreError"];
    const LOOKUP: [&str; 3] = ["RegistryNotFound", "RegistryInvalid", "RegistryStoreError"];
    const WRITE: [&str; 2] = ["RegistryInvalid", "RegistryStoreError"];
    Some(match (method, path.trim_start_matches("/api/schema-registry")) {
        ("GET", "/subjects") => Detail::new("listSubjects", ok("Every subject.", array(string()))),
        ("GET", "/subjects/{subject}/versions") => {
            Detail::new("listSchemaVersions", ok("The subject's version numbers.", array(integer())))
                .errors(&NOT_FOUND)
        }
        ("POST", "/subjects/{subject}/versions") => {
            Detail::new("registerSchema", ok("Registered (or already there).", registered()))
                .body("The schema.", schema_request())
                .errors(&["RegistryIncompatible", "RegistryInvalid", "RegistryStoreError"])
        }
        ("GET", "/subjects/{subject}/versions/{version}") => {
            Detail::new("getSchemaVersion", ok("The version.", registered())).errors(&LOOKUP)
        }
        ("GET", "/subjects/{subject}/versions/{version}/schema") => {
            let any = ObjectBuilder::new().schema_type(SchemaType::AnyValue);
            Detail::new("getSchemaVersionText", ok("The schema itself.", any)).errors(&LOOKUP)
        }
        ("POST", "/subjects/{subject}") => {
            Detail::new("lookupSchema", ok("The version of the subject that holds the schema.", registered()))
                .body("The schema to look up.", schema_request())
                .errors(&LOOKUP)
        }
        ("GET", "/schemas/ids/{id}") => {
            let found =
                object().property("schema", string()).property("schemaType", string()).required("schema");
            Detail::new("getSchemaById", ok("The schema.", found)).errors(&NOT_FOUND)
        }
        ("POST", "/compatibility/subjects/{subject}/versions/{version}") => {
            let answer = object()
                .property("is_compatible", boolean())
                .property("messages", array(string()))
                .required("is_compatible");
            let verbose = "`true` lists each violation in `messages`.";
            Detail::new("checkCompatibility", ok("Whether the schema could be registered.", answer))
                .params([query_param("verbose", verbose, boolean(), false)])
                .body("The candidate schema.", schema_request())
                .errors(&LOOKUP)
        }
        ("GET", "/config") => Detail::new(
            "getCompatibility",
            ok("The global compatibility level.", level("compatibilityLevel")),
        )
        .errors(&["RegistryStoreError"]),
        ("PUT", "/config") => Detail::new("setCompatibility", ok("The new level.", level("compatibility")))
            .body("The level.", level_body())
            .errors(&WRITE),
        ("GET", "/config/{subject}") => {
            let fallback = "`true` answers the global level when the subject sets none.";
            Detail::new("getSubjectCompatibility", ok("The subject's level.", level("compatibilityLevel")))
                .params([query_param("defaultToGlobal", fallback, boolean(), false)])
                .errors(&NOT_FOUND)
        }
        ("PUT", "/config/{subject}") => {
            Detail::new("setSubjectCompatibility", ok("The new level.", level("compatibility")))
                .body("The level.", level_body())
                .errors(&WRITE)
        }
        _ => return None,
    })
}

fn admin_detail(method: &str, path: &str) -> Option<Detail> {
    Some(match (method, path) {
        ("GET", "/api/admin/projections") => {
            // `null` while no rebuild runs.
            let rebuild = ObjectBuilder::new()
                .schema_type(SchemaType::Array(vec![Type::Object, Type::Null]))
                .property("position", integer())
                .property("target", integer());
            let partition = object().property("partition", integer()).property("backlog", integer());
            let projection = object()
                .property("name", string())
                .property("feed", string().enum_values(Some(["changeFeed", "stream"])))
                .property("checkpoint", integer())
                .property("head", integer())
                .property("lag", integer())
                .property("state", string().enum_values(Some(["RUNNING", "STALLED", "REBUILDING"])))
                .property("lastError", nullable_string())
                .property("rebuild", rebuild)
                .property("rebuildsCompleted", integer())
                .property("partitions", array(partition));
            let description = "Each projection's checkpoint and lag: behind the store's head on the change feed; \
                               on the core path (`feed: stream`), the events its partitions have not applied, \
                               per partition in `partitions`.";
            Detail::new("listProjections", ok(description, items_of(projection)))
        }
        ("POST", "/api/admin/projections/{name}/rebuild") => {
            let started = object()
                .property("name", string())
                .property("state", string().enum_values(Some(["REBUILDING"])));
            Detail::new("rebuildProjection", ("202", json_response("The rebuild started.", started)))
                .describe(
                    "Replays the projection from the first event beside the live read model, which keeps \
                 answering, then swaps the new one in.",
                )
        }
        ("POST", "/api/admin/webhooks") => {
            let webhook = object()
                .property(
                    "url",
                    string().description(Some(
                        "An http:// or https:// URL without credentials. While the server listens \
                         beyond loopback, a host resolving to a loopback, private or link-local address \
                         is refused unless [webhooks] allow-private-targets.",
                    )),
                )
                .property(
                    "eventTypes",
                    array(string()).description(Some(
                        "Event types of the domain, core or queue path alike; \"*\" for all of them.",
                    )),
                )
                .property("secret", string())
                .required("url")
                .required("eventTypes")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            let created = object().property("id", string()).required("id");
            Detail::new("createWebhook", ("201", json_response("Created.", created)))
                .describe(
                    "Each delivery POSTs the event in CloudEvents 1.0 binary mode, signed with \
                     HMAC-SHA256 of the body in `X-Nexus-Signature` when a secret is set; retried with \
                     exponential backoff, then dead-lettered. One aggregate's events are delivered in \
                     order: while one is being retried, the aggregate's later events wait.",
                )
                .body("Where to deliver which events.", webhook)
        }
        ("GET", "/api/admin/webhooks") => {
            let webhook = object()
                .property("id", string())
                .property("url", string())
                .property("eventTypes", array(string()))
                .property("signed", boolean())
                .property("createdAt", timestamp());
            Detail::new("listWebhooks", ok("The webhooks.", items_of(webhook)))
        }
        ("DELETE", "/api/admin/webhooks/{id}") => {
            Detail::new("deleteWebhook", ("204", ResponseBuilder::new().description("Removed.").build()))
        }
        ("GET", "/api/admin/dlq") => {
            let letter = object()
                .property("id", string())
                .property("eventId", string())
                .property("eventType", string())
                .property("aggregateId", string())
                .property("consumer", string())
                .property("failureReason", string())
                .property("retryCount", integer())
                .property("firstFailureTime", timestamp())
                .property("lastFailureTime", timestamp());
            Detail::new("listDeadLetters", ok("Deliveries that failed every attempt.", items_of(letter)))
        }
        ("POST", "/api/admin/dlq/{id}/retry") => {
            let retried = dead_letter_state("RETRIED").property(
                "alreadyApplied",
                boolean().description(Some(
                    "A projection's dead letter only: an earlier retry had applied it (nothing changed).",
                )),
            );
            let done =
                "Republished to its consumer's queue, or applied to its projection (`projection:{name}`).";
            Detail::new("retryDeadLetter", ok(done, retried)).errors(&["BadRequest"])
        }
        ("POST", "/api/admin/dlq/{id}/skip") => {
            Detail::new("skipDeadLetter", ok("Archived.", dead_letter_state("ARCHIVED")))
        }
        _ => return None,
    })
}

fn operations_detail(method: &str, path: &str) -> Option<Detail> {
    Some(match (method, path) {
        ("GET", "/health/live") => {
            Detail::new("live", ok("The process is up.", object().property("status", string()))).no_backend()
        }
        ("GET", "/health/ready") => {
            let ready = || {
                object().property("status", string().enum_values(Some(["ready", "unavailable"]))).property(
                    "checks",
                    object()
                        .description(Some("Per backend: `ok`, or why it did not answer."))
                        .additional_properties(Some(string())),
                )
            };
            let not_ready = json_response("A backend did not answer; `checks` says which.", ready());
            Detail::new("ready", ok("Every configured backend answers.", ready()))
                .no_backend()
                .answer("503", not_ready)
        }
        ("GET", "/metrics") => {
            let text = ContentBuilder::new().schema(Some(string())).build();
            let response =
                ResponseBuilder::new().description("Prometheus text format.").content("text/plain", text);
            Detail::new("metrics", ("200", response.build())).no_backend()
        }
        ("GET", "/api/openapi.json") => {
            Detail::new("openapi", ok("This document (OpenAPI 3.1).", free_object())).no_backend()
        }
        _ => return None,
    })
}

fn page_limit(state: &AppState) -> Parameter {
    let limits = &state.config.limits;
    let limit = integer()
        .minimum(Some(1))
        .maximum(Some(limits.max_page_size))
        .default(Some(json!(limits.default_page_size)));
    query_param("limit", "Page size.", limit, false)
}

/// Path parameters, in order, from the path's `{name}` segments.
fn path_params(state: &AppState, path: &str) -> Vec<Parameter> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (description, schema) = path_param(state, path, name);
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        })
        .collect()
}

fn path_param(state: &AppState, path: &str, name: &str) -> (&'static str, ObjectBuilder) {
    let one_of = |names: Vec<&str>| {
        let schema = string();
        if names.is_empty() { schema } else { schema.enum_values(Some(names)) }
    };
    match name {
        "aggregate_id" => ("The aggregate's id.", string().pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))),
        "resource" => {
            let mut names: Vec<&str> = state.domain.projections().iter().map(|p| p.name()).collect();
            names.sort_unstable();
            ("A resource type: the name of a projection.", one_of(names))
        }
        "name" => {
            let mut names: Vec<&str> = state.projections.iter().map(|(name, _)| *name).collect();
            names.sort_unstable();
            ("A projection's name.", one_of(names))
        }
        "saga_id" => ("The saga's id.", string()),
        "subject" => ("A subject: an event type (`TicketOpened`) or `commands.<CommandType>`.", string()),
        "version" => ("A version number, or `latest`.", string().pattern(Some("^([1-9][0-9]*|latest|-1)$"))),
        "id" if path.starts_with("/api/queries/") => ("The document's id.", string()),
        "id" if path.starts_with("/api/schema-registry/") => {
            ("A schema's global id.", integer().minimum(Some(1)))
        }
        "id" if path.starts_with("/api/admin/webhooks/") => ("The webhook's id.", string()),
        "id" if path.starts_with("/api/admin/dlq/") => ("The dead letter's id.", string()),
        _ => ("", string()),
    }
}

fn query_param(name: &str, description: &str, schema: impl Into<RefOr<Schema>>, required: bool) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required { Required::True } else { Required::False })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn header_param(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(string()))
        .build()
}

fn json_body(description: &str, schema: impl Into<RefOr<Schema>>) -> RequestBody {
    RequestBodyBuilder::new()
        .description(Some(description))
        .required(Some(Required::True))
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

fn json_response_with(description: &str, schema: impl Into<RefOr<Schema>>) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(schema)).build())
}

fn json_response(description: &str, schema: impl Into<RefOr<Schema>>) -> Response {
    json_response_with(description, schema).build()
}

/// A 200 answer with a JSON body.
fn ok(description: &str, schema: impl Into<RefOr<Schema>>) -> (&'static str, Response) {
    ("200", json_response(description, schema))
}

fn object() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Object)
}

/// A JSON object with any keys.
fn free_object() -> ObjectBuilder {
    object().additional_properties(Some(AdditionalProperties::FreeForm(true)))
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable_string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
}

fn integer() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer)
}

fn boolean() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Boolean)
}

fn timestamp() -> ObjectBuilder {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .description(Some("ISO 8601 UTC, e.g. `2026-11-27T02:35:45.123Z`."))
}

fn array(items: impl Into<RefOr<Schema>>) -> ArrayBuilder {
    ArrayBuilder::new().items(items.into())
}

fn items_of(item: impl Into<RefOr<Schema>>) -> ObjectBuilder {
    object().property("items", array(item)).required("items")
}

fn events_body(with_aggregate: bool) -> ObjectBuilder {
    let body = object().property("events", array(Ref::from_schema_name("DomainEvent"))).required("events");
    if with_aggregate { body.property("aggregateId", string()).required("aggregateId") } else { body }
}

fn dead_letter_state(state: &str) -> ObjectBuilder {
    object().property("id", string()).property("state", string().enum_values(Some([state])))
}

fn saga_status() -> ObjectBuilder {
    string().enum_values(Some(["IN_PROGRESS", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"]))
}

fn compatibility() -> ObjectBuilder {
    string().enum_values(Some([
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    ]))
}

/// The body of `POST /api/events/{aggregateId}` (unknown keys are refused).
fn raw_append() -> ObjectBuilder {
    let metadata = object()
        .property("schemaVersion", string().description(Some("The registered schema version, e.g. `1`.")))
        .property("correlationId", string())
        .property("causationId", string())
        .property("userId", string())
        .required("schemaVersion")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let event = object()
        .property("eventType", string())
        .property("payload", free_object())
        .property("metadata", metadata)
        .property("eventId", string())
        .property("timestamp", timestamp())
        .required("eventType")
        .required("payload")
        .required("metadata")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    object()
        .property("expectedVersion", integer().minimum(Some(0)))
        .property("events", array(event).min_items(Some(1)))
        .required("events")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// The envelope keys of a command body (contract §3), beside the payload's own.
fn command_envelope() -> Object {
    object()
        .description(Some("The envelope keys of a command body; every other top-level key is payload."))
        .property(
            "aggregateId",
            string()
                .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))
                .description(Some("The aggregate; generated when absent for a creating command.")),
        )
        .property(
            "commandId",
            string().description(Some("Idempotency key (also `Idempotency-Key`); generated when absent.")),
        )
        .property(
            "expectedVersion",
            integer().minimum(Some(0)).description(Some("Optimistic concurrency: the aggregate's version.")),
        )
        .property(
            "metadata",
            object()
                .property("userId", string())
                .property("correlationId", string())
                .property("causationId", string()),
        )
        .build()
}

/// The body `POST /api/commands/{name}` accepts: the payload's schema with the envelope keys
/// beside its own properties. The server takes them out before it validates the payload, so a
/// payload schema that refuses unknown keys still lets them through, and so must this one.
fn request_schema(spec: &CommandSpec, payload: &Value) -> Result<Value, ApiError> {
    let envelope = serde_json::to_value(command_envelope()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let envelope = envelope.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut request = payload.clone();
    let merged = match request.as_object_mut() {
        Some(schema) => match schema.get_mut("properties").and_then(Value::as_object_mut) {
            Some(properties) => {
                // An envelope key is read as envelope even when the payload names it too.
                properties.extend(envelope.clone());
                schema.insert("title".into(), json!(format!("{} request", spec.name)));
                true
            }
            None => false,
        },
        None => false,
    };
    if !merged {
        // A payload schema without top-level `properties`: compose instead of merging.
        request = json!({
            "title": format!("{} request", spec.name),
            "allOf": [{"$ref": format!("#/components/schemas/commands.{}", spec.name)}],
            "properties": envelope,
        });
    }
    if !spec.creates {
        match request.get_mut("required").and_then(Value::as_array_mut) {
            Some(required) => required.push(json!("aggregateId")),
            None => {
                request["required"] = json!(["aggregateId"]);
            }
        }
    }
    Ok(request)
}

const BEARER: &str = "bearerAuth";
const API_KEY: &str = "apiKey";

fn components(state: &AppState) -> Components {
    let field_error = object()
        .property("field", string().description(Some("A path such as `items[0].quantity`.")))
        .property("error", string())
        .required("field")
        .required("error");
    let error = object()
        .description(Some("Every error of the contract (§2)."))
        .property("code", string().description(Some("`VALIDATION_ERROR`, `NOT_FOUND`, `RATE_LIMITED`, ...")))
        .property("message", string())
        .property("fields", array(Ref::from_schema_name("FieldError")))
        .property("expectedVersion", integer().description(Some("`CONCURRENCY_CONFLICT` only.")))
        .property("actualVersion", integer().description(Some("`CONCURRENCY_CONFLICT` only.")))
        .property("minVersion", integer().description(Some("`PROJECTION_TIMEOUT` only.")))
        .property("currentVersion", integer().description(Some("`PROJECTION_TIMEOUT` only.")))
        .property("minPosition", integer().description(Some("`PROJECTION_TIMEOUT` only.")))
        .property("currentPosition", integer().description(Some("`PROJECTION_TIMEOUT` only.")))
        .property(
            "commandId",
            string().description(Some(
                "`UNAVAILABLE` of a command only: send the command again with this `commandId`.",
            )),
        )
        .required("code")
        .required("message");
    let registry_error = object()
        .description(Some("An error of the schema registry, in Confluent's shape."))
        .property("error_code", integer())
        .property("message", string())
        .required("error_code")
        .required("message");
    let command_result = object()
        .property("success", boolean())
        .property("commandId", string())
        .property("aggregateId", string())
        .property("version", integer())
        .property(
            "position",
            integer().description(Some(
                "Store position of the last event appended: what `minPosition` waits for.",
            )),
        )
        .property("eventIds", array(string()))
        .required("success")
        .required("commandId")
        .required("aggregateId")
        .required("version")
        .required("position")
        .required("eventIds");
    let event_metadata = object()
        .property("correlationId", string())
        .property("causationId", string())
        .property("userId", string())
        .property("schemaVersion", string())
        .required("correlationId")
        .required("causationId")
        .required("userId")
        .required("schemaVersion");
    let domain_event = object()
        .description(Some(
            "A stored event. Its `payload` follows the schema of its type (`events.<eventType>` for the \
             domain's types), upcast to the current version when read.",
        ))
        .property("eventId", string())
        .property("eventType", string())
        .property("aggregateId", string())
        .property("aggregateVersion", integer().minimum(Some(1)))
        .property(
            "position",
            integer().minimum(Some(1)).description(Some("Global commit order in the store.")),
        )
        .property("timestamp", timestamp())
        .property("payload", free_object())
        .property("metadata", event_metadata)
        .required("eventId")
        .required("eventType")
        .required("aggregateId")
        .required("aggregateVersion")
        .required("position")
        .required("timestamp")
        .required("payload")
        .required("metadata");
    let read_document = object()
        .description(Some("A read-model document: these common fields plus the projection's own."))
        .property("id", string())
        .property("aggregateId", string())
        .property("version", integer())
        .property("lastUpdated", timestamp())
        .property("status", string())
        .property("searchableText", string())
        .property("metadata", free_object())
        .property("tags", array(string()))
        .required("id")
        .required("aggregateId")
        .required("version")
        .required("lastUpdated")
        .additional_properties(Some(AdditionalProperties::FreeForm(true)));
    let saga_status_schema = object()
        .property("sagaId", string())
        .property("sagaType", string())
        .property("status", saga_status())
        .property("currentStep", integer())
        .property("totalSteps", integer())
        .property("completedSteps", array(string()))
        .property("compensatedSteps", array(string()))
        .property(
            "uncompensatedSteps",
            array(string()).description(Some(
                "Steps whose compensation kept failing, in the order they were attempted; absent when \
                 none. The earlier steps are still compensated, then the saga ends `FAILED`.",
            )),
        )
        .property("failedStep", string())
        .property("error", string())
        .required("sagaId")
        .required("sagaType")
        .required("status")
        .required("currentStep")
        .required("completedSteps");
    let step_command = || {
        object()
            .property("commandType", string())
            .property("aggregateId", string())
            .property("payload", free_object())
            .required("commandType")
            .required("aggregateId")
            .required("payload")
    };
    let step = object()
        .property("stepId", string())
        .property("command", step_command())
        .property("compensatingCommand", step_command())
        .property(
            "timeoutMs",
            integer().minimum(Some(1)).default(Some(json!(state.config.sagas.step_timeout_ms))),
        )
        .required("stepId")
        .required("command")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let saga_definition = object()
        .property("sagaId", string().description(Some("Generated when absent; the saga's idempotency key.")))
        .property("sagaType", string())
        .property("steps", array(step))
        .property(
            "metadata",
            object()
                .property("correlationId", string())
                .property("userId", string())
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .required("sagaType")
        .required("steps")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let schema_request = object()
        .property("schema", string().description(Some("The JSON Schema, as a string.")))
        .property("schemaType", string().enum_values(Some(["JSON"])))
        .required("schema");
    let registered_schema = object()
        .property("subject", string())
        .property("version", integer())
        .property("id", integer())
        .property("schema", string())
        .property("schemaType", string())
        .required("subject")
        .required("version")
        .required("id")
        .required("schema");
    let mut builder = ComponentsBuilder::new()
        .schema("Error", error)
        .schema("FieldError", field_error)
        .schema("RegistryError", registry_error)
        .schema("CommandEnvelope", command_envelope())
        .schema("CommandResult", command_result)
        .schema("DomainEvent", domain_event)
        .schema("ReadDocument", read_document)
        .schema("SagaDefinition", saga_definition)
        .schema("SagaStatus", saga_status_schema)
        .schema("SchemaRequest", schema_request)
        .schema("RegisteredSchema", registered_schema)
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 or RS256, per configuration) carrying the operation's scope.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key configured with the operation's scope.",
            ))),
        );
    for (status, name, description) in ERRORS {
        let registry = name.starts_with("Registry");
        let shape = Ref::from_schema_name(if registry { "RegistryError" } else { "Error" });
        let mut response = json_response_with(description, shape);
        if matches!(status, "429" | "503") {
            let retry_after = HeaderBuilder::new()
                .schema(Some(integer()))
                .description(Some("Seconds to wait before retrying."))
                .build();
            response = response.header("Retry-After", retry_after);
        }
        builder = builder.response(name, response.build());
    }
    builder.build()
}
