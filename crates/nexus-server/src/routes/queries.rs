//! The read side: documents by id (with read-your-writes) and filtered, sorted, paged lists.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nexus_core::ports::{Filter, ListQuery, SortOrder};
use nexus_core::{FieldError, ReadDocument};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::QueryParams;

fn known_resource(state: &AppState, resource: &str) -> Result<(), ApiError> {
    match state.domain.projection_named(resource) {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("no resource type '{resource}'"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GetParams {
    min_version: Option<u64>,
    min_position: Option<u64>,
    timeout_ms: Option<u64>,
}

/// How long a read-your-writes wait may last: `timeoutMs`, or the configured default.
fn wait_budget(state: &AppState, timeout_ms: Option<u64>) -> Result<u64, ApiError> {
    let limits = &state.config.limits;
    let timeout_ms = timeout_ms.unwrap_or(limits.min_version_timeout_ms);
    if timeout_ms > limits.max_wait_ms {
        return Err(ApiError::field("timeoutMs", format!("must be at most {}", limits.max_wait_ms)));
    }
    Ok(timeout_ms)
}

/// Reads a `minPosition`/`timeoutMs` pair from a list's or search's parameters (which are
/// otherwise field filters), removing them.
fn take_wait(params: &mut HashMap<String, String>) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let mut number = |name: &str| match params.remove(name) {
        None => Ok(None),
        Some(text) => crate::extract::query_integer(name, &text).map(Some),
    };
    Ok((number("minPosition")?, number("timeoutMs")?))
}

/// `?minPosition=N`: waits until `resource`'s projection has applied every event up to store
/// position N (read-your-writes for documents keyed by anything), or answers
/// `PROJECTION_TIMEOUT`. Wakes on each update of the read models, and polls every 20 ms for
/// progress that updates no document (events the projection does not handle).
async fn wait_for_position(
    state: &AppState,
    resource: &str,
    wanted: u64,
    timeout_ms: u64,
) -> Result<(), ApiError> {
    let Some((_, status)) = state.projections.iter().find(|(name, _)| *name == resource) else {
        return Err(ApiError::Unavailable(format!(
            "the {resource} projection does not run in this process (role {:?}); ask a query process",
            state.config.role
        )));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut updates = state.notifier.subscribe();
    loop {
        let ready = match status.feed() {
            // The core path: only what the router has published can have been applied.
            "stream" => {
                state.read.checkpoint(nexus_runtime::ROUTER_CHECKPOINT).await? >= wanted
                    && status.has_applied(resource, wanted).await?
            }
            _ => status.has_applied(resource, wanted).await?,
        };
        if ready {
            return Ok(());
        }
        let tick = (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline);
        match tokio::time::timeout_at(tick, updates.recv()).await {
            Err(_) if tick >= deadline => {
                return Err(ApiError::PositionTimeout {
                    resource: resource.to_owned(),
                    wanted,
                    current: status.checkpoint(),
                    timeout_ms,
                });
            }
            Ok(Err(RecvError::Closed)) => return Err(ApiError::Unavailable("server is stopping".into())),
            _ => {}
        }
    }
}

/// `GET /api/queries/{resourceType}/{id}[?minVersion=N&timeoutMs=T]`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Path((resource, id)): Path<(String, String)>,
    QueryParams(params): QueryParams<GetParams>,
) -> Result<Json<ReadDocument>, ApiError> {
    known_resource(&state, &resource)?;
    let timeout_ms = wait_budget(&state, params.timeout_ms)?;
    let started = tokio::time::Instant::now();
    if let Some(position) = params.min_position {
        wait_for_position(&state, &resource, position, timeout_ms).await?;
    }
    let Some(wanted) = params.min_version else {
        return match state.read.get(&resource, &id).await? {
            Some(doc) => Ok(Json(doc)),
            None => Err(ApiError::NotFound(format!("no {resource} document '{id}'"))),
        };
    };
    let deadline = started + Duration::from_millis(timeout_ms);
    // Subscribe before reading, so an update landing between the read and the wait is not missed.
    let mut updates = state.notifier.subscribe();
    loop {
        let doc = state.read.get(&resource, &id).await?;
        let current = doc.as_ref().map_or(0, |d| d.version);
        if current >= wanted {
            // `minVersion=0` asks for nothing to wait for: a missing document is missing.
            return match doc {
                Some(doc) => Ok(Json(doc)),
                None => Err(ApiError::NotFound(format!("no {resource} document '{id}'"))),
            };
        }
        loop {
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Err(_) => return Err(ApiError::ProjectionTimeout { wanted, current, timeout_ms }),
                Ok(Ok(update)) => {
                    if update.resource == resource && update.aggregate_id == id && update.version >= wanted {
                        break;
                    }
                }
                // Missed some updates: read again rather than guess.
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => return Err(ApiError::Unavailable("server is stopping".into())),
            }
        }
    }
}

/// The `limit` parameter of a list or search, checked against the configured page sizes.
fn page_size(
    params: &HashMap<String, String>,
    limits: &crate::config::Limits,
    errors: &mut Vec<FieldError>,
) -> usize {
    match params.get("limit").map(|l| l.parse::<usize>()) {
        None => limits.default_page_size,
        Some(Ok(n)) if (1..=limits.max_page_size).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new(
                "limit",
                format!("must be an integer from 1 to {}", limits.max_page_size),
            ));
            limits.default_page_size
        }
    }
}

/// Parameters of a list that are not field filters.
const RESERVED: [&str; 3] = ["sort", "limit", "nextToken"];

/// Whether `name` can name a document field: letters, digits and `_`, with `.` between nested
/// names. The read stores refuse any other (`StoreError::InvalidRequest`, which cannot say which
/// parameter held it); checked here first, by the same rule, so the error names the parameter.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

const FIELD_NAME_RULE: &str = "letters, digits and _, with . between nested names";

/// The filters among `params` (all but `reserved`), in name order; each name that is not a field
/// name is an error named after it.
fn field_filters(
    params: &HashMap<String, String>,
    reserved: &[&str],
    errors: &mut Vec<FieldError>,
) -> Vec<Filter> {
    let mut filters: Vec<Filter> = params
        .iter()
        .filter(|(key, _)| !reserved.contains(&key.as_str()))
        .map(|(field, value)| Filter { field: field.clone(), value: value.clone() })
        .collect();
    filters.sort_by(|a, b| a.field.cmp(&b.field));
    for filter in &filters {
        if !is_field_name(&filter.field) {
            errors.push(FieldError::new(
                &filter.field,
                format!("is not a field name ({FIELD_NAME_RULE}), so it cannot filter"),
            ));
        }
    }
    filters
}

/// `GET /api/queries/{resourceType}?<field>=<value>&sort=<field>:asc|desc&limit=&nextToken=`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(resource): Path<String>,
    QueryParams(mut params): QueryParams<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    known_resource(&state, &resource)?;
    if let (Some(position), timeout_ms) = take_wait(&mut params)? {
        wait_for_position(&state, &resource, position, wait_budget(&state, timeout_ms)?).await?;
    }
    let limits = &state.config.limits;
    let mut errors = Vec::new();
    let limit = page_size(&params, limits, &mut errors);
    let sort = params.get("sort").and_then(|sort| {
        let (field, order) = sort.split_once(':').unwrap_or((sort, "asc"));
        if !is_field_name(field) {
            errors
                .push(FieldError::new("sort", format!("'{field}' is not a field name ({FIELD_NAME_RULE})")));
            return None;
        }
        match order.to_ascii_lowercase().as_str() {
            "asc" => Some((field.to_owned(), SortOrder::Asc)),
            "desc" => Some((field.to_owned(), SortOrder::Desc)),
            _ => {
                errors.push(FieldError::new("sort", "must be <field>:asc or <field>:desc"));
                None
            }
        }
    });
    let filters = field_filters(&params, &RESERVED, &mut errors);
    let fingerprint = page_fingerprint(&filters, &sort);
    let offset = match params.get("nextToken") {
        None => 0,
        Some(token) => match decode_token(token, &fingerprint) {
            Some(offset) => offset,
            None => {
                errors.push(FieldError::new("nextToken", "is not a token this query returned"));
                0
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let query = ListQuery { filters, sort, limit, offset };
    let page = state.read.list(&resource, &query).await?;
    let next = offset + page.items.len();
    let next_token =
        (page.items.len() == limit && (next as u64) < page.total).then(|| encode_token(next, &fingerprint));
    let mut response =
        Json(json!({"items": page.items, "total": page.total, "nextToken": next_token})).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    Ok(response)
}

/// Ties a page token to the query that made it, so a token is not replayed against another query.
fn page_fingerprint(filters: &[Filter], sort: &Option<(String, SortOrder)>) -> String {
    let mut text: String = filters.iter().map(|f| format!("{}={}&", f.field, f.value)).collect();
    if let Some((field, order)) = sort {
        text.push_str(&format!("sort={field}:{order:?}"));
    }
    format!(
        "{:x}",
        text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
    )
}

fn encode_token(offset: usize, fingerprint: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({"o": offset, "q": fingerprint}).to_string())
}

fn decode_token(token: &str, fingerprint: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    (value.get("q")?.as_str()? == fingerprint).then_some(())?;
    // An offset the stores cannot take (they count in signed 64 bits) is no token of theirs.
    value.get("o")?.as_u64().filter(|o| *o <= crate::extract::MAX_QUERY_INTEGER).map(|o| o as usize)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TemporalParams {
    as_of: Option<String>,
    min_position: Option<u64>,
    timeout_ms: Option<u64>,
}

/// `GET /api/queries/temporal/{aggregateId}?asOf=`: the aggregate as its read model showed it at
/// `asOf`, rebuilt from the events at or before then (at most `temporal-max-days` back).
pub(crate) async fn temporal(
    State(state): State<AppState>,
    Path(aggregate_id): Path<String>,
    QueryParams(params): QueryParams<TemporalParams>,
) -> Result<Json<Value>, ApiError> {
    use chrono::{DateTime, Utc};
    let as_of = match params.as_of.as_deref().map(DateTime::parse_from_rfc3339) {
        None => return Err(ApiError::field("asOf", "is required (an ISO 8601 timestamp)")),
        Some(Err(e)) => return Err(ApiError::field("asOf", format!("must be an ISO 8601 timestamp: {e}"))),
        Some(Ok(at)) => at.with_timezone(&Utc),
    };
    let max_days = state.config.limits.temporal_max_days;
    if as_of < Utc::now() - chrono::Duration::days(max_days as i64) {
        return Err(ApiError::TimeRangeExceeded { max_days });
    }
    let as_of_text = nexus_core::format_timestamp(as_of);
    // A temporal view reads the event store itself: it has applied position N once the store's
    // head has reached it.
    if let Some(wanted) = params.min_position {
        let timeout_ms = wait_budget(&state, params.timeout_ms)?;
        let head =
            state.events.wait_past(wanted.saturating_sub(1), Duration::from_millis(timeout_ms)).await?;
        if head < wanted {
            let resource = "temporal".to_owned();
            return Err(ApiError::PositionTimeout { resource, wanted, current: head, timeout_ms });
        }
    }
    // The first event tells which read model (or aggregate) this is.
    let first = state.events.read_stream(&aggregate_id, 1, Some(1)).await?;
    let Some(first) = first.into_iter().next().filter(|e| e.timestamp <= as_of_text) else {
        return Err(ApiError::NotFound(format!(
            "aggregate '{aggregate_id}' has no events at or before {as_of_text}"
        )));
    };
    let (view, version) = match state.domain.projections().iter().find(|p| p.handles(&first.event_type)) {
        // The read model's own fold, from its latest snapshot taken by then.
        Some(projection) => {
            let key = nexus_runtime::ProjectionRunner::snapshot_key(projection.name(), &aggregate_id);
            let snapshot = state.snapshots.latest_at_or_before(&key, &as_of_text).await?;
            let mut doc = match snapshot.and_then(|s| serde_json::from_value::<ReadDocument>(s.state).ok()) {
                Some(doc) => doc,
                None => ReadDocument::empty(&aggregate_id, &aggregate_id),
            };
            for event in &events_until(&state, &aggregate_id, doc.version + 1, &as_of_text).await? {
                if projection.handles(&event.event_type) {
                    projection.apply(&mut doc, event).map_err(|e| ApiError::Internal(e.to_string()))?;
                }
                doc.version = event.aggregate_version;
                doc.last_updated = event.timestamp.clone();
            }
            let version = doc.version;
            (serde_json::to_value(doc).map_err(|e| ApiError::Internal(e.to_string()))?, version)
        }
        // No read model: the aggregate's own state, in its snapshot form, from its latest
        // snapshot taken by then (taken after its version's event, so true at `asOf`).
        None => {
            let handler = state
                .domain
                .aggregate_of_event(&first.event_type)
                .ok_or_else(|| ApiError::NotFound(format!("no aggregate emits {}", first.event_type)))?;
            let snapshot = state.snapshots.latest_at_or_before(&aggregate_id, &as_of_text).await?;
            let restored = snapshot
                .filter(|s| {
                    s.schema_version == handler.snapshot_version() && s.aggregate_type == handler.kind()
                })
                .and_then(|s| Some((s.version, handler.restore(s.state)?)));
            let (mut version, mut aggregate) = restored.unwrap_or_else(|| (0, handler.initial_state()));
            for event in &events_until(&state, &aggregate_id, version + 1, &as_of_text).await? {
                handler.apply(&mut aggregate, event).map_err(ApiError::Internal)?;
                version = event.aggregate_version;
            }
            (handler.snapshot(&aggregate).unwrap_or(Value::Null), version)
        }
    };
    Ok(Json(json!({"aggregateId": aggregate_id, "version": version, "asOf": as_of_text, "state": view})))
}

/// Parameters of a search that are not field filters.
const SEARCH_RESERVED: [&str; 4] = ["q", "facets", "limit", "nextToken"];

/// `GET /api/queries/{resourceType}/search?q=&facets=status,tags&<field>=<value>&limit=&nextToken=`:
/// ranked full-text search over `searchableText`, with filters and facet counts.
pub(crate) async fn search(
    State(state): State<AppState>,
    Path(resource): Path<String>,
    QueryParams(mut params): QueryParams<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    known_resource(&state, &resource)?;
    if let (Some(position), timeout_ms) = take_wait(&mut params)? {
        wait_for_position(&state, &resource, position, wait_budget(&state, timeout_ms)?).await?;
    }
    let started = std::time::Instant::now();
    let limits = &state.config.limits;
    let mut errors = Vec::new();
    let limit = page_size(&params, limits, &mut errors);
    let text = params.get("q").cloned().unwrap_or_default();
    let facets: Vec<String> = params
        .get("facets")
        .map(|f| f.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    for facet in facets.iter().filter(|facet| !is_field_name(facet)) {
        errors.push(FieldError::new("facets", format!("'{facet}' is not a field name ({FIELD_NAME_RULE})")));
    }
    let filters = field_filters(&params, &SEARCH_RESERVED, &mut errors);
    let fingerprint = page_fingerprint(&filters, &Some((format!("q={text}"), SortOrder::Asc)));
    let offset = match params.get("nextToken") {
        None => 0,
        Some(token) => decode_token(token, &fingerprint).unwrap_or_else(|| {
            errors.push(FieldError::new("nextToken", "is not a token this search returned"));
            0
        }),
    };
    if !errors.is_empty() {
        return Err(ApiError::fields(errors));
    }
    let query = nexus_core::SearchQuery { text, filters, facets, limit, offset };
    let found = state.read.search(&resource, &query).await?;
    let next = offset + found.items.len();
    let next_token =
        (found.items.len() == limit && (next as u64) < found.total).then(|| encode_token(next, &fingerprint));
    Ok(Json(json!({
        "results": found.items,
        "total": found.total,
        "facets": found.facets,
        "nextToken": next_token,
        "took": started.elapsed().as_millis() as u64,
    })))
}

/// The aggregate's events from `from` on, up to the last one stamped at or before `as_of`, read in
/// chunks so a query far in the past does not read the whole stream.
async fn events_until(
    state: &AppState,
    aggregate_id: &str,
    mut from: u64,
    as_of: &str,
) -> Result<Vec<nexus_core::DomainEvent>, ApiError> {
    const CHUNK: u64 = 500;
    let mut found = Vec::new();
    loop {
        let chunk = state.events.read_stream(aggregate_id, from, Some(from + CHUNK - 1)).await?;
        let full = chunk.len() as u64 == CHUNK;
        for event in chunk {
            if event.timestamp.as_str() > as_of {
                return Ok(found);
            }
            from = event.aggregate_version + 1;
            found.push(event);
        }
        if !full {
            return Ok(found);
        }
    }
}
