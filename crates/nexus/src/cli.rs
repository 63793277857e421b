//! The command line of a Nexus service: `serve`, `bench`, `graph`, `policy`, `schema`,
//! `projections` and `dlq`, for whichever [`Domain`] the program hands to [`main`]. Argument
//! parsing and wiring only: everything it runs lives in the crates it calls.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nexus_core::Domain;
use nexus_server::{Config, Overrides};

use crate::bench;

#[derive(Parser)]
#[command(version, about = "Event sourcing and CQRS foundation: one binary, embedded or scaled out")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "NEXUS_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    credentials: Credentials,
    #[command(subcommand)]
    command: Command,
}

/// The credential the client subcommands (bench, schema, projections, dlq) send to a server with
/// auth on; taken from the environment, so it stays out of shell history.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Credentials {
    /// Bearer JWT to send (`Authorization: Bearer …`).
    #[arg(long, global = true, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// API key to send (`X-API-Key: …`).
    #[arg(long, global = true, env = "NEXUS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl Credentials {
    /// An HTTP client that sends the credential with every request, and trusts for `https://`
    /// servers the platform's roots plus the PEM bundle in `SSL_CERT_FILE`.
    pub fn client(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("NEXUS_TOKEN is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(key) = &self.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(key)
                .context("NEXUS_API_KEY is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        let builder = reqwest::Client::builder().default_headers(headers);
        Ok(nexus_server::tls::https_client(builder, ssl_cert_file().as_deref())?)
    }

    /// The credential as the `access_token` query parameter of a WebSocket upgrade.
    pub fn access_token(&self) -> Option<&str> {
        self.token.as_deref().or(self.api_key.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (commands, events, queries, subscriptions) with every role in this process.
    Serve(ServeArgs),
    /// Drive a server with load and report throughput, latency percentiles and projection lag.
    Bench(bench::BenchArgs),
    /// Write the service graph (roles, store operations, events, endpoints) the policies judge.
    Graph(GraphArgs),
    /// Run the architecture policies: their unit tests, or a check of facts.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with a running server's schema registry.
    Schema(SchemaArgs),
    /// Manage a running server's projections.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Inspect and resolve a running server's dead-letter queue.
    Dlq(DlqArgs),
}

#[derive(clap::Args)]
struct DlqArgs {
    /// Base URL of the server (its router role).
    #[arg(long, env = "NEXUS_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Every dead letter waiting for a decision.
    List {
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letter ID to its consumer's queue with a fresh delivery count.
    Retry { id: String },
    /// Archive dead letter ID: it stays recorded but is no longer delivered or listed.
    Skip { id: String },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Rebuild NAME from the first event beside the live read model, then swap it in; shows
    /// progress until done.
    Rebuild {
        name: String,
        /// Base URL of the server (its query role).
        #[arg(long, env = "NEXUS_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
    },
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// Base URL of the server.
    #[arg(long, env = "NEXUS_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    #[command(subcommand)]
    command: SchemaCommand,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Every subject with its versions and compatibility level.
    List,
    /// Register FILE (a JSON Schema) as the next version of SUBJECT, if compatible.
    Register { subject: String, file: PathBuf },
    /// Check FILE against SUBJECT without registering it; exit 1 when incompatible.
    Check {
        subject: String,
        file: PathBuf,
        /// The version to check against: a number or `latest` (all versions for transitive levels).
        #[arg(long, default_value = "latest")]
        version: String,
    },
}

#[derive(clap::Args)]
struct GraphArgs {
    /// TOML configuration the graph describes (the same file `nexus serve --config` takes).
    #[arg(long, env = "NEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Where to write the graph.
    #[arg(long, default_value = "build-artifacts/service-graph.json")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the Rego unit tests (`test_` rules) of a policy directory.
    Test {
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Evaluate `data.nexus.architecture.deny` against each fact of a JSON file (an array of
    /// facts, one fact, or a service graph written by `nexus graph`); exit 1 on any violation.
    Check {
        #[arg(long)]
        input: PathBuf,
        /// Policy directory; the policies built into this binary when absent.
        #[arg(long)]
        policies: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "NEXUS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory holding all embedded state [default: ./nexus-data].
    #[arg(long, env = "NEXUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML file for everything else (limits, batch sizes).
    #[arg(long, env = "NEXUS_CONFIG")]
    config: Option<PathBuf>,
    /// Run one role: command, query, router or all [default: all].
    #[arg(long, env = "NEXUS_ROLE")]
    role: Option<nexus_server::config::Role>,
    /// PostgreSQL URL for events, snapshots and read models (postgres://…); embedded SQLite when unset.
    #[arg(long, env = "NEXUS_STORE_URL")]
    store_url: Option<String>,
    /// PostgreSQL schema to use [default: nexus].
    #[arg(long, env = "NEXUS_STORE_SCHEMA")]
    store_schema: Option<String>,
    /// First redelivery delay of the queue path in ms, doubled per failure [default: 1000].
    #[arg(long, env = "NEXUS_RETRY_BASE_MS")]
    retry_base_ms: Option<u64>,
    /// RabbitMQ URL for the queue path (amqp://…); embedded (queue.db in the data dir) when unset.
    #[arg(long, env = "NEXUS_QUEUE_URL")]
    queue_url: Option<String>,
    /// NATS URL for the ordered core path (nats://…); projections tail the store when unset.
    #[arg(long, env = "NEXUS_STREAM_URL")]
    stream_url: Option<String>,
    /// Serve HTTPS (and WSS) only, with this certificate chain (PEM, the server's certificate
    /// first); needs --tls-key.
    #[arg(long, env = "NEXUS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "NEXUS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// `SSL_CERT_FILE`: a PEM bundle trusted for outgoing HTTPS besides the platform's roots.
pub(crate) fn ssl_cert_file() -> Option<PathBuf> {
    std::env::var_os(nexus_server::tls::CERT_FILE_ENV).filter(|path| !path.is_empty()).map(PathBuf::from)
}

/// Threads for blocking work: both SQLite reader pools full (8 each) and as many commits.
const MAX_BLOCKING_THREADS: usize = 32;

/// Runs the command line for `domain`: what a service's `main` calls.
///
/// ```no_run
/// fn main() -> anyhow::Result<()> {
///     nexus::cli::main(nexus_core::Domain::new() /* .aggregate::<Ticket>() ... */)
/// }
/// ```
pub fn main(domain: Domain) -> anyhow::Result<()> {
    // Help and `--version` name the service; usage lines the binary as it was invoked.
    let matches = Cli::command().name(domain.service_name()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    init_logging(cli.log_json);
    // Blocking work (SQLite reads and commits) queues for a few threads instead of starting one
    // per waiting task (tokio's default allows 512): on a few cores more threads add no
    // throughput, and each kept memory of its own (80 threads and 390 MB of heap after 45 s of
    // the bench mix). With the threads bounded, the system allocator serves as many commands as
    // mimalloc did (3,610 and 3,650/s against 3,551 and 4,001/s, order placements alone, one run) and
    // holds half the memory (90 MB against 190 MB after 15 s): mimalloc kept pages per thread
    // and size class. So the binary uses the system allocator.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args, domain)),
        Command::Bench(args) => {
            runtime.block_on(bench::run(args, &cli.credentials, domain)).map_err(explain_tls)
        }
        Command::Graph(args) => graph(args, &domain),
        Command::Schema(args) => runtime.block_on(schema(args, &cli.credentials)).map_err(explain_tls),
        Command::Projections(ProjectionsCommand::Rebuild { name, url }) => {
            runtime.block_on(rebuild(&name, &url, &cli.credentials)).map_err(explain_tls)
        }
        Command::Dlq(args) => runtime.block_on(dlq(args, &cli.credentials)).map_err(explain_tls),
        Command::Policy(PolicyCommand::Test { dir }) => policy_test(&dir),
        Command::Policy(PolicyCommand::Check { input, policies }) => {
            policy_check(&input, policies.as_deref())
        }
    }
}

fn graph(args: GraphArgs, domain: &Domain) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), Overrides::default())?;
    let graph = nexus_server::service_graph(&config, domain);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&graph)? + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "wrote {} ({} roles, {} tables, {} event types, {} endpoints)",
        args.out.display(),
        graph.roles.len(),
        graph.store_operations.len(),
        graph.events.len(),
        graph.endpoints.len()
    );
    Ok(())
}

async fn schema(args: SchemaArgs, credentials: &Credentials) -> anyhow::Result<()> {
    let base = format!("{}/api/schema-registry", args.url.trim_end_matches('/'));
    let client = credentials.client()?.build()?;
    let answer = |response: reqwest::Response| async move {
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(anyhow::anyhow!(
                "{} (error {}, HTTP {status}){}",
                body["message"].as_str().unwrap_or("?"),
                // The registry's own errors carry `error_code`; auth refusals the contract's `code`.
                if body["error_code"].is_null() { &body["code"] } else { &body["error_code"] },
                auth_hint(status)
            ))
        }
    };
    let schema_file = |file: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        Ok(serde_json::json!({"schema": text, "schemaType": "JSON"}))
    };
    let unreachable = || format!("cannot reach the registry at {base} (is `nexus serve` running? see --url)");
    match args.command {
        SchemaCommand::List => {
            let subjects =
                answer(client.get(format!("{base}/subjects")).send().await.with_context(unreachable)?)
                    .await?;
            let global = answer(client.get(format!("{base}/config")).send().await?).await?;
            println!("global compatibility: {}", global["compatibilityLevel"].as_str().unwrap_or("?"));
            for subject in subjects.as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
                let versions =
                    answer(client.get(format!("{base}/subjects/{subject}/versions")).send().await?).await?;
                let level =
                    client.get(format!("{base}/config/{subject}?defaultToGlobal=true")).send().await?;
                let level = answer(level).await?;
                println!(
                    "{subject:<32} versions {:<12} {}",
                    versions.to_string(),
                    level["compatibilityLevel"].as_str().unwrap_or("?")
                );
            }
        }
        SchemaCommand::Register { subject, file } => {
            let body = schema_file(&file)?;
            let response =
                client.post(format!("{base}/subjects/{subject}/versions")).json(&body).send().await;
            let registered = answer(response.with_context(unreachable)?).await?;
            println!("registered {subject} version {} (id {})", registered["version"], registered["id"]);
        }
        SchemaCommand::Check { subject, file, version } => {
            let body = schema_file(&file)?;
            let url = format!("{base}/compatibility/subjects/{subject}/versions/{version}?verbose=true");
            let result = answer(client.post(url).json(&body).send().await.with_context(unreachable)?).await?;
            if result["is_compatible"] == true {
                println!("compatible with {subject} ({version})");
            } else {
                println!("INCOMPATIBLE with {subject} ({version}):");
                for message in result["messages"].as_array().into_iter().flatten() {
                    println!("  - {}", message.as_str().unwrap_or_default());
                }
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

async fn rebuild(name: &str, url: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let client = credentials.client()?.build()?;
    let response = client
        .post(format!("{base}/api/admin/projections/{name}/rebuild"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base} (is `nexus serve` running? see --url)"))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["message"].as_str().unwrap_or("the rebuild was refused");
        anyhow::bail!("{message} (HTTP {status}){}", auth_hint(status));
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let projections: serde_json::Value =
            client.get(format!("{base}/api/admin/projections")).send().await?.json().await?;
        let Some(status) = projections["items"].as_array().into_iter().flatten().find(|p| p["name"] == name)
        else {
            anyhow::bail!("projection {name} disappeared");
        };
        match status["rebuild"].as_object() {
            Some(progress) => {
                bar.set_length(progress["target"].as_u64().unwrap_or(0));
                bar.set_position(progress["position"].as_u64().unwrap_or(0));
            }
            None => {
                bar.finish_and_clear();
                let checkpoint = status["checkpoint"].as_u64().unwrap_or(0);
                println!(
                    "rebuilt {name}: {checkpoint} events in {:.1} s, swapped in; state {}",
                    started.elapsed().as_secs_f64(),
                    status["state"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
        }
    }
}

/// A client subcommand's error, said first as the TLS failure it comes from, if it does: "cannot
/// reach" alone would send the user looking for a server that is running.
fn explain_tls(error: anyhow::Error) -> anyhow::Error {
    // rustls' error travels inside `io::Error`s (one per layer of the connector), which hide it
    // from `source()`: look through them.
    let tls = error.chain().find_map(|cause| {
        let mut cause: &(dyn std::error::Error + 'static) = cause;
        loop {
            if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            cause = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
        }
    });
    let explained = match tls {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "the server's TLS certificate is not trusted ({why:?}): if a private CA signed it, set \
             SSL_CERT_FILE to that CA's certificate (PEM); check that --url names the host the \
             certificate is for"
        ),
        Some(other) => format!("the TLS handshake with the server failed: {other}"),
        None => return error,
    };
    error.context(explained)
}

/// What to do about a refused credential.
fn auth_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "; the credential is missing or invalid: set NEXUS_TOKEN (a JWT) or NEXUS_API_KEY",
        403 => "; the credential lacks the scope this needs (admin for the admin API)",
        _ => "",
    }
}

async fn dlq(args: DlqArgs, credentials: &Credentials) -> anyhow::Result<()> {
    let base = format!("{}/api/admin/dlq", args.url.trim_end_matches('/'));
    let client = credentials.client()?.build()?;
    let unreachable =
        || format!("cannot reach {base} (is `nexus serve` running with the router role? see --url)");
    let response = match &args.command {
        DlqCommand::List { .. } => client.get(&base).send().await,
        DlqCommand::Retry { id } => client.post(format!("{base}/{id}/retry")).send().await,
        DlqCommand::Skip { id } => client.post(format!("{base}/{id}/skip")).send().await,
    }
    .with_context(unreachable)?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{} (HTTP {status}){}",
            body["message"].as_str().unwrap_or("refused"),
            auth_hint(status)
        );
    }
    match args.command {
        DlqCommand::List { json: true } => println!("{}", serde_json::to_string_pretty(&body)?),
        DlqCommand::List { json: false } => {
            let items = body["items"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<8} {:<20} {:<28} {:>7}  {:<24} reason",
                "id", "event type", "consumer", "retries", "last failure"
            );
            for item in &items {
                println!(
                    "{:<8} {:<20} {:<28} {:>7}  {:<24} {}",
                    item["id"].as_str().unwrap_or("?"),
                    item["eventType"].as_str().unwrap_or("?"),
                    item["consumer"].as_str().unwrap_or("?"),
                    item["retryCount"],
                    item["lastFailureTime"].as_str().unwrap_or("?"),
                    item["failureReason"].as_str().unwrap_or("?"),
                );
            }
            println!("{} dead letter(s) waiting", items.len());
        }
        DlqCommand::Retry { id } => println!("dead letter {id} republished to its consumer's queue"),
        DlqCommand::Skip { id } => println!("dead letter {id} archived"),
    }
    Ok(())
}

fn policy_test(dir: &std::path::Path) -> anyhow::Result<()> {
    let engine = nexus_policy::PolicyEngine::load_dir(dir)?;
    let outcomes = engine.run_tests();
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for outcome in &outcomes {
        let verdict = if outcome.passed { "PASS" } else { "FAIL" };
        match &outcome.error {
            Some(error) => println!("{verdict} {}: {error}", outcome.name),
            None => println!("{verdict} {}", outcome.name),
        }
    }
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if outcomes.is_empty() {
        anyhow::bail!("no test_ rules found in {}", dir.display());
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn policy_check(input: &std::path::Path, policies: Option<&std::path::Path>) -> anyhow::Result<()> {
    let engine = match policies {
        Some(dir) => nexus_policy::PolicyEngine::load_dir(dir)?,
        None => nexus_policy::PolicyEngine::bundled()?,
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
    // A service graph (from `nexus graph`) is turned into its facts; anything else is facts.
    let violations = match serde_json::from_value::<nexus_policy::ServiceGraph>(value.clone()) {
        Ok(graph) => engine.check_graph(&graph)?,
        Err(_) => engine.check_facts(&value)?,
    };
    for violation in &violations {
        println!("{violation}");
    }
    if violations.is_empty() {
        println!("no violations");
        Ok(())
    } else {
        eprintln!("{} violation(s)", violations.len());
        std::process::exit(1);
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEXUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs, domain: Domain) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        role: args.role,
        store_url: args.store_url,
        store_schema: args.store_schema,
        retry_base_ms: args.retry_base_ms,
        queue_url: args.queue_url,
        stream_url: args.stream_url,
        jwt_secret: std::env::var("NEXUS_JWT_SECRET").ok(),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        ssl_cert_file: ssl_cert_file(),
    };
    let config = Config::load(args.config.as_deref(), overrides)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!("cannot listen on {} (is another server running? try --listen)", config.listen)
    })?;
    nexus_server::run(config, domain, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
