//! `nexus bench`: a load generator in the spirit of `pgbench` and `nats bench`.
//!
//! Drives a running server (`--url`) or an embedded one started in a temporary directory, with a
//! weighted mix of operations from N concurrent clients, and reports throughput, latency
//! percentiles per operation, errors by code, and command→read-model lag measured through
//! WebSocket notifications by a sampler running beside the load.
//!
//! Two load shapes:
//! - closed loop (default): each client sends its next request as soon as the last one answered,
//!   which finds the maximum throughput;
//! - open loop (`--rate N`): the clients together start N operations per second on a fixed
//!   schedule, and each latency is counted from the time its request was *due*, not sent, so a
//!   stalled server cannot hide its queueing delay by slowing the generator down (the coordinated
//!   omission `wrk2` corrects the same way).
//!
//! Soak mode (`--sample-every SECS`): for sustained-load tests, every SECS seconds a sample of
//! the server is printed on stderr (and kept under `"samples"` in the JSON report): the elapsed
//! time, the server's resident memory (`VmRSS` and `RssAnon` from `/proc/<pid>/status`), the size
//! of each file in its data directory (`events.db`, `events.db-wal`, `read.db`, …), and the
//! throughput, p50 and p99 of each operation and the lag p99 over that interval alone. The final
//! report ends with the last sample. MB are MiB (2^20 bytes) throughout. The embedded server is
//! sampled without further flags: its process is this one, its directory the temporary one. A
//! server driven with `--url` is sampled through `--server-pid` and `--data-dir`; without them a
//! sample has the latencies only. The embedded server's RSS includes the bench's own latency
//! buffers (4 bytes per operation), so its samples also give their size, to subtract.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Base URL of a running server; without it an embedded server is started in a temp dir.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent clients.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Seconds to run (ignored when --count is given).
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Total operations to run instead of a duration.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Operation mix as weights: place, ship, get, list, search, live
    /// (e.g. place=70,ship=10,get=15,list=5). `get` reads an order this client placed, with
    /// `minVersion=1` (read-your-writes); `live` is GET /health/live, an almost empty handler:
    /// the HTTP ceiling of this machine.
    #[arg(long, default_value = "place=100")]
    mix: String,
    /// Target operations per second across all clients (open loop); without it each client sends
    /// its next request as soon as the last one answered (closed loop, maximum throughput).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rate: Option<u32>,
    /// Lag samples per second taken by the WebSocket sampler (0 disables it).
    #[arg(long, default_value_t = 50)]
    lag_samples: u32,
    /// Soak mode: every SECS seconds, sample the server's memory, the size of each file in its
    /// data directory, and the throughput and latencies of the interval.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    sample_every: Option<u64>,
    /// With --url: the server process whose memory the samples read (`/proc/<pid>/status`).
    #[arg(long, value_name = "PID", requires_all = ["url", "sample_every"])]
    server_pid: Option<u32>,
    /// With --url: the server's data directory, whose files the samples measure.
    #[arg(long, value_name = "DIR", requires_all = ["url", "sample_every"])]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// First measure this machine's HTTP ceiling against the same server (`--mix live=100`, as
    /// many clients, as long, closed loop), then the run asked for, and report its throughput as
    /// a ratio of that ceiling: two figures measured in one run, on the same cores.
    #[arg(long)]
    compare_live: bool,
    /// Also measure this machine's durable-commit ceiling before the run: as many threads as
    /// clients, as long, each committing one order-like row per transaction into a scratch SQLite
    /// database with the event store's settings (WAL, `synchronous = FULL`; no group commit), in a
    /// temporary directory. The run's commands a second are reported as a ratio of it.
    #[arg(long)]
    compare_raw: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Place,
    Ship,
    Get,
    List,
    Search,
    Live,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Place => "PlaceOrder",
            Op::Ship => "ShipOrder",
            Op::Get => "get-by-id",
            Op::List => "list",
            Op::Search => "search",
            Op::Live => "live",
        }
    }
}

fn parse_mix(mix: &str) -> anyhow::Result<Vec<(Op, u32)>> {
    let mut weights = Vec::new();
    for part in mix.split(',').filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
        let op = match name.trim() {
            "place" => Op::Place,
            "ship" => Op::Ship,
            "get" => Op::Get,
            "list" => Op::List,
            "search" => Op::Search,
            "live" => Op::Live,
            other => bail!("unknown operation '{other}' in --mix (use place, ship, get, list, search, live)"),
        };
        let weight: u32 = weight.trim().parse().with_context(|| format!("weight of {name} in --mix"))?;
        weights.push((op, weight));
    }
    if weights.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        bail!("--mix needs at least one operation with a weight above 0");
    }
    Ok(weights)
}

/// Latencies and lags in microseconds, errors by code.
#[derive(Default)]
struct Stats {
    latencies: BTreeMap<Op, Vec<u32>>,
    lags: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn merge(&mut self, mut other: Stats) {
        for (op, mut values) in other.latencies {
            self.latencies.entry(op).or_default().append(&mut values);
        }
        self.lags.append(&mut other.lags);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    /// The memory the buffers hold, which the embedded server's RSS includes.
    fn buffer_bytes(&self) -> usize {
        let values: usize = self.latencies.values().map(Vec::capacity).sum::<usize>() + self.lags.capacity();
        values * size_of::<u32>()
    }
}

/// Where one client (or the lag sampler) records. Each has its own, so the lock is uncontended
/// but for the soak sampler taking the interval's figures; a std mutex, as it is never held
/// across an `.await`.
#[derive(Default)]
struct Recorder(Mutex<Stats>);

impl Recorder {
    fn record(&self, add: impl FnOnce(&mut Stats)) {
        add(&mut self.0.lock().expect("a recorder is never poisoned"));
    }

    fn take(&self) -> Stats {
        std::mem::take(&mut self.0.lock().expect("a recorder is never poisoned"))
    }
}

/// What every recorder holds, leaving them empty.
fn drain(recorders: &[Arc<Recorder>]) -> Stats {
    let mut stats = Stats::default();
    for recorder in recorders {
        stats.merge(recorder.take());
    }
    stats
}

pub async fn run(
    args: BenchArgs,
    credentials: &crate::cli::Credentials,
    domain: nexus_core::Domain,
) -> anyhow::Result<()> {
    let mix = parse_mix(&args.mix)?;
    if args.url.is_none() && domain.command("PlaceOrder").is_none() {
        bail!(
            "bench drives the reference workload (PlaceOrder, ShipOrder, order queries), which this \
             service's domain does not have: point it at a server of the reference domain with --url, \
             or load your service with a tool of your own"
        );
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let (base, embedded) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let (url, embedded) = start_embedded(domain).await?;
            (url, Some(embedded))
        }
    };
    let watched = match &embedded {
        Some(embedded) => {
            Watched { pid: Some(std::process::id()), data_dir: Some(embedded.dir.path().to_owned()) }
        }
        None => Watched { pid: args.server_pid, data_dir: args.data_dir.clone() },
    };
    if args.sample_every.is_some() {
        let missing = [
            (watched.pid.is_none(), "memory (no --server-pid)"),
            (watched.data_dir.is_none(), "files (no --data-dir)"),
        ];
        let missing: Vec<&str> =
            missing.into_iter().filter_map(|(missing, what)| missing.then_some(what)).collect();
        if !missing.is_empty() {
            eprintln!("nexus bench: samples leave out the server's {}", missing.join(" and "));
        }
    }
    let client = credentials.client()?.pool_max_idle_per_host(args.concurrency).build()?;
    client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("server at {base} is not ready"))?;

    let live = match args.compare_live {
        true => {
            let live = BenchArgs {
                mix: "live=100".to_owned(),
                rate: None,
                lag_samples: 0,
                sample_every: None,
                ..args.clone()
            };
            let (stats, elapsed, _) =
                measure(&live, &parse_mix(&live.mix)?, &base, &client, credentials, watched_none()).await?;
            let ok: usize = stats.latencies.values().map(Vec::len).sum();
            Some(ok as f64 / elapsed.as_secs_f64())
        }
        false => None,
    };
    let raw = match args.compare_raw {
        true => {
            let (writers, duration) = (args.concurrency, Duration::from_secs(args.duration));
            eprintln!("raw SQLite ceiling: {writers} writers, {} s", args.duration);
            let measured = tokio::task::spawn_blocking(move || {
                let dir = tempfile::tempdir().context("a temporary directory for the raw ceiling")?;
                crate::raw_ceiling::measure(dir.path(), writers, duration)
            })
            .await??;
            Some(measured)
        }
        false => None,
    };
    let (mut stats, elapsed, samples) = measure(&args, &mix, &base, &client, credentials, watched).await?;
    report(&args, &mut stats, elapsed, samples, Ceilings { live, raw });
    Ok(())
}

/// Nothing of the server's process or files to sample (the ceiling's run).
fn watched_none() -> Watched {
    Watched { pid: None, data_dir: None }
}

/// One run of `args`' load against `base`: what every client and the lag sampler recorded, how
/// long it took, and the soak samples.
async fn measure(
    args: &BenchArgs,
    mix: &[(Op, u32)],
    base: &str,
    client: &reqwest::Client,
    credentials: &crate::cli::Credentials,
    watched: Watched,
) -> anyhow::Result<(Stats, Duration, Vec<Value>)> {
    let (base, client) = (base.to_owned(), client.clone());
    let remaining = Arc::new(AtomicU64::new(args.count.unwrap_or(u64::MAX)));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = match args.count {
        Some(_) => None,
        None => Some(Instant::now() + Duration::from_secs(args.duration)),
    };
    eprintln!(
        "nexus bench: {} clients, {}, mix {}, {}, against {base}",
        args.concurrency,
        args.count.map_or(format!("{} s", args.duration), |n| format!("{n} operations")),
        args.mix,
        args.rate.map_or("closed loop".to_owned(), |r| format!("open loop at {r} ops/s")),
    );
    let started = Instant::now();
    // One per client, and the last for the lag sampler.
    let recorders: Vec<Arc<Recorder>> = (0..=args.concurrency).map(|_| Arc::default()).collect();
    // Client i of n starts i/n of a period late, so the open-loop schedule is spread evenly.
    let period = args.rate.map(|rate| Duration::from_secs_f64(args.concurrency as f64 / rate as f64));
    let mut workers = Vec::new();
    for (seed, recorder) in recorders[..args.concurrency].iter().enumerate() {
        let pacing = period.map(|period| {
            let first = tokio::time::Instant::from_std(started)
                + period.mul_f64(seed as f64 / args.concurrency as f64);
            let mut interval = tokio::time::interval_at(first, period);
            // Burst: a late tick fires at once, so the schedule (and the offered rate) holds.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            interval
        });
        workers.push(tokio::spawn(worker(
            client.clone(),
            base.clone(),
            mix.to_vec(),
            seed as u64 + 1,
            recorder.clone(),
            remaining.clone(),
            done.clone(),
            deadline,
            pacing,
        )));
    }
    let sampler = (args.lag_samples > 0).then(|| {
        tokio::spawn(lag_sampler(
            client.clone(),
            base.clone(),
            credentials.access_token().map(str::to_owned),
            args.lag_samples,
            recorders[args.concurrency].clone(),
            remaining.clone(),
            deadline,
        ))
    });
    let bar = progress_bar(args);
    let progress = tokio::spawn(show_progress(bar.clone(), args.count, args.duration, done.clone(), started));
    let (stop_soak, stopped) = tokio::sync::oneshot::channel();
    let soak = args.sample_every.map(|every| {
        let print = (!args.json).then_some(bar);
        tokio::spawn(soak(watched, Duration::from_secs(every), recorders.clone(), print, started, stopped))
    });
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    // The last sample covers the load only, not the lag sampler's wind-down.
    let _ = stop_soak.send(());
    let (mut stats, samples) = match soak {
        Some(soak) => soak.await?,
        None => (Stats::default(), Vec::new()),
    };
    progress.abort();
    // The bar is cleared when the task (and the bar it owns) is dropped.
    let _ = progress.await;
    if let Some(sampler) = sampler {
        remaining.store(0, Ordering::Relaxed);
        sampler.await?;
    }
    stats.merge(drain(&recorders));
    Ok((stats, elapsed, samples))
}

/// What a soak sample reads besides latencies: the server's process and data directory, where
/// known.
struct Watched {
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
}

/// Takes a sample every `every` and once more when `stop` fires (unless the last one is less
/// than a tenth of a period old), and returns what it drained from the recorders with the
/// samples. Prints each sample through the bar, if given, so the two do not overwrite each other.
async fn soak(
    watched: Watched,
    every: Duration,
    recorders: Vec<Arc<Recorder>>,
    print: Option<ProgressBar>,
    started: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (Stats, Vec<Value>) {
    let mut total = Stats::default();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(started) + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = started;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let now = Instant::now();
        let mut window = drain(&recorders);
        let too_soon = stopping && now - last < every / 10 && !samples.is_empty();
        if !too_soon {
            let mut sample = sample(&watched, &mut window, now - started, now - last);
            if watched.pid == Some(std::process::id()) {
                sample["benchBuffersMb"] = json!(megabytes(total.buffer_bytes() + window.buffer_bytes()));
            }
            if let Some(bar) = &print {
                bar.suspend(|| eprintln!("{}", sample_line(&sample)));
            }
            samples.push(sample);
            last = now;
        }
        total.merge(window);
        if stopping {
            return (total, samples);
        }
    }
}

/// One soak sample: the server's memory and files now, and the operations of `window`, which
/// lasted `interval`.
fn sample(watched: &Watched, window: &mut Stats, elapsed: Duration, interval: Duration) -> Value {
    let memory = watched.pid.and_then(memory_mb);
    json!({
        "elapsedSeconds": round2(elapsed.as_secs_f64()),
        "intervalSeconds": round2(interval.as_secs_f64()),
        "rssMb": memory.map(|(rss, _)| rss),
        "rssAnonMb": memory.map(|(_, anon)| anon),
        "filesMb": watched.data_dir.as_deref().map(files_mb),
        "operations": summarize(&mut window.latencies, interval.as_secs_f64()),
        "errors": window.errors.values().sum::<u64>(),
        "lag": (!window.lags.is_empty()).then(|| percentiles(&mut window.lags)),
    })
}

/// `VmRSS` and `RssAnon` of a process in MB, from `/proc` (so Linux only).
fn memory_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        let kilobytes = status.lines().find_map(|line| line.strip_prefix(name))?;
        let kilobytes: u64 = kilobytes.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(megabytes(kilobytes as usize * 1024))
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// The size in MB of each file in `dir` and its subdirectories, by path relative to `dir`. A file
/// that vanishes while being listed (a SQLite journal) is left out.
fn files_mb(dir: &Path) -> BTreeMap<String, f64> {
    fn walk(dir: &Path, prefix: &str, sizes: &mut BTreeMap<String, f64>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => walk(&entry.path(), &format!("{name}/"), sizes),
                Ok(meta) => {
                    sizes.insert(name, megabytes(meta.len() as usize));
                }
                Err(_) => {}
            }
        }
    }
    let mut sizes = BTreeMap::new();
    walk(dir, "", &mut sizes);
    sizes
}

fn megabytes(bytes: usize) -> f64 {
    round2(bytes as f64 / (1024.0 * 1024.0))
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// A sample on one line: `at 5.0 s: rss 80.1 MB (anon 61.2) | events.db 3.1, … MB | PlaceOrder
/// 2100/s p50 3.20 p99 9.10 ms, … | lag p99 4.00 ms`.
fn sample_line(sample: &Value) -> String {
    let number = |value: &Value| value.as_f64().unwrap_or(0.0);
    let mut parts = Vec::new();
    if !sample["rssMb"].is_null() {
        let mut memory =
            format!("rss {:.1} MB (anon {:.1})", number(&sample["rssMb"]), number(&sample["rssAnonMb"]));
        if !sample["benchBuffersMb"].is_null() {
            memory += &format!(", of which bench buffers {:.1}", number(&sample["benchBuffersMb"]));
        }
        parts.push(memory);
    }
    if let Some(files) = sample["filesMb"].as_object() {
        let files: Vec<String> = files.iter().map(|(name, mb)| format!("{name} {:.1}", number(mb))).collect();
        parts.push(format!("{} MB", files.join(", ")));
    }
    let mut operations: Vec<String> = sample["operations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| {
            format!(
                "{name} {:.0}/s p50 {:.2} p99 {:.2} ms",
                number(&s["perSecond"]),
                number(&s["p50Ms"]),
                number(&s["p99Ms"])
            )
        })
        .collect();
    if sample["errors"].as_u64().unwrap_or(0) > 0 {
        operations.push(format!("{} errors", sample["errors"]));
    }
    parts.push(if operations.is_empty() { "no operations".to_owned() } else { operations.join(", ") });
    if !sample["lag"].is_null() {
        parts.push(format!("lag p99 {:.2} ms", number(&sample["lag"]["p99Ms"])));
    }
    format!("at {:.1} s: {}", number(&sample["elapsedSeconds"]), parts.join(" | "))
}

/// A bar on stderr when a person is watching; hidden for `--json` and when stderr is a file or
/// a pipe (CI logs), where redraws would be noise.
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let length = match args.count {
        Some(count) => count,
        None => args.duration * 1000,
    };
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:32}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Redraws the bar five times a second: elapsed/total, operations so far, and the rate over the
/// last second.
async fn show_progress(
    bar: ProgressBar,
    count: Option<u64>,
    duration: u64,
    done: Arc<AtomicU64>,
    started: Instant,
) {
    struct Clear(ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let bar = Clear(bar);
    let mut window = std::collections::VecDeque::from([(Instant::now(), 0u64)]);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (now, ops) = (Instant::now(), done.load(Ordering::Relaxed));
        window.push_back((now, ops));
        while window.len() > 6 {
            window.pop_front();
        }
        let (then, ops_then) = window[0];
        let rate = (ops - ops_then) as f64 / now.duration_since(then).as_secs_f64().max(1e-3);
        let elapsed = started.elapsed().as_secs_f64();
        match count {
            Some(_) => {
                bar.0.set_position(ops);
                bar.0.set_message(format!(
                    "{elapsed:.1} s  {ops}/{} ops  {rate:.0} ops/s",
                    bar.0.length().unwrap_or(0)
                ));
            }
            None => {
                bar.0.set_position((elapsed * 1000.0) as u64);
                bar.0.set_message(format!("{elapsed:.1}/{duration} s  {ops} ops  {rate:.0} ops/s"));
            }
        }
    }
}

/// Keeps the embedded server's directory and task alive for the run.
struct Embedded {
    dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

async fn start_embedded(domain: nexus_core::Domain) -> anyhow::Result<(String, Embedded)> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = nexus_server::Config::embedded(dir.path());
    // The per-client limits guard a server from its clients; every request here comes from one
    // address, and the figure wanted is the server's, not the limiter's. The temporal limit
    // stays (the architecture policies require it, and the bench sends no temporal queries). A
    // server driven with --url keeps its own limits (429s show up under errors by code).
    config.rate_limits.list_per_window = 0;
    config.rate_limits.search_per_window = 0;
    let server = tokio::spawn(async move {
        if let Err(error) = nexus_server::run(config, domain, listener, std::future::pending()).await {
            eprintln!("embedded server failed: {error}");
        }
    });
    eprintln!("started an embedded server on {addr} in {}", dir.path().display());
    Ok((format!("http://{addr}"), Embedded { dir, _server: server }))
}

/// xorshift: enough randomness for picking operations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn place_order_body(rng: &mut Rng, aggregate_id: Option<&str>) -> Value {
    let mut body = json!({
        "customerId": format!("customer-{}", rng.next() % 10_000),
        "items": [
            {"productId": format!("product-{}", rng.next() % 1000), "quantity": 1 + rng.next() % 5, "unitPrice": 9.5},
            {"productId": format!("product-{}", rng.next() % 1000), "quantity": 1, "unitPrice": 20}
        ]
    });
    if let Some(id) = aggregate_id {
        body["aggregateId"] = json!(id);
    }
    body
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    client: reqwest::Client,
    base: String,
    mix: Vec<(Op, u32)>,
    seed: u64,
    recorder: Arc<Recorder>,
    remaining: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    deadline: Option<Instant>,
    mut pacing: Option<tokio::time::Interval>,
) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut placed: Vec<String> = Vec::new();
    loop {
        // Open loop: the latency counts from when the request was due.
        let due = match &mut pacing {
            Some(interval) => Some(interval.tick().await.into_std()),
            None => None,
        };
        if deadline.is_some_and(|d| Instant::now() >= d)
            || remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
        {
            break;
        }
        let mut pick = (rng.next() % total as u64) as u32;
        let mut op = mix[0].0;
        for (candidate, weight) in &mix {
            if pick < *weight {
                op = *candidate;
                break;
            }
            pick -= weight;
        }
        if matches!(op, Op::Ship | Op::Get) && placed.is_empty() {
            op = Op::Place;
        }
        let request = match op {
            Op::Place => {
                client.post(format!("{base}/api/commands/PlaceOrder")).json(&place_order_body(&mut rng, None))
            }
            Op::Ship => {
                let id = placed.swap_remove((rng.next() % placed.len() as u64) as usize);
                client.post(format!("{base}/api/commands/ShipOrder")).json(&json!({"aggregateId": id}))
            }
            Op::Get => {
                let id = &placed[(rng.next() % placed.len() as u64) as usize];
                client.get(format!("{base}/api/queries/orders/{id}?minVersion=1"))
            }
            Op::List => client.get(format!("{base}/api/queries/orders?status=PLACED&limit=20")),
            Op::Search => client.get(format!(
                "{base}/api/queries/orders/search?q=product-{}&facets=status&limit=20",
                rng.next() % 1000
            )),
            Op::Live => client.get(format!("{base}/health/live")),
        };
        let started = due.unwrap_or_else(Instant::now);
        // The latency includes reading the whole body, as a real client must.
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(error) => Err(error),
        };
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match outcome {
            Ok((status, body)) if status.is_success() => {
                recorder.record(|stats| stats.latencies.entry(op).or_default().push(micros));
                if op == Op::Place
                    && placed.len() < 10_000
                    && let Ok(body) = serde_json::from_slice::<Value>(&body)
                    && let Some(id) = body["aggregateId"].as_str()
                {
                    placed.push(id.to_owned());
                }
            }
            Ok((status, body)) => {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let code = body["code"].as_str().unwrap_or("?");
                let code = format!("{} {code}", status.as_u16());
                recorder.record(|stats| *stats.errors.entry(code).or_default() += 1);
            }
            Err(error) => {
                let kind = if error.is_timeout() { "timeout" } else { "connection" };
                recorder.record(|stats| *stats.errors.entry(kind.to_owned()).or_default() += 1);
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Samples command→read-model lag: subscribe to a fresh id, place an order on it, and time from
/// the 202 to the `projection_updated` notification.
async fn lag_sampler(
    client: reqwest::Client,
    base: String,
    access_token: Option<String>,
    per_second: u32,
    recorder: Arc<Recorder>,
    remaining: Arc<AtomicU64>,
    deadline: Option<Instant>,
) {
    let ws_url = format!("{}/api/subscriptions", base.replacen("http", "ws", 1));
    let with_token = match access_token {
        Some(token) => match reqwest::Url::parse_with_params(&ws_url, [("access_token", token)]) {
            Ok(url) => url.to_string(),
            Err(error) => {
                eprintln!("lag sampler: bad URL {ws_url}: {error}");
                return;
            }
        },
        None => ws_url.clone(),
    };
    let mut socket = match connect_ws(&with_token).await {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("lag sampler: cannot connect to {ws_url}: {error:#}");
            return;
        }
    };
    let mut rng = Rng(0xDEAD_BEEF);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    while deadline.is_none_or(|d| Instant::now() < d) && remaining.load(Ordering::Relaxed) > 0 {
        tick.tick().await;
        let id = format!("lag-{}", uuid::Uuid::new_v4());
        let subscribe = json!({"type": "subscribe", "aggregateIds": [id]}).to_string();
        if socket.send(Message::text(subscribe)).await.is_err() {
            break;
        }
        if !wait_for(&mut socket, |m| m["type"] == "subscribed").await {
            break;
        }
        let accepted = client
            .post(format!("{base}/api/commands/PlaceOrder"))
            .json(&place_order_body(&mut rng, Some(&id)))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 202);
        let at = Instant::now();
        if accepted
            && wait_for(&mut socket, |m| m["type"] == "projection_updated" && m["aggregateId"] == id).await
        {
            let lag = at.elapsed().as_micros() as u32;
            recorder.record(|stats| stats.lags.push(lag));
        }
        let unsubscribe = json!({"type": "unsubscribe", "aggregateIds": [id]}).to_string();
        let _ = socket.send(Message::text(unsubscribe)).await;
    }
}

/// A byte stream the lag sampler's WebSocket runs on: TCP, or TLS over it.
trait WsIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> WsIo for T {}

/// The lag sampler's WebSocket to `url`: `ws://`, or `wss://` (an `https://` server) trusting
/// what the HTTP client trusts, the platform's roots and `SSL_CERT_FILE`.
async fn connect_ws(url: &str) -> anyhow::Result<tokio_tungstenite::WebSocketStream<Box<dyn WsIo>>> {
    let parsed = reqwest::Url::parse(url)?;
    let host = parsed.host_str().context("the URL has no host")?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port_or_known_default().context("the URL has no port")?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn WsIo> = match parsed.scheme() {
        "wss" => {
            let config = nexus_server::tls::client_config(crate::cli::ssl_cert_file().as_deref())?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            Box::new(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?)
        }
        _ => Box::new(tcp),
    };
    let (socket, _) = tokio_tungstenite::client_async(url, io).await?;
    Ok(socket)
}

async fn wait_for<S>(socket: &mut S, wanted: impl Fn(&Value) -> bool) -> bool
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let Message::Text(text) = message
            && serde_json::from_str::<Value>(&text).is_ok_and(|m| wanted(&m))
        {
            return true;
        }
    }
    false
}

fn percentiles(values: &mut [u32]) -> Value {
    values.sort_unstable();
    let at = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
        values[index] as f64 / 1000.0
    };
    json!({
        "count": values.len(),
        "p50Ms": at(0.50), "p90Ms": at(0.90), "p99Ms": at(0.99), "p999Ms": at(0.999),
        "maxMs": values.last().map_or(0.0, |v| *v as f64 / 1000.0),
    })
}

/// Percentiles and rate of each operation over `seconds`.
fn summarize(latencies: &mut BTreeMap<Op, Vec<u32>>, seconds: f64) -> serde_json::Map<String, Value> {
    let mut operations = serde_json::Map::new();
    for (op, values) in latencies {
        let mut summary = percentiles(values);
        summary["perSecond"] = json!((values.len() as f64 / seconds).round());
        operations.insert(op.name().to_owned(), summary);
    }
    operations
}

/// The ceilings measured in the same invocation, in operations (or commits) a second.
struct Ceilings {
    /// `--compare-live`: `GET /health/live`.
    live: Option<f64>,
    /// `--compare-raw`: one durable SQLite commit per row.
    raw: Option<f64>,
}

fn report(args: &BenchArgs, stats: &mut Stats, elapsed: Duration, samples: Vec<Value>, ceilings: Ceilings) {
    let Ceilings { live, raw } = ceilings;
    let seconds = elapsed.as_secs_f64();
    let total_ok: usize = stats.latencies.values().map(Vec::len).sum();
    let operations = summarize(&mut stats.latencies, seconds);
    let total_errors: u64 = stats.errors.values().sum();
    let commands: usize =
        [Op::Place, Op::Ship].iter().filter_map(|op| stats.latencies.get(op)).map(Vec::len).sum();
    let attempted = total_ok as f64 + total_errors as f64;
    let report = json!({
        "concurrency": args.concurrency,
        "mix": args.mix,
        "seconds": round2(seconds),
        "ok": total_ok,
        "errors": total_errors,
        "opsPerSecond": (total_ok as f64 / seconds).round(),
        "commandsPerSecond": (commands as f64 / seconds).round(),
        // Open loop only: what was asked for, and what was sent (answered or not).
        "targetRate": args.rate,
        "achievedRate": args.rate.map(|_| (attempted / seconds).round()),
        "operations": operations,
        "errorsByCode": stats.errors,
        "lag": percentiles(&mut stats.lags),
        // With --compare-live: the HTTP ceiling measured just before, and this run's share of it.
        "liveOpsPerSecond": live.map(f64::round),
        "ratioToLive": live.map(|live| round2(total_ok as f64 / seconds / live)),
        // With --compare-raw: durable single-row SQLite commits a second just before, and this
        // run's commands a second as a share of it.
        "rawCommitsPerSecond": raw.map(f64::round),
        "ratioToRaw": raw.map(|raw| round2(commands as f64 / seconds / raw)),
        "samples": (!samples.is_empty()).then_some(&samples),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serializable"));
        return;
    }
    println!(
        "\n{total_ok} ok, {total_errors} errors in {seconds:.2} s: {:.0} ops/s ({:.0} commands/s)",
        total_ok as f64 / seconds,
        commands as f64 / seconds
    );
    if let Some(live) = live {
        println!(
            "HTTP ceiling in the same run (GET /health/live, {} clients): {live:.0} ops/s; this run: {:.3} of it",
            args.concurrency,
            total_ok as f64 / seconds / live
        );
    }
    if let Some(raw) = raw {
        println!(
            "raw SQLite ceiling in the same run ({} writers, one synced commit per row): {raw:.0} commits/s; \
             this run's commands: {:.3} of it",
            args.concurrency,
            commands as f64 / seconds / raw
        );
    }
    if let Some(rate) = args.rate {
        println!(
            "open loop: target {rate} ops/s, achieved {:.0} ops/s; latency counted from when each request was due",
            attempted / seconds
        );
    }
    println!(
        "{:<12} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "operation", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms"
    );
    for (name, s) in &operations {
        println!(
            "{:<12} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            s["count"].as_u64().unwrap_or(0),
            s["perSecond"].as_f64().unwrap_or(0.0),
            s["p50Ms"].as_f64().unwrap_or(0.0),
            s["p90Ms"].as_f64().unwrap_or(0.0),
            s["p99Ms"].as_f64().unwrap_or(0.0),
            s["p999Ms"].as_f64().unwrap_or(0.0),
            s["maxMs"].as_f64().unwrap_or(0.0)
        );
    }
    let lag = &report["lag"];
    println!(
        "command→read-model lag ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lag["count"],
        lag["p50Ms"].as_f64().unwrap_or(0.0),
        lag["p99Ms"].as_f64().unwrap_or(0.0),
        lag["maxMs"].as_f64().unwrap_or(0.0)
    );
    for (code, n) in &stats.errors {
        println!("error {code}: {n}");
    }
    if let Some(last) = samples.last() {
        println!("last sample {}", sample_line(last));
    }
}
