//! The Nexus server: the contract's HTTP and WebSocket API over the runtime, and the wiring of
//! configured backends into trait objects.
//!
//! [`run`] takes its listener and shutdown signal from the caller (as mini-redis does), so tests
//! start real servers on port 0 and the binary stays thin.
//!
//! Architecture invariant: this is the only crate that knows both HTTP and which backend is in
//! use; everything below it sees `Arc<dyn EventStore>` and `Arc<dyn ReadStore>`. `ApiError` alone
//! maps failures to statuses and contract codes.

mod auth;
mod client_addr;
pub mod config;
mod error;
mod extract;
mod graph;
mod listener;
mod rate_limit;
mod routes;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
mod webhooks;
mod ws;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use nexus_core::{Domain, EventStore, ReadStore, SchemaStore, SnapshotStore, StoreError};
use nexus_registry::Registry;
use nexus_runtime::{
    CommandBus, Notifier, ProcessManagerRunner, ProjectionRunner, ProjectionStatus, SagaCoordinator,
    SagaSettings, SnapshotPolicy, Upcasting,
};
use nexus_sqlite::{SqliteEventStore, SqliteReadStore};

use crate::config::{Role, StoreBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError, Overrides};
pub use error::ApiError;
pub use graph::{PolicyViolations, check_policies, service_graph};
pub use webhooks::signature as webhook_signature;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open a backend (event store, read store, stream or queue): {0}")]
    Store(#[from] StoreError),
    #[error("auth: {0}")]
    Auth(String),
    #[error("the domain is invalid: {0}")]
    Domain(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyViolations),
    #[error("schema registry: {0}")]
    Schema(String),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(
        "{0} is configured, but this build leaves it out: build the server crate with its `{1}` \
         feature (the stock `nexus` binary has it)"
    )]
    NotBuiltIn(&'static str, &'static str),
}

/// Shared state of the request handlers.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) domain: Arc<Domain>,
    pub(crate) bus: Arc<CommandBus>,
    pub(crate) sagas: SagaCoordinator,
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) read: Arc<dyn ReadStore>,
    pub(crate) notifier: Notifier,
    pub(crate) projections: Vec<(&'static str, Arc<ProjectionStatus>)>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) rate_limits: rate_limit::RateLimits,
    pub(crate) registry: Arc<Registry>,
    pub(crate) snapshots: Arc<dyn SnapshotStore>,
    pub(crate) subscriptions: Arc<ws::Subscriptions>,
    /// The queue path (webhooks, dead-letter queue).
    pub(crate) queue: Arc<dyn nexus_core::EventQueue>,
    /// The core path, when NATS carries it (readiness asks it).
    pub(crate) stream: Option<Arc<dyn nexus_core::EventStream>>,
    pub(crate) webhooks: Arc<webhooks::Webhooks>,
    /// Checks credentials; `None` when auth is off.
    pub(crate) authenticator: Option<auth::Authenticator>,
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
    // Sagas are served by every server: their event types and the `sagas` read model join the
    // domain before anything (policies, schema registry, projections) looks at it.
    let domain = nexus_runtime::with_sagas(domain);
    if let Some(unknown) = config
        .process_managers
        .keys()
        .find(|name| !domain.process_managers().iter().any(|m| m.name() == *name))
    {
        let known: Vec<_> = domain.process_managers().iter().map(|m| m.name()).collect();
        return Err(ServeError::Domain(format!(
            "[process-managers] names '{unknown}', which the domain does not register (it has: {})",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        )));
    }
    // Born governed: a configuration that breaks an architecture rule never serves a request.
    check_policies(&service_graph(&config, &domain))?;
    // A certificate or key that cannot serve fails the start before the stores open.
    let tls = match &config.tls.listener {
        Some(files) => Some(Arc::new(tls::server_config(&files.cert, &files.key)?)),
        None => None,
    };
    let Backends { events, snapshots, read, schemas, leases, store_id } =
        open_backends(&config, domain.service_name()).await?;
    // What names this service on engines other services share (stream, exchanges, queues).
    let identity = Config::identity(domain.service_name(), &store_id);
    tracing::info!(service = domain.service_name(), store_id = %store_id, identity = %identity, "store opened");
    let domain = Arc::new(domain);
    let registry = Arc::new(Registry::new(schemas));
    register_shipped_schemas(&registry, &domain).await?;
    // Every read of events, whoever reads, sees them upcast to the current schema versions.
    let events: Arc<dyn EventStore> = Arc::new(Upcasting::new(events, domain.clone()));
    let policy = SnapshotPolicy {
        every_events: config.snapshots.every_events,
        every_bytes: config.snapshots.every_bytes,
    };
    let bus = CommandBus::new(domain.clone(), events.clone(), config.aggregate_cache_capacity)
        .map_err(ServeError::Domain)?
        .with_snapshots(snapshots.clone(), policy)
        .with_event_validator(registry.clone())
        .with_store_retries(
            config.limits.store_retries,
            std::time::Duration::from_millis(config.limits.store_retry_base_ms),
        );
    let notifier = Notifier::new(65_536);
    let (stop, stopped) = watch::channel(false);

    let mut runners = Vec::new();
    let mut projections = Vec::new();
    // Projections belong to the read side. With several query processes each runs them; the
    // version guard and monotonic checkpoints make that idempotent.
    let read_side = if config.role.runs(Role::Query) { domain.projections() } else { &[] };
    for projection in read_side {
        read.index_fields(projection.name(), projection.list_fields()).await?;
    }
    // With NATS configured, the core path feeds the projections (and the router feeds NATS).
    let stream = open_stream(&config, &identity, &store_id).await?;
    // The queue path: the router feeds it, webhooks and the dead-letter processor consume it,
    // and projections park there the events their code keeps failing on.
    let queue = open_queue(&config, &identity, &store_id).await?;
    let retry_base = std::time::Duration::from_millis(config.queue.retry_base_ms);
    for projection in read_side {
        // Only a projection whose every event type is core can be fed by the core path alone;
        // one that also reads queue-path events keeps tailing the change feed. So does one whose
        // documents are keyed by its own ids: fed by many aggregates, it needs their events in
        // store order, which partitions do not keep.
        let all_core = domain
            .events()
            .filter(|spec| projection.handles(spec.name))
            .all(|spec| config.routing.is_core(&domain, spec.name));
        let per_aggregate = projection.keying() == nexus_core::Keying::Aggregate;
        if let Some(stream) = stream.as_ref().filter(|_| all_core && per_aggregate) {
            tracing::info!(projection = projection.name(), "projection fed by the core path (NATS)");
            let runner = nexus_runtime::StreamProjectionRunner::new(
                projection.clone(),
                stream.clone(),
                events.clone(),
                read.clone(),
                notifier.clone(),
                config.projection_batch_size,
            )
            .with_snapshots(snapshots.clone(), config.snapshots.every_events)
            .with_dead_letters(queue.clone(), retry_base);
            projections.push((projection.name(), runner.status()));
            runners.push(tokio::spawn(runner.run(stopped.clone())));
            continue;
        }
        let runner = ProjectionRunner::new(
            projection.clone(),
            events.clone(),
            read.clone(),
            notifier.clone(),
            config.projection_batch_size,
        )
        .with_commit_interval(config.projection_commit_interval())
        .with_snapshots(snapshots.clone(), config.snapshots.every_events)
        .with_dead_letters(queue.clone(), retry_base);
        projections.push((projection.name(), runner.status()));
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }

    let bus = Arc::new(bus);
    let sagas = SagaCoordinator::new(
        bus.clone(),
        events.clone(),
        read.clone(),
        domain.clone(),
        saga_settings(&config),
    )
    .map_err(ServeError::Domain)?
    .with_event_validator(registry.clone())
    .with_leases(leases);
    // The write side drives sagas: the coordinator (which also resumes those a crash interrupted)
    // and the process managers the configuration turns on.
    let mut saga_tasks = Vec::new();
    if config.role.runs(Role::Command) {
        for manager in domain.process_managers() {
            if config.runs_process_manager(manager.as_ref()) {
                let runner = ProcessManagerRunner::new(manager.clone(), sagas.clone());
                saga_tasks.push(tokio::spawn(runner.run(stopped.clone())));
            }
        }
        saga_tasks.push(tokio::spawn(sagas.clone().run(stopped.clone())));
    }
    let queue_path =
        domain.events().map(|spec| spec.name).filter(|name| !config.routing.is_core(&domain, name));
    let webhooks = webhooks::Webhooks::new(read.clone(), queue.clone(), queue_path.map(str::to_owned));
    let mut queue_tasks = Vec::new();
    if config.role.runs(Role::Router) {
        let router = nexus_runtime::EventRouter::new(
            events.clone(),
            read.clone(),
            queue.clone(),
            config.routing.core_events(&domain),
            config.projection_batch_size,
        )
        .with_validator(registry.clone())
        .with_queue_interest({
            let webhooks = webhooks.clone();
            move |event_type: &str| webhooks.wants_core(event_type)
        });
        // The core events registered webhooks want are copied to the queue path from the
        // router's first batch on.
        webhooks.load().await?;
        let router = match &stream {
            Some(stream) => router.with_stream(stream.clone()),
            None => router,
        };
        queue_tasks.push(tokio::spawn(router.run(stopped.clone())));
        let delivering = webhooks::Delivering {
            http: webhooks::http_client(
                std::time::Duration::from_millis(config.queue.webhook_timeout_ms),
                config.tls.extra_roots.as_deref(),
            )?,
            retry_base,
            private_targets: webhooks::private_targets_allowed(&config),
        };
        queue_tasks.push(tokio::spawn(webhooks.clone().supervise(delivering, stopped.clone())));
        queue_tasks.push(tokio::spawn(dead_letter_processor(
            queue.clone(),
            config.queue.dlq_process_interval_secs,
            stopped.clone(),
        )));
    }
    let authenticator = match config.auth_enabled() {
        true => Some(auth::Authenticator::new(&config.auth).map_err(ServeError::Auth)?),
        false => None,
    };
    let state = AppState(Arc::new(Inner {
        config: config.clone(),
        domain,
        bus,
        sagas,
        events,
        read,
        notifier,
        projections,
        shutdown: stopped,
        metrics: metrics_handle(),
        rate_limits: rate_limit::RateLimits::new(&config.rate_limits),
        registry,
        snapshots,
        subscriptions: ws::Subscriptions::new(
            config.limits.ws_connections_per_client,
            config.limits.ws_notifications_per_second,
        ),
        queue,
        stream,
        webhooks,
        authenticator,
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
                // Lag in events, for alerting on a stalled projection (no events applied while
                // the store moves on), which a latency histogram cannot show.
                if let Ok(head) = upkeep_state.events.head().await {
                    for (name, status) in &upkeep_state.projections {
                        if let Ok(lag) = status.lag(name, head).await {
                            metrics::gauge!("nexus_projection_lag_events", "projection" => *name)
                                .set(lag as f64);
                        }
                    }
                }
                upkeep_state.rate_limits.retain_recent();
                upkeep_state.subscriptions.retain_recent();
            }
        }
    });
    let app = router(state);
    tracing::info!(addr = %listener.local_addr()?, role = ?config.role, tls = tls.is_some(), auth = config.auth_enabled(), store = %describe(&config.store, &config.data_dir), "nexus serving");
    // Header-read and idle timeouts, a cap on open connections, TCP_NODELAY, the peer's address
    // for per-client limits, WebSocket upgrades, graceful shutdown: see `listener`.
    listener::serve(listener, app, listener::Settings::from_limits(&config.limits), tls, shutdown).await;
    tracing::info!("shutting down: stopping projections");
    let _ = stop.send(true);
    for task in saga_tasks {
        let _ = task.await;
    }
    for task in queue_tasks {
        let _ = task.await;
    }
    for runner in runners {
        let _ = runner.await;
    }
    // Awaited after the abort, so their handles on the stores are gone when this returns: the
    // last one to go closes the stores (the embedded ones empty their logs then).
    upkeep.abort();
    let _ = upkeep.await;
    if let Some(sweep) = sweep {
        sweep.abort();
        let _ = sweep.await;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

fn saga_settings(config: &Config) -> SagaSettings {
    let sagas = &config.sagas;
    SagaSettings {
        default_step_timeout: std::time::Duration::from_millis(sagas.step_timeout_ms),
        retry_base: std::time::Duration::from_millis(sagas.retry_base_ms),
        step_attempts: sagas.step_attempts,
        compensation_attempts: sagas.compensation_attempts,
        step_delay: std::time::Duration::from_millis(sagas.step_delay_ms),
        batch_size: config.projection_batch_size,
        lease_poll: std::time::Duration::from_secs(1),
    }
}

struct Backends {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    read: Arc<dyn ReadStore>,
    schemas: Arc<dyn SchemaStore>,
    /// One saga driver across processes; in memory for the embedded store, which is one process.
    leases: Arc<dyn nexus_core::Leases>,
    /// The event store's identity, drawn when it was created.
    store_id: String,
}

/// Subject under which a command type's payload schema is registered.
pub fn command_subject(command_type: &str) -> String {
    format!("commands.{command_type}")
}

/// Registers every schema the domain ships (seed: "born governed"): each event type's versions
/// in order (historical ones from the upcasters, then the current one) and each command's payload
/// schema. Start-up fails when the registry holds something a shipped schema contradicts.
async fn register_shipped_schemas(registry: &Registry, domain: &Domain) -> Result<(), ServeError> {
    let fail = |what: String, error: nexus_registry::RegistryError| {
        ServeError::Schema(format!(
            "{what}: {error}. Fix the shipped schema or the registry's subject before starting"
        ))
    };
    let mut upcasters: Vec<_> = domain.upcasters().collect();
    upcasters.sort_by_key(|u| (u.event_type, u.from_version));
    for upcaster in upcasters {
        // An upcaster exists because the change was breaking: the subject's level must let the
        // new version in. An operator's explicit setting is left alone.
        if let Err(nexus_registry::RegistryError::SubjectConfigNotFound(_)) =
            registry.compatibility(Some(upcaster.event_type)).await
        {
            registry
                .set_compatibility(Some(upcaster.event_type), "NONE")
                .await
                .map_err(|e| fail(format!("setting compatibility of {}", upcaster.event_type), e))?;
        }
        let registered = registry
            .register(upcaster.event_type, upcaster.from_schema, Some("JSON"))
            .await
            .map_err(|e| fail(format!("{} v{}", upcaster.event_type, upcaster.from_version), e))?;
        check_version(upcaster.event_type, upcaster.from_version, registered.version)?;
    }
    let mut events: Vec<_> = domain.events().collect();
    events.sort_by_key(|spec| spec.name);
    for spec in events {
        let registered = registry
            .register(spec.name, spec.schema, Some("JSON"))
            .await
            .map_err(|e| fail(format!("{} v{}", spec.name, spec.schema_version), e))?;
        check_version(spec.name, spec.schema_version, registered.version)?;
    }
    let mut commands: Vec<_> = domain.commands().collect();
    commands.sort_by_key(|spec| spec.name);
    for spec in commands {
        registry
            .register(&command_subject(spec.name), spec.schema, Some("JSON"))
            .await
            .map_err(|e| fail(format!("command {}", spec.name), e))?;
    }
    Ok(())
}

/// Event metadata names schema versions by number, so registry version N must be schema N.
fn check_version(subject: &str, shipped: u32, registered: u32) -> Result<(), ServeError> {
    if shipped == registered {
        Ok(())
    } else {
        Err(ServeError::Schema(format!(
            "{subject}: the domain ships schema version {shipped}, but the registry holds it as version {registered}; \
             the registry's subject and the shipped schema files disagree"
        )))
    }
}

/// Resolves the configured store into the port trait objects: the only place that knows which
/// backend is in use.
async fn open_backends(config: &Config, service: &str) -> Result<Backends, ServeError> {
    match &config.store {
        StoreBackend::Embedded => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            })?;
            let sqlite = Arc::new(SqliteEventStore::open(&config.data_dir)?);
            let read = Arc::new(SqliteReadStore::open(&config.data_dir)?);
            let schemas = Arc::new(nexus_sqlite::SqliteSchemaStore::open(&config.data_dir)?);
            let leases = Arc::new(nexus_runtime::InProcessLeases::default());
            let store_id = sqlite.store_id().to_owned();
            Ok(Backends { events: sqlite.clone(), snapshots: sqlite, read, schemas, leases, store_id })
        }
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres { url, schema } => {
            let schema = schema.as_deref().unwrap_or(service);
            // Trusted for `sslmode=verify-ca`/`verify-full` unless the URL names `sslrootcert`.
            let roots = tls::trust_roots(config.tls.extra_roots.as_deref())?;
            let backend = nexus_postgres::PostgresBackend::connect_with_roots(url, schema, &roots).await?;
            Ok(Backends {
                store_id: backend.store_id().to_owned(),
                events: backend.event_store(),
                snapshots: backend.snapshot_store(),
                read: backend.read_store(),
                schemas: backend.schema_store(),
                leases: backend.leases(),
            })
        }
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgres { .. } => {
            let _ = service;
            Err(ServeError::NotBuiltIn("PostgreSQL (NEXUS_STORE_URL)", "postgres"))
        }
    }
}

/// The core path's backend: NATS JetStream when `NEXUS_STREAM_URL` is set; `None` when the
/// projections tail the store's change feed (the embedded core path).
async fn open_stream(
    config: &Config,
    identity: &str,
    store_id: &str,
) -> Result<Option<Arc<dyn nexus_core::EventStream>>, ServeError> {
    let Some(url) = &config.stream.url else { return Ok(None) };
    #[cfg(feature = "nats")]
    {
        let name = config.stream_name(identity);
        let roots = tls::trust_roots(config.tls.extra_roots.as_deref())?;
        let partitions = config.stream.partitions;
        let stream = nexus_nats::NatsEventStream::connect_for_store_with_roots(
            url, &name, partitions, store_id, &roots,
        )
        .await?;
        tracing::info!(stream = %name, "core path on NATS JetStream");
        Ok(Some(Arc::new(stream)))
    }
    #[cfg(not(feature = "nats"))]
    {
        let _ = (url, identity, store_id);
        Err(ServeError::NotBuiltIn("NATS JetStream (NEXUS_STREAM_URL)", "nats"))
    }
}

/// The queue path's backend: RabbitMQ when `NEXUS_QUEUE_URL` is set, else embedded (`queue.db`
/// in the data directory).
async fn open_queue(
    config: &Config,
    identity: &str,
    store_id: &str,
) -> Result<Arc<dyn nexus_core::EventQueue>, ServeError> {
    if let Some(url) = &config.queue.url {
        #[cfg(feature = "rabbitmq")]
        {
            let namespace = config.queue_namespace(identity);
            let roots = tls::trust_roots(config.tls.extra_roots.as_deref())?;
            let queue = nexus_rabbitmq::RabbitEventQueue::connect_for_store_with_roots(
                url, &namespace, store_id, &roots,
            )
            .await?;
            tracing::info!(namespace = %namespace, "queue path on RabbitMQ");
            return Ok(Arc::new(queue));
        }
        #[cfg(not(feature = "rabbitmq"))]
        {
            let _ = (url, identity, store_id);
            return Err(ServeError::NotBuiltIn("RabbitMQ (NEXUS_QUEUE_URL)", "rabbitmq"));
        }
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| ServeError::DataDir { path: config.data_dir.display().to_string(), source })?;
    Ok(Arc::new(nexus_sqlite::SqliteEventQueue::open(&config.data_dir)?))
}

/// The seed's DLQ processor, one pass every `interval_secs` (0: never; operators decide), and
/// the DLQ depth gauge.
async fn dead_letter_processor(
    queue: Arc<dyn nexus_core::EventQueue>,
    interval_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let depth_every = std::time::Duration::from_secs(5);
    let process_every = std::time::Duration::from_secs(interval_secs.max(1));
    let mut last_pass = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        if interval_secs > 0 && last_pass.elapsed() >= process_every {
            last_pass = tokio::time::Instant::now();
            match nexus_runtime::process_dead_letters(queue.as_ref(), 1000).await {
                Ok(pass) => tracing::info!(?pass, "dead-letter queue processed"),
                Err(error) => tracing::warn!(%error, "dead-letter processing failed; next pass retries"),
            }
        }
        if let Ok(letters) = queue.dead_letters(100_000).await {
            metrics::gauge!("nexus_dlq_depth").set(letters.len() as f64);
        }
        tokio::select! {
            _ = tokio::time::sleep(depth_every) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn describe(store: &StoreBackend, data_dir: &std::path::Path) -> String {
    match store {
        StoreBackend::Embedded => format!("sqlite in {}", data_dir.display()),
        // Never log credentials: the host part only.
        StoreBackend::Postgres { url, schema } => {
            let host = url.rsplit('@').next().unwrap_or(url);
            format!("postgres {host} schema {}", schema.as_deref().unwrap_or("(the service's name)"))
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
