//! The `nexus` binary: argument parsing and wiring only. Not a library: everything it runs lives
//! in the crates it calls.

mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nexus_server::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "nexus",
    version,
    about = "Event sourcing and CQRS foundation: one binary, embedded or scaled out"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "NEXUS_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (commands, events, queries, subscriptions) with every role in this process.
    Serve(ServeArgs),
    /// Drive a server with load and report throughput, latency percentiles and projection lag.
    Bench(bench::BenchArgs),
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides { listen: args.listen, data_dir: args.data_dir };
    let config = Config::load(args.config.as_deref(), overrides)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!("cannot listen on {} (is another server running? try --listen)", config.listen)
    })?;
    nexus_server::run(config, nexus_domain::domain(), listener, shutdown_signal()).await?;
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
