//! Serving the listener: the accept loop and one HTTP/1 connection per task, with three limits
//! that keep a server reachable when clients open connections and send nothing.
//!
//! Before these limits a connection that sent nothing, or half a request head, or went quiet
//! between two requests, stayed open forever: about 20,000 of them used up the file descriptors,
//! and `/health/live` and commands waited until they closed.
//!
//! - **Header-read timeout** (`[limits] header-read-timeout-ms`, default 10 s). A new connection
//!   must send a complete request head within this time of being accepted; silent sockets,
//!   partial heads and slowloris trickles are closed when it runs out (no response is written:
//!   the socket is closed). It also bounds the head of each later request on a kept-alive
//!   connection, counted from its first byte. A real client sends its head in one write, right
//!   after connecting; 10 s is room for a slow mobile link and short enough that a slot held by
//!   a client that sends nothing frees quickly.
//! - **Idle timeout** (`idle-timeout-ms`, default 75 s). A kept-alive connection with no request
//!   in flight, which has not started a new request, is closed after this time. It is longer
//!   than the 60 s idle timeout of the usual load balancers and reverse proxies (nginx's upstream
//!   keep-alive, AWS ALB), so that a proxy that keeps connections to Nexus is the side that
//!   closes them: a server that closes first races the proxy's next request on that connection,
//!   which the proxy then answers `502`. It is 75 s for the same reason nginx picked 75 s for its
//!   own clients. A request in flight is never cut by either timeout (`?minVersion=` long polls,
//!   slow commands), nor is a WebSocket after its upgrade.
//! - **Connection cap** (`max-connections`, default 10,000). At most this many connections are
//!   open at once, WebSockets included (a WebSocket keeps its slot until it closes). When the
//!   cap is reached, a new connection takes the slot of the connection that has been waiting the
//!   longest for a request head (silent, partial, or idle between requests): that one is closed
//!   and the new one served. When no connection is waiting (every slot serves a request or a
//!   WebSocket), the new connection is accepted and closed at once, so its client fails fast
//!   instead of hanging in the listen backlog. This is what keeps `/health/live` answering
//!   under a flood of idle sockets: a probe connects, sends its head within milliseconds and is
//!   served, while the flood only ever replaces its own oldest sockets. Reserving headroom for
//!   probes does not work, as a probe cannot be told from an attacker before its head is read,
//!   and waiting for a slot would make the probe wait for a timeout. 10,000 open connections
//!   cost about 100 MB (hyper reserves an 8 KiB read buffer per connection, plus kernel socket
//!   buffers) and stay well under common descriptor limits; where the process's open-file limit
//!   (`ulimit -n`) leaves less room, the cap is lowered at start to the limit minus a reserve for
//!   the stores' files and outbound connections (a warning says so), since a cap above the limit
//!   is no cap: accepts would fail with `EMFILE` first.
//!
//! How: each connection is served by hyper's own HTTP/1 server (`http1::Builder`, with upgrades
//! for WebSockets), not hyper-util's `auto::Builder` that `axum::serve` uses. The auto builder
//! first reads the connection's first bytes to tell HTTP/1 from HTTP/2, with no timeout, so a
//! socket that sends nothing never reaches hyper's header timeout. Nexus serves HTTP/1 only.
//!
//! The timeouts are hyper's header-read timeout with a timer of our own ([`HeadTimer`]). hyper
//! starts that timer whenever it waits for a request head, on a new connection and after every
//! response, so with a plain timer the header timeout would also be the keep-alive timeout. Our
//! timer picks the deadline from what the connection did: a new connection gets the header
//! timeout from its start; a kept-alive one the idle timeout, until a byte of its next request
//! arrives, and then the header timeout from that byte. hyper still decides when a head is
//! complete and closes the connection when the timer fires: there is no protocol code here.
//! The same timer marks the connection as waiting (for eviction and for shutdown) while hyper
//! waits on it.
//!
//! TLS (`--tls-cert`/`--tls-key`): each accepted socket goes through a rustls handshake (ALPN
//! `http/1.1`) in its connection's task before hyper sees it, and then the same limits apply to
//! the decrypted stream. The handshake is part of reaching the first request head: both must
//! complete within the header-read timeout of the accept, and while it runs the connection
//! counts as waiting (the cap may evict it, shutdown closes it). A client that does not speak
//! TLS (plain HTTP to an HTTPS port) fails the handshake and is closed; nothing is written back
//! in plain text.
//!
//! Graceful shutdown: the accept loop stops, connections waiting for a head are closed at once,
//! and the others finish their request in flight and close (hyper's graceful shutdown); the
//! returned future resolves when every connection task has ended.
//!
//! Metrics: `nexus_connections_open` (gauge) and `nexus_connections_closed_total{reason}` for
//! the connections the server closed itself (`header_timeout`, `idle_timeout`, `evicted`,
//! `refused`, and `tls_handshake` for a failed TLS handshake).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Limits;

/// The three limits, from `[limits]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl Settings {
    pub(crate) fn from_limits(limits: &Limits) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
            max_connections: limits.max_connections,
        }
    }
}

/// Descriptors kept out of the connection cap when the open-file limit lowers it: the stores'
/// files (SQLite databases, their logs, the read pools), outbound connections (PostgreSQL,
/// NATS, RabbitMQ, webhooks) and the runtime's own.
const RESERVED_DESCRIPTORS: usize = 256;

/// How long the accept loop waits for an evicted connection to give its slot back before it
/// evicts the next one, and how many it tries before it refuses the new connection.
const EVICTION_WAIT: Duration = Duration::from_millis(250);
const EVICTION_TRIES: usize = 3;

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module doc); over
/// TLS with `tls`, else plain HTTP.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tls = tls.map(TlsAcceptor::from);
    let max_connections = effective_max_connections(settings.max_connections, open_files_limit());
    let connections = Arc::new(Connections::new(max_connections));
    let settings = Settings { max_connections, ..settings };
    let (stop, stopping) = watch::channel(false);
    // Every connection task holds a clone of `open`; `closed()` resolves when the last is gone.
    let (all_closed, open) = watch::channel(());
    let mut listener = listener;
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let permit = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            permit = connections.admit() => permit,
        };
        let Some(permit) = permit else {
            metrics::counter!("nexus_connections_closed_total", "reason" => "refused").increment(1);
            tracing::debug!(%peer, "connection refused: every connection slot serves a request");
            continue;
        };
        // Small writes (202 bodies, WebSocket notifications) must not wait for Nagle's
        // algorithm and the peer's delayed ACK: that alone adds ~40 ms to a notification.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        let conn = Arc::new(Conn::new(connections.next_key()));
        tokio::spawn(serve_connection(
            stream,
            Slot::new(permit),
            tls.clone(),
            peer,
            app.clone(),
            conn,
            connections.clone(),
            settings,
            stopping.clone(),
            open.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    all_closed.closed().await;
}

/// One connection, from accept (and its TLS handshake) to close (or to its upgrade to a
/// WebSocket, which then lives in its handler's task with the connection's slot).
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    slot: Slot,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    app: Router,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    settings: Settings,
    mut stopping: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) {
    let stream = match tls {
        None => Io::Plain(stream),
        Some(acceptor) => {
            match handshake(&acceptor, stream, peer, &conn, &connections, settings, &mut stopping).await {
                Some(stream) => Io::Tls(Box::new(stream)),
                None => {
                    count_close(&conn);
                    return;
                }
            }
        }
    };
    let io = TokioIo::new(Tracked::new(stream, conn.clone(), slot));
    let mut http = http1::Builder::new();
    http.timer(HeadTimer { conn: conn.clone(), connections, settings })
        .header_read_timeout(settings.header_read_timeout);
    // What `into_make_service_with_connect_info` did: the peer's address for per-client limits.
    let app = TowerToHyperService::new(app);
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&app, request)
    });
    let mut connection = pin!(http.serve_connection(io, service).with_upgrades());
    let mut draining = false;
    loop {
        tokio::select! {
            // The connection first: a head that arrived with an eviction notice is read first,
            // and its request served.
            biased;
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::trace!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            _ = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                // Nothing in flight: close now rather than wait out a partial head.
                if conn.waiting.load(Ordering::Acquire) {
                    break;
                }
                connection.as_mut().graceful_shutdown();
            }
            () = conn.evict.notified() => {
                // Only while it waits for a head: a request that arrived meanwhile is served.
                if conn.waiting.load(Ordering::Acquire) {
                    conn.close_reason.store(Reason::Evicted as u8, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    count_close(&conn);
}

/// The TLS handshake of a new connection (see the module doc): `None` when it failed, timed out,
/// or the connection was evicted or shut down meanwhile.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    connections: &Connections,
    settings: Settings,
    stopping: &mut watch::Receiver<bool>,
) -> Option<TlsStream<TcpStream>> {
    let key = connections.wait_started(conn, true);
    let deadline = conn.accepted_at + settings.header_read_timeout;
    let outcome = tokio::select! {
        biased;
        accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => match accepted {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed; connection closed");
                conn.close_reason.store(Reason::TlsHandshake as u8, Ordering::Relaxed);
                None
            }
            Err(_) => {
                conn.close_reason.store(Reason::HeaderTimeout as u8, Ordering::Relaxed);
                None
            }
        },
        () = conn.evict.notified() => {
            conn.close_reason.store(Reason::Evicted as u8, Ordering::Relaxed);
            None
        }
        _ = stopping.wait_for(|stop| *stop) => None,
    };
    connections.wait_ended(key, conn);
    outcome
}

/// Counts a connection the server closed itself, by its reason.
fn count_close(conn: &Conn) {
    if let Some(reason) = Reason::from_u8(conn.close_reason.load(Ordering::Relaxed)) {
        metrics::counter!("nexus_connections_closed_total", "reason" => reason.label()).increment(1);
    }
}

/// Why the server closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Reason {
    HeaderTimeout = 1,
    IdleTimeout = 2,
    Evicted = 3,
    TlsHandshake = 4,
}

impl Reason {
    fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::HeaderTimeout),
            2 => Some(Self::IdleTimeout),
            3 => Some(Self::Evicted),
            4 => Some(Self::TlsHandshake),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Evicted => "evicted",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// What the accept loop, the connection's task, its timer and its socket share.
struct Conn {
    /// Its place among the waiting connections while it waits for its first head: accept order
    /// (its task may first run after later ones).
    accepted: u64,
    /// When the server took it on: its TLS handshake and first head count from here.
    accepted_at: Instant,
    /// Bytes received so far (the timer tells a new request from an idle connection by it).
    bytes_read: AtomicU64,
    /// hyper waits for a request head: no request in flight, the connection may be closed.
    waiting: AtomicBool,
    /// Told by the accept loop when it takes this connection's slot.
    evict: Notify,
    /// A [`Reason`] once the server decided to close the connection.
    close_reason: AtomicU8,
}

impl Conn {
    fn new(accepted: u64) -> Self {
        Self {
            accepted,
            accepted_at: Instant::now(),
            bytes_read: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            evict: Notify::new(),
            close_reason: AtomicU8::new(0),
        }
    }
}

/// The connection slots, and the connections waiting for a request head, oldest wait first.
struct Connections {
    slots: Arc<Semaphore>,
    waiting: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_wait: AtomicU64,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            waiting: Mutex::new(BTreeMap::new()),
            next_wait: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection: a free one, else the slot of the connection waiting the
    /// longest for a head; `None` when every connection serves a request.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        for _ in 0..EVICTION_TRIES {
            let oldest = self.waiting.lock().expect("connection registry").pop_first();
            let (_, victim) = oldest?;
            victim.evict.notify_one();
            if let Ok(Ok(permit)) =
                tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned()).await
            {
                return Some(permit);
            }
        }
        None
    }

    fn next_key(&self) -> u64 {
        self.next_wait.fetch_add(1, Ordering::Relaxed)
    }

    /// `first`: the connection's first wait, which counts from its accept.
    fn wait_started(&self, conn: &Arc<Conn>, first: bool) -> u64 {
        let key = if first { conn.accepted } else { self.next_key() };
        conn.waiting.store(true, Ordering::Release);
        self.waiting.lock().expect("connection registry").insert(key, conn.clone());
        key
    }

    fn wait_ended(&self, key: u64, conn: &Conn) {
        self.waiting.lock().expect("connection registry").remove(&key);
        conn.waiting.store(false, Ordering::Release);
    }
}

/// hyper's timer for one connection. hyper's HTTP/1 server asks its timer for one deadline only:
/// the header-read deadline, each time it starts waiting for a request head (see the module
/// doc). The answer is a [`HeadWait`], which picks the deadline itself.
struct HeadTimer {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    settings: Settings,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, _header_deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadWait {
            conn: self.conn.clone(),
            connections: self.connections.clone(),
            settings: self.settings,
            started: Instant::now(),
            bytes_at_start: self.conn.bytes_read.load(Ordering::Relaxed),
            first_byte: None,
            registered: None,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: std::time::Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// One wait for a request head. hyper polls it only while the head is incomplete, after each
/// read, so it sees the first byte of a request arrive.
struct HeadWait {
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    settings: Settings,
    started: Instant,
    bytes_at_start: u64,
    first_byte: Option<Instant>,
    /// The key in [`Connections::waiting`] once hyper found no complete head.
    registered: Option<u64>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl HeadWait {
    fn deadline(&self) -> (Instant, Reason) {
        let Settings { header_read_timeout, idle_timeout, .. } = self.settings;
        match (self.bytes_at_start, self.first_byte) {
            // A new connection: its first head within the header timeout of its accept (which
            // its TLS handshake, if any, took part of).
            (0, _) => (self.conn.accepted_at + header_read_timeout, Reason::HeaderTimeout),
            // Kept alive, nothing of a next request yet.
            (_, None) => (self.started + idle_timeout, Reason::IdleTimeout),
            // A next request has begun: its head within the header timeout of its first byte.
            (_, Some(first)) => (first + header_read_timeout, Reason::HeaderTimeout),
        }
    }
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.registered.is_none() {
            this.registered = Some(this.connections.wait_started(&this.conn, this.bytes_at_start == 0));
        }
        let now = Instant::now();
        if this.first_byte.is_none() && this.conn.bytes_read.load(Ordering::Relaxed) != this.bytes_at_start {
            this.first_byte = Some(now);
        }
        let (deadline, reason) = this.deadline();
        if now < deadline {
            if this.sleep.deadline() != deadline {
                this.sleep.as_mut().reset(deadline);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // hyper closes the connection when this fires.
        this.conn.close_reason.store(reason as u8, Ordering::Relaxed);
        Poll::Ready(())
    }
}

impl Sleep for HeadWait {}

impl Drop for HeadWait {
    fn drop(&mut self) {
        if let Some(key) = self.registered {
            self.connections.wait_ended(key, &self.conn);
        }
    }
}

/// A connection's place under the cap, from its accept until its socket closes (kept through
/// a WebSocket upgrade); counted in `nexus_connections_open`.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("nexus_connections_open").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("nexus_connections_open").decrement(1.0);
    }
}

/// The bytes of a connection as hyper reads and writes them: the socket, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Delegates one `AsyncRead`/`AsyncWrite` call to the stream inside an [`Io`].
macro_rules! with_io {
    ($io:expr, $stream:ident => $call:expr) => {
        match $io {
            Io::Plain($stream) => $call,
            Io::Tls($stream) => $call,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        with_io!(self.get_mut(), stream => Pin::new(stream).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        with_io!(self.get_mut(), stream => Pin::new(stream).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with_io!(self.get_mut(), stream => Pin::new(stream).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        with_io!(self, stream => stream.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(self.get_mut(), stream => Pin::new(stream).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(self.get_mut(), stream => Pin::new(stream).poll_shutdown(cx))
    }
}

/// The connection's stream (decrypted, with TLS), counting what it reads and holding the
/// connection's slot, which it keeps through a WebSocket upgrade until the socket closes.
struct Tracked {
    stream: Io,
    conn: Arc<Conn>,
    _slot: Slot,
}

impl Tracked {
    fn new(stream: Io, conn: Arc<Conn>, slot: Slot) -> Self {
        Self { stream, conn, _slot: slot }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.conn.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The cap actually applied: `configured`, lowered below the process's open-file limit (see the
/// module doc).
fn effective_max_connections(configured: usize, open_files: Option<usize>) -> usize {
    let Some(limit) = open_files else { return configured };
    let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(limit / 2).max(1);
    if configured <= room {
        return configured;
    }
    tracing::warn!(
        configured,
        applied = room,
        open_files_limit = limit,
        "limits.max-connections is above what the open-file limit leaves for connections; lowered. \
         Raise the limit (ulimit -n, systemd LimitNOFILE) to serve more connections"
    );
    room
}

/// The soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits`; `None` where that
/// file does not exist or says `unlimited`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63551                63551                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(parse_open_files_limit(""), None);
    }

    #[test]
    fn the_cap_stays_under_the_open_files_limit() {
        assert_eq!(effective_max_connections(10_000, None), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(1_048_576)), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(20_000)), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(1024)), 768);
        assert_eq!(effective_max_connections(10_000, Some(300)), 150);
        assert_eq!(effective_max_connections(50, Some(1024)), 50);
    }
}
