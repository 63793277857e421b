//! The HTTP routes of the contract, one module per area, registered from one table: the router
//! and the service graph the policies judge are both built from [`endpoints`], so they cannot
//! drift apart.

mod commands;
mod events;
mod integrations;
mod ops;
mod queries;
mod registry;
mod sagas;

use std::collections::BTreeMap;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Router};

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
    pub(crate) handler: MethodRouter<AppState>,
}

fn endpoint(
    role: Role,
    method: &'static str,
    path: &'static str,
    rate: Option<RateClass>,
    handler: MethodRouter<AppState>,
) -> Endpoint {
    Endpoint { role, method, path, rate, handler }
}

/// Every endpoint the server serves.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    use RateClass::{List, Search, Temporal};
    use Role::{All, Command, Query, Router};
    vec![
        endpoint(Command, "POST", "/api/commands/{command_type}", None, post(commands::handle)),
        endpoint(Query, "GET", "/api/events", Some(Temporal), get(events::by_type)),
        endpoint(Query, "GET", "/api/events/{aggregate_id}", Some(List), get(events::stream)),
        endpoint(
            Query,
            "GET",
            "/api/queries/temporal/{aggregate_id}",
            Some(Temporal),
            get(queries::temporal),
        ),
        endpoint(Query, "GET", "/api/queries/{resource}", Some(List), get(queries::list)),
        endpoint(Query, "GET", "/api/queries/{resource}/search", Some(Search), get(queries::search)),
        endpoint(Query, "GET", "/api/queries/{resource}/{id}", None, get(queries::get)),
        endpoint(Query, "GET", "/api/subscriptions", None, get(ws::upgrade)),
        endpoint(Query, "GET", "/api/admin/projections", None, get(ops::projections)),
        endpoint(Query, "POST", "/api/admin/projections/{name}/rebuild", None, post(ops::rebuild)),
        endpoint(Command, "POST", "/api/sagas", None, post(sagas::start)),
        endpoint(Query, "GET", "/api/sagas/{saga_id}/status", None, get(sagas::status)),
        endpoint(Query, "GET", "/api/admin/sagas", Some(List), get(sagas::list)),
        endpoint(Command, "POST", "/api/events/{aggregate_id}", None, post(events::append)),
        endpoint(All, "GET", "/api/schema-registry/subjects", None, get(registry::subjects)),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions",
            None,
            get(registry::versions),
        ),
        endpoint(
            All,
            "POST",
            "/api/schema-registry/subjects/{subject}/versions",
            None,
            post(registry::register),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions/{version}",
            None,
            get(registry::version),
        ),
        endpoint(
            All,
            "GET",
            "/api/schema-registry/subjects/{subject}/versions/{version}/schema",
            None,
            get(registry::version_schema),
        ),
        endpoint(All, "POST", "/api/schema-registry/subjects/{subject}", None, post(registry::lookup)),
        endpoint(All, "GET", "/api/schema-registry/schemas/ids/{id}", None, get(registry::by_id)),
        endpoint(
            All,
            "POST",
            "/api/schema-registry/compatibility/subjects/{subject}/versions/{version}",
            None,
            post(registry::compatibility),
        ),
        endpoint(All, "GET", "/api/schema-registry/config", None, get(registry::global_config)),
        endpoint(
            All,
            "PUT",
            "/api/schema-registry/config",
            None,
            axum::routing::put(registry::set_global_config),
        ),
        endpoint(All, "GET", "/api/schema-registry/config/{subject}", None, get(registry::subject_config)),
        endpoint(
            All,
            "PUT",
            "/api/schema-registry/config/{subject}",
            None,
            axum::routing::put(registry::set_subject_config),
        ),
        endpoint(Router, "POST", "/api/admin/webhooks", None, post(integrations::create)),
        endpoint(Router, "GET", "/api/admin/webhooks", None, get(integrations::list)),
        endpoint(
            Router,
            "DELETE",
            "/api/admin/webhooks/{id}",
            None,
            axum::routing::delete(integrations::delete),
        ),
        endpoint(Router, "GET", "/api/admin/dlq", Some(List), get(integrations::dead_letters)),
        endpoint(Router, "POST", "/api/admin/dlq/{id}/retry", None, post(integrations::retry)),
        endpoint(Router, "POST", "/api/admin/dlq/{id}/skip", None, post(integrations::skip)),
        endpoint(All, "GET", "/health/live", None, get(ops::live)),
        endpoint(All, "GET", "/health/ready", None, get(ops::ready)),
        endpoint(All, "GET", "/metrics", None, get(ops::metrics)),
    ]
}

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    let mut by_path: BTreeMap<&'static str, MethodRouter<AppState>> = BTreeMap::new();
    let role = state.config.role;
    for endpoint in endpoints().into_iter().filter(|e| e.role == Role::All || role.runs(e.role)) {
        let handler = match endpoint.rate {
            Some(class) => {
                endpoint.handler.route_layer(from_fn_with_state((state.clone(), class), rate_limit::enforce))
            }
            None => endpoint.handler,
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
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(BodyLimit(body_limit)))
        .with_state(state)
}
