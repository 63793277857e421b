//! The HTTP routes of the contract, one module per area, registered from one table: the router
//! and the service graph the policies judge are both built from [`endpoints`], so they cannot
//! drift apart.

mod commands;
mod events;
mod integrations;
mod openapi;
mod ops;
mod queries;
mod registry;
mod sagas;

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Router};

use crate::auth::{self, Scope};
use crate::config::Role;
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::rate_limit::{self, RateClass};
use crate::{AppState, ws};

/// One endpoint: what the router serves and what the service graph reports.
pub(crate) struct Endpoint {
    /// The role that serves it; `All` for what every process serves (health, metrics).
    pub(crate) role: Role,
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) rate: Option<RateClass>,
    /// One line on what it does: the operation's summary in `GET /api/openapi.json`.
    pub(crate) summary: &'static str,
    /// What a credential must allow when auth is on.
    pub(crate) scope: Scope,
    pub(crate) handler: MethodRouter<AppState>,
}

fn endpoint(
    role: Role,
    method: &'static str,
    path: &'static str,
    rate: Option<RateClass>,
    summary: &'static str,
    handler: MethodRouter<AppState>,
) -> Endpoint {
    Endpoint { role, method, path, rate, summary, scope: scope_of(method, path), handler }
}

/// The scope an endpoint needs: reads are `queries`, writes `commands`, operating `admin`.
fn scope_of(method: &str, path: &str) -> Scope {
    let admin = path.starts_with("/api/admin/") || path == "/metrics";
    let registry_write = path.starts_with("/api/schema-registry/")
        && (method == "PUT" || (method == "POST" && path.ends_with("/versions")));
    match (method, path) {
        _ if path.starts_with("/health/") || path == "/api/openapi.json" => Scope::Public,
        _ if admin || registry_write => Scope::Admin,
        // Appending raw events is an import tool, not a command.
        ("POST", "/api/events/{aggregate_id}") => Scope::Admin,
        ("POST", "/api/commands/{command_type}") | ("POST", "/api/sagas") => Scope::Commands,
        _ => Scope::Queries,
    }
}

/// Every endpoint the server serves.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use RateClass::{Admin, Commands, List, Reads, Registry, Search, Temporal};
    use Role::{All, Command, Query, Router};
    vec![
        endpoint(
            Command,
            "POST",
            "/api/commands/{command_type}",
            Some(Commands),
            "Send a command",
            post(commands::handle),
        ),
        endpoint(
            Query,
            "GET",
            "/api/events",
            Some(Temporal),
            "Events of one type in a time range",
            get(events::by_type),
        ),
        endpoint(
            Query,
            "GET",
            "/api/events/{aggregate_id}",
            Some(List),
            "One aggregate's events",
            get(events::stream),
        ),
        endpoint(
            Query,
            "GET",
            "/api/queries/temporal/{aggregate_id}",
            Some(Temporal),
            "An aggregate's state at a point in time",
            get(queries::temporal),
        ),
        endpoint(
            Query,
            "GET",
            "/api/queries/{resource}",
            Some(List),
            "List documents of a resource type",
            get(queries::list),
        ),
        endpoint(
            Query,
            "GET",
            "/api/queries/{resource}/search",
            Some(Search),
            "Full-text search of a resource type",
            get(queries::search),
        ),
        endpoint(
            Query,
            "GET",
            "/api/queries/{resource}/{id}",
            Some(Reads),
            "One read-model document",
            get(queries::get),
        ),
        endpoint(
            Query,
            "GET",
            "/api/subscriptions",
            Some(Reads),
            "Subscribe to projection updates (WebSocket)",
            get(ws::upgrade),
        ),
        endpoint(
            Query,
            "GET",
            "/api/admin/projections",
            Some(Admin),
            "Projections' checkpoints and lag",
            get(ops::projections),
        ),
        endpoint(
            Query,
            "POST",
            "/api/admin/projections/{name}/rebuild",
            Some(Admin),
            "Rebuild a projection from the event store",
            post(ops::rebuild),
        ),
        endpoint(Command, "POST", "/api/sagas", Some(Commands), "Start a saga", post(sagas::start)),
        endpoint(
            Query,
            "GET",
            "/api/sagas/{saga_id}/status",
            Some(Reads),
            "A saga's status",
            get(sagas::status),
        ),
        endpoint(Query, "GET", "/api/admin/sagas", Some(List), "List sagas", get(sagas::list)),
        endpoint(
            Command,
            "POST",
            "/api/events/{aggregate_id}",
            Some(Commands),
            "Append raw events (imports, migrations)",
            post(events::append),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects",
            Some(Registry),
            "List subjects",
            get(registry::subjects),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions",
            Some(Registry),
            "List a subject's versions",
            get(registry::versions),
        ),
        endpoint(
            All,
            "POST",
            "/api/schema-registry/subjects/{subject}/versions",
            Some(Registry),
            "Register a schema under a subject",
            post(registry::register),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions/{version}",
            Some(Registry),
            "One version of a subject",
            get(registry::version),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions/{version}/schema",
            Some(Registry),
            "The schema of one version",
            get(registry::version_schema),
        ),
        endpoint(
            All,
            "POST",
            "/api/schema-registry/subjects/{subject}",
            Some(Registry),
            "Look up a schema in a subject",
            post(registry::lookup),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/schemas/ids/{id}",
            Some(Registry),
            "A schema by its global id",
            get(registry::by_id),
        ),
        endpoint(
            All,
            "POST",
            "/api/schema-registry/compatibility/subjects/{subject}/versions/{version}",
            Some(Registry),
            "Test a schema's compatibility",
            post(registry::compatibility),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/config",
            Some(Registry),
            "The global compatibility level",
            get(registry::global_config),
        ),
        endpoint(
            All,
            "PUT",
            "/api/schema-registry/config",
            Some(Registry),
            "Set the global compatibility level",
            axum::routing::put(registry::set_global_config),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/config/{subject}",
            Some(Registry),
            "A subject's compatibility level",
            get(registry::subject_config),
        ),
        endpoint(
            All,
            "PUT",
            "/api/schema-registry/config/{subject}",
            Some(Registry),
            "Set a subject's compatibility level",
            axum::routing::put(registry::set_subject_config),
        ),
        endpoint(
            Router,
            "POST",
            "/api/admin/webhooks",
            Some(Admin),
            "Register a webhook",
            post(integrations::create),
        ),
        endpoint(Router, "GET", "/api/admin/webhooks", Some(Admin), "List webhooks", get(integrations::list)),
        endpoint(
            Router,
            "DELETE",
            "/api/admin/webhooks/{id}",
            Some(Admin),
            "Remove a webhook",
            axum::routing::delete(integrations::delete),
        ),
        endpoint(
            Router,
            "GET",
            "/api/admin/dlq",
            Some(List),
            "List the dead-letter queue",
            get(integrations::dead_letters),
        ),
        endpoint(
            Router,
            "POST",
            "/api/admin/dlq/{id}/retry",
            Some(Admin),
            "Retry a dead letter",
            post(integrations::retry),
        ),
        endpoint(
            Router,
            "POST",
            "/api/admin/dlq/{id}/skip",
            Some(Admin),
            "Archive a dead letter",
            post(integrations::skip),
        ),
        endpoint(All, "GET", "/health/live", None, "Liveness", get(ops::live)),
        endpoint(
            All,
            "GET",
            "/health/ready",
            None,
            "Readiness: every configured backend answers",
            get(ops::ready),
        ),
        endpoint(All, "GET", "/metrics", Some(Admin), "Prometheus metrics", get(ops::metrics)),
        endpoint(All, "GET", "/api/openapi.json", None, "This OpenAPI description", get(openapi::document)),
    ]
}

/// The endpoints a process of `role` serves: the router's and the OpenAPI document's.
pub(crate) fn served(role: Role) -> impl Iterator<Item = Endpoint> {
    endpoints().into_iter().filter(move |e| e.role == Role::All || role.runs(e.role))
}

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    let role = state.config.role;
    for endpoint in served(role) {
        let handler = match endpoint.rate {
            Some(class) => {
                endpoint.handler.route_layer(from_fn_with_state((state.clone(), class), rate_limit::enforce))
            }
            None => endpoint.handler,
        };
        // Added last, so it runs first: the rate limit then keys on the authenticated subject.
        let handler = match endpoint.scope {
            Scope::Public => handler,
            scope => handler.route_layer(from_fn_with_state((state.clone(), scope), auth::require)),
        };
        let merged = match by_path.remove(endpoint.path) {
            Some(existing) => existing.merge(handler),
            None => handler,
        };
        by_path.insert(endpoint.path, merged);
    }
    let mut router = Router::new();
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(|uri: Uri| async move {
            if registry::is_registry_path(uri.path()) {
                registry::http_error(StatusCode::NOT_FOUND, "no such endpoint of the schema registry")
            } else {
                ApiError::NotFound("no such endpoint".into()).into_response()
            }
        })
        .method_not_allowed_fallback(|uri: Uri| async move {
            if registry::is_registry_path(uri.path()) {
                registry::http_error(StatusCode::METHOD_NOT_ALLOWED, "this path does not take that method")
            } else {
                ApiError::MethodNotAllowed.into_response()
            }
        })
        .layer(from_fn_with_state(body_limit, errors_as_json))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(BodyLimit(body_limit)))
        .with_state(state)
}

/// The last word on every error: one answered as text, by axum's extractors (a path segment
/// that is not UTF-8, a body over the limit, a WebSocket upgrade without its headers) or by any
/// handler that did not go through [`ApiError`], is answered again in the contract's shape, or in
/// Confluent's under `/api/schema-registry`. Errors already in JSON pass as they are.
///
/// What hyper refuses while parsing the request (a URI over 64 KiB: 414, too many or too large
/// headers: 431, a conflicting `Content-Length`: 400) never reaches a service, this one included:
/// hyper writes those status lines itself, with an empty body, and closes the connection.
async fn errors_as_json(State(body_limit): State<usize>, request: Request, next: Next) -> Response {
    let in_registry = registry::is_registry_path(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(';').next().unwrap_or("").trim().ends_with("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    // axum's rejections are one short line; more is not worth reading.
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if in_registry {
        registry::rejection(status, &text, body_limit)
    } else {
        ApiError::rejection(status, &text, body_limit).into_response()
    }
}
