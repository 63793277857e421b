//! The Nexus server: the contract's HTTP and WebSocket API over the runtime, and the wiring of
//! configured backends into trait objects.
//!
//! [`run`] takes its listener and shutdown signal from the caller (as mini-redis does), so tests
//! start real servers on port 0 and the binary stays thin.
//!
//! Architecture invariant: this is the only crate that knows both HTTP and which backend is in
//! use; everything below it sees `Arc<dyn EventStore>` and `Arc<dyn ReadStore>`. `ApiError` alone
//! maps failures to statuses and contract codes.

pub mod config;
mod error;
mod extract;
mod graph;
mod rate_limit;
mod routes;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nexus_core::{Domain, EventStore, ReadStore, SnapshotStore, StoreError};
use nexus_runtime::{CommandBus, Notifier, ProjectionRunner, ProjectionStatus, SnapshotPolicy};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};

use crate::config::{Role, StoreBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError, Overrides};
pub use error::ApiError;
pub use graph::{PolicyViolations, check_policies, service_graph};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("the domain is invalid: {0}")]
    Domain(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyViolations),
}

/// Shared state of the request handlers.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) domain: Arc<Domain>,
    pub(crate) bus: CommandBus,
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) read: Arc<dyn ReadStore>,
    pub(crate) notifier: Notifier,
    pub(crate) projections: Vec<(&'static str, Arc<ProjectionStatus>)>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) rate_limits: rate_limit::RateLimits,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The process-wide Prometheus recorder (the `metrics` facade allows one per process).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then ours only
            // renders what it sees, which is nothing, and that is the embedder's choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves the API on `listener` until `shutdown` resolves, then stops cleanly: in-flight requests
/// finish, projections stop after their current batch (their checkpoints are committed with each
/// batch), the event store writer drains its queue.
pub async fn run(
    config: Config,
    domain: Domain,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Born governed: a configuration that breaks an architecture rule never serves a request.
    check_policies(&service_graph(&config, &domain))?;
    let Backends { events, snapshots, read } = open_backends(&config).await?;
    let domain = Arc::new(domain);
    let policy = SnapshotPolicy {
        every_events: config.snapshots.every_events,
        every_bytes: config.snapshots.every_bytes,
    };
    let bus = CommandBus::new(domain.clone(), events.clone(), config.aggregate_cache_capacity)
        .map_err(ServeError::Domain)?
        .with_snapshots(snapshots, policy);
    let notifier = Notifier::new(65_536);
    let (stop, stopped) = watch::channel(false);

    let mut runners = Vec::new();
    let mut projections = Vec::new();
    // Projections belong to the read side. With several query processes each runs them; the
    // version guard and monotonic checkpoints make that idempotent.
    let read_side = if config.role.runs(Role::Query) { domain.projections() } else { &[] };
    for projection in read_side {
        let runner = ProjectionRunner::new(
            projection.clone(),
            events.clone(),
            read.clone(),
            notifier.clone(),
            config.projection_batch_size,
        );
        projections.push((projection.name(), runner.status()));
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }

    let state = AppState(Arc::new(Inner {
        config: config.clone(),
        domain,
        bus,
        events,
        read,
        notifier,
        projections,
        shutdown: stopped,
        metrics: metrics_handle(),
        rate_limits: rate_limit::RateLimits::new(&config.rate_limits),
    }));
    let sweep = config.role.runs(Role::Command).then(|| tokio::spawn(snapshot_sweep(state.clone())));
    let upkeep = tokio::spawn({
        let handle = state.metrics.clone();
        let upkeep_state = state.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
                upkeep_state.rate_limits.retain_recent();
            }
        }
    });
    let app = router(state);
    tracing::info!(addr = %listener.local_addr()?, role = ?config.role, store = %describe(&config.store, &config.data_dir), "nexus serving");
    // Small writes (202 bodies, WebSocket notifications) must not wait for Nagle's algorithm and
    // the peer's delayed ACK: that alone adds ~40 ms to a notification.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    tracing::info!("shutting down: stopping projections");
    let _ = stop.send(true);
    for runner in runners {
        let _ = runner.await;
    }
    upkeep.abort();
    if let Some(sweep) = sweep {
        sweep.abort();
    }
    served?;
    tracing::info!("stopped cleanly");
    Ok(())
}

struct Backends {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    read: Arc<dyn ReadStore>,
}

/// Resolves the configured store into the port trait objects: the only place that knows which
/// backend is in use.
async fn open_backends(config: &Config) -> Result<Backends, ServeError> {
    match &config.store {
        StoreBackend::Embedded => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            })?;
            let sqlite = Arc::new(SqliteEventStore::open(&config.data_dir)?);
            let read = Arc::new(SqliteReadStore::open(&config.data_dir)?);
            Ok(Backends { events: sqlite.clone(), snapshots: sqlite, read })
        }
        StoreBackend::Postgres { url, schema } => {
            let backend = nexus_postgres::PostgresBackend::connect(url, schema).await?;
            Ok(Backends {
                events: backend.event_store(),
                snapshots: backend.snapshot_store(),
                read: backend.read_store(),
            })
        }
    }
}

fn describe(store: &StoreBackend, data_dir: &std::path::Path) -> String {
    match store {
        StoreBackend::Embedded => format!("sqlite in {}", data_dir.display()),
        // Never log credentials: the host part only.
        StoreBackend::Postgres { url, schema } => {
            let host = url.rsplit('@').next().unwrap_or(url);
            format!("postgres {host} schema {schema}")
        }
    }
}

/// The seed's time-based snapshot trigger, run periodically.
async fn snapshot_sweep(state: AppState) {
    let config = &state.config.snapshots;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(config.sweep_interval_secs));
    tick.tick().await; // the first tick is immediate; start one interval in
    loop {
        tick.tick().await;
        let max_age = std::time::Duration::from_secs(config.max_age_secs);
        match state.bus.snapshot_stale(max_age, config.sweep_min_events).await {
            Ok(taken) => tracing::info!(taken, "snapshot sweep done"),
            Err(error) => tracing::warn!(%error, "snapshot sweep failed; next sweep retries"),
        }
    }
}

fn router(state: AppState) -> Router {
    routes::router(state)
}
