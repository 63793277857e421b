//! The HTTP routes of the contract, one module per area.

mod commands;
mod events;
mod ops;
mod queries;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::{AppState, ws};

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/api/commands/{command_type}", post(commands::handle))
        .route("/api/events", get(events::by_type))
        .route("/api/events/{aggregate_id}", get(events::stream))
        .route("/api/queries/{resource}", get(queries::list))
        .route("/api/queries/{resource}/{id}", get(queries::get))
        .route("/api/subscriptions", get(ws::upgrade))
        .route("/api/admin/projections", get(ops::projections))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(BodyLimit(body_limit)))
        .with_state(state)
}
