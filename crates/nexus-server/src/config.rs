//! Configuration: one validated struct, built once from defaults, the TOML file, then flags and
//! environment (which clap has already merged), and passed explicitly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::client_addr::Cidr;

/// Which part of the system a process runs (contract §1: `nexus serve --role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in one process: the embedded default.
    All,
    /// The write side: commands (and the snapshot sweep).
    Command,
    /// The read side: projections, queries, subscriptions, the event audit API.
    Query,
    /// Event routing to the message buses; with no bus configured, consumers tail the store's
    /// change feed themselves and this role only reports health.
    Router,
}

impl Role {
    pub fn runs(self, part: Role) -> bool {
        self == Role::All || self == part
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Role::All),
            "command" => Ok(Role::Command),
            "query" => Ok(Role::Query),
            "router" => Ok(Role::Router),
            other => Err(format!("unknown role '{other}' (use command, query, router or all)")),
        }
    }
}

/// Where events, snapshots and read models live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// SQLite files in the data directory.
    Embedded,
    /// PostgreSQL at `url`, in `schema` (created when missing; default: the service's name).
    Postgres { url: String, schema: Option<String> },
}

/// Everything `nexus serve` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub role: Role,
    pub store: StoreBackend,
    pub limits: Limits,
    /// Events a projection reads and commits per transaction.
    pub projection_batch_size: usize,
    /// Least time between two commits of a projection that keeps up (milliseconds); unset: the
    /// store's default, see [`Config::projection_commit_interval`].
    pub projection_commit_interval_ms: Option<u64>,
    /// Aggregates whose state the command path keeps in memory.
    pub aggregate_cache_capacity: usize,
    pub snapshots: Snapshots,
    pub rate_limits: RateLimitConfig,
    pub sagas: Sagas,
    pub routing: Routing,
    /// `[process-managers]`: per process manager name, whether it runs; one not named runs
    /// unless it declares itself off by default ([`ProcessManager::runs_by_default`]).
    ///
    /// [`ProcessManager::runs_by_default`]: nexus_core::ProcessManager::runs_by_default
    pub process_managers: std::collections::BTreeMap<String, bool>,
    pub queue: QueueSettings,
    pub webhooks: WebhookSettings,
    pub stream: StreamSettings,
    pub auth: AuthSettings,
    pub tls: TlsSettings,
    pub server: ServerSettings,
}

/// `[server]`: how the server sees its clients.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Reverse proxies whose `X-Forwarded-For` is believed (`[server] trusted-proxies`, default
    /// none): from them, the client is the right-most address there that is not one of them (for
    /// rate limits, the bad-credential throttle and logs).
    pub trusted_proxies: Vec<Cidr>,
}

/// TLS: the listener's certificate and key, and the extra trust roots of outgoing HTTPS.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// `--tls-cert`/`NEXUS_TLS_CERT` and `--tls-key`/`NEXUS_TLS_KEY` (or `[tls] cert` and `key`):
    /// the listener serves HTTPS (and WSS) only. Both or neither.
    pub listener: Option<TlsFiles>,
    /// `SSL_CERT_FILE`: a PEM bundle trusted besides the platform's roots by every outgoing TLS
    /// connection (webhook deliveries, PostgreSQL, NATS, RabbitMQ).
    pub extra_roots: Option<PathBuf>,
}

/// The listener's certificate chain and private key, PEM files read at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether requests must carry a credential (contract §10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// Off when listening on loopback only, required otherwise.
    #[default]
    Auto,
    On,
    /// Off wherever it listens: for a server behind a gateway that authenticates.
    Off,
}

/// Credentials the server accepts: bearer JWTs (HS256 and/or RS256) and API keys.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// HS256 shared secret (`[auth] jwt-hs256-secret` or `NEXUS_JWT_SECRET`), at least 32 bytes.
    pub jwt_hs256_secret: Option<String>,
    /// RS256 public key, PEM (read from `[auth] jwt-rs256-public-key-file`).
    pub jwt_rs256_public_key: Option<String>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    pub api_keys: Vec<ApiKey>,
    /// Credentials that do not verify a peer address may send per minute before its credentials
    /// are refused with 429 for the rest of the minute (`[auth] failures-per-minute`, default
    /// 20); 0 turns the throttle off.
    pub failures_per_minute: u32,
}

/// An API key, sent as `X-API-Key`. The configuration holds its SHA-256, never the key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiKey {
    /// Who the key belongs to: the client for rate limits and logs.
    pub subject: String,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub key_sha256: String,
    /// Any of `commands`, `queries`, `admin`.
    pub scopes: Vec<String>,
}

/// The ordered core path (`NEXUS_STREAM_URL=nats://…`). Unset: the projections tail the store's
/// change feed, which is the core path of the embedded server.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub url: Option<String>,
    /// The JetStream stream's name (`[stream] name`). Default: the service's identity (see
    /// [`Config::identity`]), so two deployments never share one.
    pub name: Option<String>,
    /// Partitions of the stream: readers of one projection run one per partition (default 4).
    pub partitions: u32,
}

/// The event router's classification (seed §3, dual-path router).
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// When set, exactly these event types take the ordered core path and every other type the
    /// queue path, whatever the domain declares. Unset (the default): the domain's declaration
    /// (every type is core unless the domain sends it to the queue path, see
    /// [`Domain::queue_path`](nexus_core::Domain::queue_path)).
    pub core_events: Option<Vec<String>>,
}

impl Routing {
    /// Whether `event_type` takes the ordered core path in `domain`.
    pub fn is_core(&self, domain: &nexus_core::Domain, event_type: &str) -> bool {
        match &self.core_events {
            Some(core) => core.iter().any(|t| t == event_type),
            None => domain.is_core(event_type),
        }
    }

    /// The event types of `domain` on the ordered core path.
    pub fn core_events(&self, domain: &nexus_core::Domain) -> Vec<String> {
        match &self.core_events {
            Some(core) => core.clone(),
            None => domain.core_events().into_iter().map(str::to_owned).collect(),
        }
    }
}

/// The queue path: retries, the dead-letter processor, webhook deliveries.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// The first redelivery delay, doubled after each failed delivery up to 5 minutes
    /// (`NEXUS_RETRY_BASE_MS`, contract §9: 1000).
    pub retry_base_ms: u64,
    /// How often the dead-letter processor retries transient failures and archives schema ones;
    /// 0 turns it off (an operator decides every dead letter).
    pub dlq_process_interval_secs: u64,
    /// How long a webhook endpoint may take to answer before the delivery counts as failed.
    pub webhook_timeout_ms: u64,
    /// `NEXUS_QUEUE_URL=amqp://…`: RabbitMQ; unset, the embedded queue (`queue.db`).
    pub url: Option<String>,
    /// Prefix of every exchange and queue name on RabbitMQ (`[queue] namespace`). Default: the
    /// service's identity (see [`Config::identity`]), so two deployments never share one.
    pub namespace: Option<String>,
}

/// `[webhooks]`: where webhooks may deliver.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Accept targets that resolve to loopback, private, link-local or other non-public
    /// addresses even when the server listens beyond loopback (`[webhooks]
    /// allow-private-targets`, default false). On a loopback-only server they are always
    /// accepted.
    pub allow_private_targets: bool,
}

/// The saga coordinator (seed §8, Error Handling §4) and the process managers it runs.
#[derive(Clone, Debug)]
pub struct Sagas {
    /// A step's timeout when its definition names none (seed: 30 s).
    pub step_timeout_ms: u64,
    /// First retry delay of a step or compensation; doubled after each failed attempt.
    pub retry_base_ms: u64,
    /// Attempts of a step's command; only timeouts and an unavailable store are retried.
    pub step_attempts: u32,
    /// Attempts of a compensating command before the saga is `FAILED`.
    pub compensation_attempts: u32,
    /// A pause before each saga command and before recording its outcome: for tests and demos
    /// that need to see (or kill the process in) the window between two steps. 0 in production.
    pub step_delay_ms: u64,
}

impl Config {
    /// How long a projection that keeps up waits between steps: `projection-commit-interval-ms`,
    /// else 25 ms on PostgreSQL and 5 ms on the embedded store. On PostgreSQL every read-model
    /// commit waits for a WAL flush beside the appender's, whose flushes the commands wait for:
    /// with 8 clients, 25 ms gave 989 and 1,012 commands/s against 739 and 678 without (lag p50
    /// 21–23 ms against 16). On SQLite the read store does not sync its commits, but with few
    /// clients a projection that steps at once commits one or two events at a time, and those
    /// commits took the cores the commands needed: with 8 clients, over six paired runs, 5 ms
    /// gave 13 % more commands/s on average and 10 % less server CPU per command than none, for
    /// a lag p50 of 6 ms instead of 3–4; with 64 clients batches are large either way and the two
    /// did not differ. (The machine varied by a factor of two between runs, so only the average
    /// of pairs says anything.)
    pub fn projection_commit_interval(&self) -> std::time::Duration {
        let default = match self.store {
            StoreBackend::Postgres { .. } => 25,
            StoreBackend::Embedded => 5,
        };
        std::time::Duration::from_millis(self.projection_commit_interval_ms.unwrap_or(default))
    }

    /// The service's identity on engines several services share: the domain's service name and
    /// the first 8 hex digits of its store's id (`nexus-3f2a9c1b`). Two deployments cannot share
    /// it by accident (each store draws its id when it is created); the default NATS stream name
    /// and RabbitMQ namespace.
    pub fn identity(service: &str, store_id: &str) -> String {
        format!("{service}-{}", &store_id[..store_id.len().min(8)])
    }

    /// The NATS stream: `[stream] name`, or the service's identity.
    pub fn stream_name(&self, identity: &str) -> String {
        self.stream.name.clone().unwrap_or_else(|| identity.to_owned())
    }

    /// The RabbitMQ namespace: `[queue] namespace`, or the service's identity.
    pub fn queue_namespace(&self, identity: &str) -> String {
        self.queue.namespace.clone().unwrap_or_else(|| identity.to_owned())
    }

    /// Whether `manager` runs: `[process-managers]`, else its own default.
    pub fn runs_process_manager(&self, manager: &dyn nexus_core::ProcessManager) -> bool {
        self.process_managers.get(manager.name()).copied().unwrap_or_else(|| manager.runs_by_default())
    }
}

/// Per-client request limits per window (contract §5, per minute); 0 turns one off.
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    pub window_secs: u64,
    pub list_per_window: u32,
    pub search_per_window: u32,
    pub temporal_per_window: u32,
    /// Commands, sagas started and raw imports (0, the default: no limit; the seed sets none).
    pub commands_per_window: u32,
    /// One document, a saga's status, WebSocket upgrades (default: no limit).
    pub reads_per_window: u32,
    /// The schema registry (default: no limit).
    pub registry_per_window: u32,
    /// `/api/admin/*` and `/metrics` (default: no limit).
    pub admin_per_window: u32,
}

/// The seed's snapshot triggers.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// Snapshot when this many events were appended since the last one (seed: 1000).
    pub every_events: u64,
    /// ... or this many payload bytes (seed: 1 MB).
    pub every_bytes: u64,
    /// The time trigger: aggregates whose snapshot is older than this and that changed since
    /// (seed: 24 h) ...
    pub max_age_secs: u64,
    /// ... with at least this many events since, are snapshotted by a sweep ...
    pub sweep_min_events: u64,
    /// ... run this often.
    pub sweep_interval_secs: u64,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body (contract: 1 MiB).
    pub max_body_bytes: usize,
    /// How long `?minVersion=` waits when the request names no `timeoutMs` (contract: 3000).
    pub min_version_timeout_ms: u64,
    /// The longest `timeoutMs` a request may ask for.
    pub max_wait_ms: u64,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// How far back a temporal query may reach (contract: 90 days).
    pub temporal_max_days: u64,
    /// WebSocket connections one client may hold open (contract: 1000).
    pub ws_connections_per_client: u32,
    /// Aggregate ids one WebSocket connection may follow at once (1000); a `subscribe` that would
    /// pass it is refused on the socket.
    pub ws_subscriptions_per_connection: u32,
    /// Largest WebSocket message (and frame) a client may send (64 KiB); a larger one closes the
    /// connection.
    pub ws_max_message_bytes: usize,
    /// Notifications per second pushed to one client over all its connections (contract: 100).
    pub ws_notifications_per_second: u32,
    /// A connection must send a complete request head within this time of being accepted (or of
    /// the first byte of a later request on it); else it is closed (10 s).
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request in flight is closed after this time (75 s).
    pub idle_timeout_ms: u64,
    /// Connections open at once, WebSockets included (10,000); beyond it a new connection takes
    /// the slot of the one waiting longest for a request, or is closed when none waits.
    pub max_connections: usize,
    /// Longest `userId`, `correlationId` and `causationId` a command's metadata (or its
    /// `X-Correlation-Id` header) may carry, in bytes (256); each is copied into every event.
    pub max_metadata_value_bytes: usize,
    /// Tries of a command again after the event store was unavailable, before `503` (3).
    pub store_retries: u32,
    /// The wait before the first of those tries, doubling after each (100 ms).
    pub store_retry_base_ms: u64,
}

/// The TOML file's shape: every key optional, unknown keys refused (a typo must not be silently
/// ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    role: Option<Role>,
    store_url: Option<String>,
    store_schema: Option<String>,
    projection_batch_size: Option<usize>,
    projection_commit_interval_ms: Option<u64>,
    aggregate_cache_capacity: Option<usize>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    snapshots: FileSnapshots,
    #[serde(default)]
    rate_limits: FileRateLimits,
    #[serde(default)]
    sagas: FileSagas,
    #[serde(default)]
    routing: FileRouting,
    #[serde(default)]
    process_managers: std::collections::BTreeMap<String, bool>,
    #[serde(default)]
    queue: FileQueue,
    #[serde(default)]
    webhooks: FileWebhooks,
    #[serde(default)]
    stream: FileStream,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    server: FileServer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileServer {
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileAuth {
    mode: Option<AuthMode>,
    jwt_hs256_secret: Option<String>,
    jwt_rs256_public_key_file: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    failures_per_minute: Option<u32>,
    #[serde(default)]
    api_keys: Vec<ApiKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileStream {
    url: Option<String>,
    name: Option<String>,
    partitions: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRouting {
    core_events: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileQueue {
    retry_base_ms: Option<u64>,
    dlq_process_interval_secs: Option<u64>,
    webhook_timeout_ms: Option<u64>,
    url: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileWebhooks {
    allow_private_targets: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSagas {
    step_timeout_ms: Option<u64>,
    retry_base_ms: Option<u64>,
    step_attempts: Option<u32>,
    compensation_attempts: Option<u32>,
    step_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRateLimits {
    window_secs: Option<u64>,
    list: Option<u32>,
    search: Option<u32>,
    temporal: Option<u32>,
    commands: Option<u32>,
    reads: Option<u32>,
    registry: Option<u32>,
    admin: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSnapshots {
    every_events: Option<u64>,
    every_bytes: Option<u64>,
    max_age_secs: Option<u64>,
    sweep_min_events: Option<u64>,
    sweep_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileLimits {
    max_body_bytes: Option<usize>,
    min_version_timeout_ms: Option<u64>,
    max_wait_ms: Option<u64>,
    default_page_size: Option<usize>,
    max_page_size: Option<usize>,
    temporal_max_days: Option<u64>,
    ws_connections_per_client: Option<u32>,
    ws_subscriptions_per_connection: Option<u32>,
    ws_max_message_bytes: Option<usize>,
    ws_notifications_per_second: Option<u32>,
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_metadata_value_bytes: Option<usize>,
    store_retries: Option<u32>,
    store_retry_base_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub role: Option<Role>,
    pub store_url: Option<String>,
    pub store_schema: Option<String>,
    /// `NEXUS_RETRY_BASE_MS`: the queue path's first redelivery delay.
    pub retry_base_ms: Option<u64>,
    /// `NEXUS_QUEUE_URL`: the queue path on RabbitMQ.
    pub queue_url: Option<String>,
    /// `NEXUS_STREAM_URL`: the core path on NATS JetStream.
    pub stream_url: Option<String>,
    /// `NEXUS_JWT_SECRET`: the HS256 secret, kept out of the config file.
    pub jwt_secret: Option<String>,
    /// `NEXUS_TLS_CERT`/`NEXUS_TLS_KEY`: serve HTTPS with this certificate chain and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `SSL_CERT_FILE`: extra trust roots for webhook deliveries.
    pub ssl_cert_file: Option<PathBuf>,
}

impl Config {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_DATA_DIR: &'static str = "./nexus-data";

    /// Builds the configuration: contract defaults, then `file`, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str::<File>(&text)
                    .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?
            }
            None => File::default(),
        };
        let rs256_key = match &parsed.auth.jwt_rs256_public_key_file {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "cannot read [auth] jwt-rs256-public-key-file {}: {e}",
                    path.display()
                ))
            })?),
        };
        let trusted_proxies = parsed
            .server
            .trusted_proxies
            .iter()
            .map(|text| {
                text.parse::<Cidr>().map_err(|why| {
                    ConfigError::Invalid(format!(
                        "[server] trusted-proxies: '{text}' is not a network in CIDR notation \
                         (10.0.0.0/8, 2001:db8::/32) or an address: {why}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = TlsSettings {
            listener: tls_files(
                overrides.tls_cert.or(parsed.tls.cert).filter(|p| !p.as_os_str().is_empty()),
                overrides.tls_key.or(parsed.tls.key).filter(|p| !p.as_os_str().is_empty()),
            )?,
            extra_roots: overrides.ssl_cert_file.filter(|p| !p.as_os_str().is_empty()),
        };
        let config = Self {
            listen: overrides
                .listen
                .or(parsed.listen)
                .unwrap_or_else(|| Self::DEFAULT_LISTEN.parse().expect("valid default")),
            data_dir: overrides.data_dir.or(parsed.data_dir).unwrap_or_else(|| Self::DEFAULT_DATA_DIR.into()),
            role: overrides.role.or(parsed.role).unwrap_or(Role::All),
            store: match overrides.store_url.or(parsed.store_url).filter(|url| !url.is_empty()) {
                None => StoreBackend::Embedded,
                Some(url) => {
                    StoreBackend::Postgres { url, schema: overrides.store_schema.or(parsed.store_schema) }
                }
            },
            limits: Limits {
                max_body_bytes: parsed.limits.max_body_bytes.unwrap_or(1024 * 1024),
                min_version_timeout_ms: parsed.limits.min_version_timeout_ms.unwrap_or(3000),
                max_wait_ms: parsed.limits.max_wait_ms.unwrap_or(30_000),
                default_page_size: parsed.limits.default_page_size.unwrap_or(50),
                max_page_size: parsed.limits.max_page_size.unwrap_or(1000),
                temporal_max_days: parsed.limits.temporal_max_days.unwrap_or(90),
                ws_connections_per_client: parsed.limits.ws_connections_per_client.unwrap_or(1000),
                ws_subscriptions_per_connection: parsed
                    .limits
                    .ws_subscriptions_per_connection
                    .unwrap_or(1000),
                ws_max_message_bytes: parsed.limits.ws_max_message_bytes.unwrap_or(64 * 1024),
                ws_notifications_per_second: parsed.limits.ws_notifications_per_second.unwrap_or(100),
                header_read_timeout_ms: parsed.limits.header_read_timeout_ms.unwrap_or(10_000),
                idle_timeout_ms: parsed.limits.idle_timeout_ms.unwrap_or(75_000),
                max_connections: parsed.limits.max_connections.unwrap_or(10_000),
                max_metadata_value_bytes: parsed.limits.max_metadata_value_bytes.unwrap_or(256),
                store_retries: parsed.limits.store_retries.unwrap_or(3),
                store_retry_base_ms: parsed.limits.store_retry_base_ms.unwrap_or(100),
            },
            projection_batch_size: parsed.projection_batch_size.unwrap_or(1000),
            projection_commit_interval_ms: parsed.projection_commit_interval_ms,
            aggregate_cache_capacity: parsed.aggregate_cache_capacity.unwrap_or(100_000),
            snapshots: Snapshots {
                every_events: parsed.snapshots.every_events.unwrap_or(1000),
                every_bytes: parsed.snapshots.every_bytes.unwrap_or(1024 * 1024),
                max_age_secs: parsed.snapshots.max_age_secs.unwrap_or(24 * 3600),
                sweep_min_events: parsed.snapshots.sweep_min_events.unwrap_or(100),
                sweep_interval_secs: parsed.snapshots.sweep_interval_secs.unwrap_or(3600),
            },
            rate_limits: RateLimitConfig {
                window_secs: parsed.rate_limits.window_secs.unwrap_or(60),
                list_per_window: parsed.rate_limits.list.unwrap_or(1000),
                search_per_window: parsed.rate_limits.search.unwrap_or(100),
                temporal_per_window: parsed.rate_limits.temporal.unwrap_or(10),
                commands_per_window: parsed.rate_limits.commands.unwrap_or(0),
                reads_per_window: parsed.rate_limits.reads.unwrap_or(0),
                registry_per_window: parsed.rate_limits.registry.unwrap_or(0),
                admin_per_window: parsed.rate_limits.admin.unwrap_or(0),
            },
            sagas: Sagas {
                step_timeout_ms: parsed.sagas.step_timeout_ms.unwrap_or(30_000),
                retry_base_ms: parsed.sagas.retry_base_ms.unwrap_or(500),
                step_attempts: parsed.sagas.step_attempts.unwrap_or(4),
                compensation_attempts: parsed.sagas.compensation_attempts.unwrap_or(6),
                step_delay_ms: parsed.sagas.step_delay_ms.unwrap_or(0),
            },
            routing: Routing { core_events: parsed.routing.core_events },
            process_managers: parsed.process_managers,
            queue: QueueSettings {
                retry_base_ms: overrides.retry_base_ms.or(parsed.queue.retry_base_ms).unwrap_or(1000),
                dlq_process_interval_secs: parsed.queue.dlq_process_interval_secs.unwrap_or(300),
                webhook_timeout_ms: parsed.queue.webhook_timeout_ms.unwrap_or(10_000),
                url: overrides.queue_url.or(parsed.queue.url).filter(|url| !url.is_empty()),
                namespace: parsed.queue.namespace,
            },
            webhooks: WebhookSettings {
                allow_private_targets: parsed.webhooks.allow_private_targets.unwrap_or(false),
            },
            stream: StreamSettings {
                url: overrides.stream_url.or(parsed.stream.url).filter(|url| !url.is_empty()),
                name: parsed.stream.name,
                partitions: parsed.stream.partitions.unwrap_or(4),
            },
            auth: AuthSettings {
                mode: parsed.auth.mode.unwrap_or_default(),
                jwt_hs256_secret: overrides
                    .jwt_secret
                    .or(parsed.auth.jwt_hs256_secret)
                    .filter(|s| !s.is_empty()),
                jwt_rs256_public_key: rs256_key,
                jwt_issuer: parsed.auth.jwt_issuer,
                jwt_audience: parsed.auth.jwt_audience,
                api_keys: parsed.auth.api_keys,
                failures_per_minute: parsed.auth.failures_per_minute.unwrap_or(20),
            },
            tls,
            server: ServerSettings { trusted_proxies },
        };
        config.validate()?;
        Ok(config)
    }

    /// The defaults for a data directory and address, as tests and embedders want them.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let overrides = Overrides { data_dir: Some(data_dir.into()), ..Overrides::default() };
        Self::load(None, overrides).expect("defaults are valid")
    }

    /// Whether requests must carry a credential: `[auth] mode`, and in `auto` whether the server
    /// listens beyond loopback.
    pub fn auth_enabled(&self) -> bool {
        match self.auth.mode {
            AuthMode::On => true,
            AuthMode::Off => false,
            AuthMode::Auto => !self.listen.ip().is_loopback(),
        }
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if let Some(secret) = &auth.jwt_hs256_secret
            && secret.len() < 32
        {
            return Err(ConfigError::Invalid(format!(
                "the HS256 secret has {} bytes; it needs at least 32 (e.g. `openssl rand -hex 32`)",
                secret.len()
            )));
        }
        if let Some(pem) = &auth.jwt_rs256_public_key {
            jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                ConfigError::Invalid(format!(
                    "[auth] jwt-rs256-public-key-file is not an RSA public key in PEM: {e}"
                ))
            })?;
        }
        for key in &auth.api_keys {
            if key.subject.is_empty() {
                return Err(ConfigError::Invalid("an [[auth.api-keys]] entry has an empty subject".into()));
            }
            let hex = key.key_sha256.len() == 64 && key.key_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(ConfigError::Invalid(format!(
                    "API key of '{}': key-sha256 must be 64 hex digits (`printf %s \"$KEY\" | sha256sum`)",
                    key.subject
                )));
            }
            if let Some(scope) =
                key.scopes.iter().find(|s| !["commands", "queries", "admin"].contains(&s.as_str()))
            {
                return Err(ConfigError::Invalid(format!(
                    "API key of '{}': unknown scope '{scope}' (commands, queries, admin)",
                    key.subject
                )));
            }
        }
        let has_credentials = auth.jwt_hs256_secret.is_some()
            || auth.jwt_rs256_public_key.is_some()
            || !auth.api_keys.is_empty();
        if self.auth_enabled() && !has_credentials {
            let why = match auth.mode {
                AuthMode::On => "[auth] mode = \"on\"".to_owned(),
                _ => format!("the server listens on {}, beyond loopback", self.listen),
            };
            return Err(ConfigError::Invalid(format!(
                "auth is required ({why}) but no credential is configured: set NEXUS_JWT_SECRET or [auth] \
                 jwt-hs256-secret / jwt-rs256-public-key-file, or add [[auth.api-keys]]; or listen on \
                 127.0.0.1, or set [auth] mode = \"off\" behind a gateway that authenticates"
            )));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_auth()?;
        let limits = &self.limits;
        if let StoreBackend::Postgres { url, schema } = &self.store {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(format!(
                    "store URL must start with postgres:// (got '{url}'); leave it unset for the embedded store"
                )));
            }
            if let Some(schema) = schema {
                let valid =
                    !schema.is_empty() && schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(ConfigError::Invalid(format!(
                        "store schema '{schema}' must be [A-Za-z0-9_]+"
                    )));
                }
            }
        }
        if let Some(url) = &self.queue.url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            return Err(ConfigError::Invalid(format!(
                "queue URL must start with amqp:// or amqps:// (got '{url}'); leave it unset for the embedded queue"
            )));
        }
        if let Some(url) = &self.stream.url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return Err(ConfigError::Invalid(format!(
                "stream URL must start with nats:// or tls:// (got '{url}'); leave it unset for the embedded core path"
            )));
        }
        if let Some(name) = &self.stream.name
            && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
        {
            return Err(ConfigError::Invalid(format!("stream.name '{name}' must be [A-Za-z0-9_-]+")));
        }
        if !(1..=256).contains(&self.stream.partitions) {
            return Err(ConfigError::Invalid("stream.partitions must be from 1 to 256".into()));
        }
        if let Some(namespace) = &self.queue.namespace
            && (namespace.is_empty()
                || !namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ConfigError::Invalid(format!(
                "queue.namespace '{namespace}' must be [A-Za-z0-9._-]+"
            )));
        }
        let checks = [
            (limits.max_body_bytes >= 1024, "limits.max-body-bytes must be at least 1024"),
            (limits.default_page_size >= 1, "limits.default-page-size must be at least 1"),
            (
                limits.default_page_size <= limits.max_page_size,
                "limits.default-page-size must not exceed limits.max-page-size",
            ),
            (
                limits.min_version_timeout_ms <= limits.max_wait_ms,
                "limits.min-version-timeout-ms must not exceed limits.max-wait-ms",
            ),
            (
                limits.ws_subscriptions_per_connection >= 1,
                "limits.ws-subscriptions-per-connection must be at least 1",
            ),
            (
                (1024..=16 * 1024 * 1024).contains(&limits.ws_max_message_bytes),
                "limits.ws-max-message-bytes must be from 1024 to 16777216",
            ),
            (
                (100..=3_600_000).contains(&limits.header_read_timeout_ms),
                "limits.header-read-timeout-ms must be from 100 to 3600000",
            ),
            (
                (100..=3_600_000).contains(&limits.idle_timeout_ms),
                "limits.idle-timeout-ms must be from 100 to 3600000",
            ),
            (limits.max_connections >= 1, "limits.max-connections must be at least 1"),
            (
                (36..=65_536).contains(&limits.max_metadata_value_bytes),
                "limits.max-metadata-value-bytes must be from 36 (a UUID) to 65536",
            ),
            (limits.store_retries <= 10, "limits.store-retries must be at most 10"),
            (
                (1..=10_000).contains(&limits.store_retry_base_ms),
                "limits.store-retry-base-ms must be from 1 to 10000",
            ),
            (self.projection_batch_size >= 1, "projection-batch-size must be at least 1"),
            (
                self.projection_commit_interval_ms.is_none_or(|ms| ms <= 10_000),
                "projection-commit-interval-ms must be from 0 to 10000",
            ),
            (self.aggregate_cache_capacity >= 1, "aggregate-cache-capacity must be at least 1"),
            (self.rate_limits.window_secs >= 1, "rate-limits.window-secs must be at least 1"),
            (self.snapshots.every_events >= 1, "snapshots.every-events must be at least 1"),
            (self.snapshots.every_bytes >= 1, "snapshots.every-bytes must be at least 1"),
            (self.snapshots.sweep_interval_secs >= 1, "snapshots.sweep-interval-secs must be at least 1"),
            (
                (1..=3_600_000).contains(&self.sagas.step_timeout_ms),
                "sagas.step-timeout-ms must be from 1 to 3600000",
            ),
            (self.sagas.retry_base_ms <= 60_000, "sagas.retry-base-ms must be at most 60000"),
            (
                (1..=300_000).contains(&self.queue.retry_base_ms),
                "queue.retry-base-ms (NEXUS_RETRY_BASE_MS) must be from 1 to 300000",
            ),
            (
                (1..=300_000).contains(&self.queue.webhook_timeout_ms),
                "queue.webhook-timeout-ms must be from 1 to 300000",
            ),
            ((1..=20).contains(&self.sagas.step_attempts), "sagas.step-attempts must be from 1 to 20"),
            (
                (1..=20).contains(&self.sagas.compensation_attempts),
                "sagas.compensation-attempts must be from 1 to 20",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(ConfigError::Invalid((*message).to_owned())),
            None => Ok(()),
        }
    }
}

/// The listener's certificate and key: both, or neither (plain HTTP). The files are read when
/// the server starts, which names the one it cannot use.
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(cert), None) => Err(ConfigError::Invalid(format!(
            "a TLS certificate ({}) is given without its key: set --tls-key / NEXUS_TLS_KEY \
             (or [tls] key) too, or neither to serve plain HTTP",
            cert.display()
        ))),
        (None, Some(key)) => Err(ConfigError::Invalid(format!(
            "a TLS key ({}) is given without its certificate: set --tls-cert / NEXUS_TLS_CERT \
             (or [tls] cert) too, or neither to serve plain HTTP",
            key.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[limits]\nmax-body-bytes = 2048\n").unwrap();
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.max_body_bytes, 2048);
        let overrides = Overrides { listen: Some("127.0.0.1:9001".parse().unwrap()), ..Overrides::default() };
        assert_eq!(Config::load(Some(&path), overrides).unwrap().listen.port(), 9001);
    }

    #[test]
    fn saga_settings_have_defaults_and_read_from_the_file() {
        let defaults = Config::embedded("/tmp/unused");
        assert_eq!(defaults.sagas.step_timeout_ms, 30_000);
        assert!(defaults.process_managers.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        let text = "[sagas]\nstep-timeout-ms = 50\nretry-base-ms = 1\n[process-managers]\nbilling = false\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(config.process_managers.get("billing"), Some(&false));
        assert_eq!((config.sagas.step_timeout_ms, config.sagas.retry_base_ms), (50, 1));
        std::fs::write(&path, "[sagas]\nstep-attempts = 0\n").unwrap();
        assert!(matches!(Config::load(Some(&path), Overrides::default()), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn tls_needs_a_certificate_and_its_key() {
        assert_eq!(Config::embedded("/tmp/unused").tls.listener, None);
        let both = Overrides {
            tls_cert: Some("/etc/nexus/cert.pem".into()),
            tls_key: Some("/etc/nexus/key.pem".into()),
            ..Overrides::default()
        };
        let files = Config::load(None, both).unwrap().tls.listener.unwrap();
        assert_eq!(files, TlsFiles { cert: "/etc/nexus/cert.pem".into(), key: "/etc/nexus/key.pem".into() });
        let cert_only = Overrides { tls_cert: Some("/etc/nexus/cert.pem".into()), ..Overrides::default() };
        let Err(ConfigError::Invalid(message)) = Config::load(None, cert_only) else {
            panic!("a certificate without a key was accepted");
        };
        assert!(message.contains("--tls-key") && message.contains("/etc/nexus/cert.pem"), "{message}");
        // The file gives one, a flag the other: they pair up; the flag wins over the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        std::fs::write(&path, "[tls]\ncert = \"/file/cert.pem\"\nkey = \"/file/key.pem\"\n").unwrap();
        let key_flag = Overrides { tls_key: Some("/flag/key.pem".into()), ..Overrides::default() };
        let files = Config::load(Some(&path), key_flag).unwrap().tls.listener.unwrap();
        assert_eq!(files, TlsFiles { cert: "/file/cert.pem".into(), key: "/flag/key.pem".into() });
        std::fs::write(&path, "[tls]\nkey = \"/file/key.pem\"\n").unwrap();
        let key_only = Config::load(Some(&path), Overrides::default());
        assert!(matches!(key_only, Err(ConfigError::Invalid(m)) if m.contains("--tls-cert")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        assert!(matches!(Config::load(Some(&path), Overrides::default()), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, "[limits]\nmax-body-bytes = 10\n").unwrap();
        assert!(matches!(Config::load(Some(&path), Overrides::default()), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn auth_is_off_on_loopback_and_required_beyond_it() {
        let on = |listen: &str| Overrides { listen: Some(listen.parse().unwrap()), ..Overrides::default() };
        let loopback = Config::load(None, on("127.0.0.1:8080")).unwrap();
        assert!(!loopback.auth_enabled());
        // Beyond loopback without any credential: refused, saying what to configure.
        let Err(ConfigError::Invalid(message)) = Config::load(None, on("0.0.0.0:8080")) else {
            panic!("serving 0.0.0.0 without credentials was accepted");
        };
        assert!(message.contains("NEXUS_JWT_SECRET") && message.contains("127.0.0.1"), "{message}");
        let secret = Overrides { jwt_secret: Some("x".repeat(32)), ..on("0.0.0.0:8080") };
        assert!(Config::load(None, secret).unwrap().auth_enabled());
        let short = Overrides { jwt_secret: Some("short".into()), ..on("0.0.0.0:8080") };
        assert!(matches!(Config::load(None, short), Err(ConfigError::Invalid(m)) if m.contains("32")));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        std::fs::write(&path, "[auth]\nmode = \"off\"\n").unwrap();
        assert!(!Config::load(Some(&path), on("0.0.0.0:8080")).unwrap().auth_enabled());
        let key = "a".repeat(64);
        std::fs::write(
            &path,
            format!("[auth]\nmode = \"on\"\n[[auth.api-keys]]\nsubject = \"ci\"\nkey-sha256 = \"{key}\"\nscopes = [\"queries\"]\n"),
        )
        .unwrap();
        assert!(Config::load(Some(&path), Overrides::default()).unwrap().auth_enabled());
        std::fs::write(
            &path,
            format!("[[auth.api-keys]]\nsubject = \"ci\"\nkey-sha256 = \"{key}\"\nscopes = [\"root\"]\n"),
        )
        .unwrap();
        assert!(
            matches!(Config::load(Some(&path), Overrides::default()), Err(ConfigError::Invalid(m)) if m.contains("root"))
        );
        std::fs::write(&path, "[auth]\njwt-rs256-public-key-file = \"/nonexistent.pem\"\n").unwrap();
        assert!(matches!(Config::load(Some(&path), Overrides::default()), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn trusted_proxies_are_networks_and_a_bad_one_is_refused_by_name() {
        assert!(Config::embedded("/tmp/unused").server.trusted_proxies.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nexus.toml");
        std::fs::write(&path, "[server]\ntrusted-proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        let shown: Vec<String> = config.server.trusted_proxies.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
        std::fs::write(&path, "[server]\ntrusted-proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n").unwrap();
        let Err(ConfigError::Invalid(message)) = Config::load(Some(&path), Overrides::default()) else {
            panic!("a /40 IPv4 network was accepted");
        };
        assert!(message.contains("trusted-proxies") && message.contains("'10.0.0.0/40'"), "{message}");
    }
}

#[cfg(test)]
#[path = "config_keys_test.rs"]
mod keys_documented;
