//! Idle sockets must not take the server down (`[limits] header-read-timeout-ms`,
//! `idle-timeout-ms`, `max-connections`; see `listener.rs` in the server).
//!
//! Liveness is measured the way a probe sees it: every probe opens a fresh connection (the
//! client pools nothing), so each one goes through the accept loop that a flood of idle sockets
//! starves. A kept-alive connection would have been accepted before the flood and would measure
//! only the request, not whether the server still takes new clients.
//!
//! The test process holds both ends of every socket: test 1 needs about 4,500 descriptors (it
//! checks `ulimit -n` first).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{DEADLINE, TestServer};

/// A request head without its final empty line: the server waits for the rest forever, unless
/// it times out.
const PARTIAL_HEAD: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n";
const HEALTH: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";

/// How late the server may close a connection after its timeout on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

fn address(server: &TestServer) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().expect("server address")
}

/// A client that opens a new connection for every request.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).timeout(DEADLINE).build().expect("client")
}

async fn live(client: &reqwest::Client, server: &TestServer) -> Duration {
    let started = Instant::now();
    let response = client.get(server.url("/health/live")).send().await.expect("GET /health/live");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body");
    started.elapsed()
}

async fn place_order(client: &reqwest::Client, server: &TestServer) -> Duration {
    let started = Instant::now();
    let response = client
        .post(server.url("/api/commands/PlaceOrder"))
        .json(&json!({"customerId": "c", "items": [{"productId": "p", "quantity": 1}]}))
        .send()
        .await
        .expect("POST PlaceOrder");
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 202, "{body}");
    started.elapsed()
}

/// A socket that the test watches: when it began to connect (the server accepts it after that),
/// when the connection was made (before the server may get to accept it, under load), and a
/// task that resolves when the server closes it (a read returns end of stream or an error such as
/// a reset).
struct Watched {
    connecting: Instant,
    connected: Instant,
    closed: JoinHandle<Instant>,
}

/// Connects, sends `first` (maybe nothing) and watches for the close.
async fn watch(addr: SocketAddr, first: &'static [u8]) -> Watched {
    let connecting = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let connected = Instant::now();
    if !first.is_empty() {
        stream.write_all(first).await.expect("write");
    }
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => continue,
            }
        }
    });
    Watched { connecting, connected, closed }
}

/// Whether the task has resolved within `within`, without consuming it.
async fn closes_within(watched: &mut Watched, within: Duration) -> Option<Instant> {
    match tokio::time::timeout(within, &mut watched.closed).await {
        Ok(closed) => Some(closed.expect("watch task")),
        Err(_) => None,
    }
}

/// The open-file soft limit of this process, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Asserts that every watched socket is closed by the server at its timeout: not before
/// `timeout` after it began to connect, not later than `timeout + SLACK` after it connected.
/// Returns the latest close after its timeout.
async fn assert_closed_at_timeout(watched: Vec<Watched>, timeout: Duration, what: &str) -> Duration {
    let mut latest = Duration::ZERO;
    for (n, watched) in watched.into_iter().enumerate() {
        let closed = tokio::time::timeout(timeout + SLACK * 4, watched.closed)
            .await
            .unwrap_or_else(|_| panic!("{what} {n} is still open {:?} after connecting", timeout + SLACK * 4))
            .expect("watch task");
        let early = closed - watched.connecting;
        // 2 ms: the clock's and the timer's granularity.
        assert!(
            early >= timeout - Duration::from_millis(2),
            "{what} {n} was closed {early:?} after it began to connect, before its timeout of {timeout:?}"
        );
        let open_for = closed - watched.connected;
        assert!(
            open_for <= timeout + SLACK,
            "{what} {n} was closed only after {open_for:?} (timeout {timeout:?})"
        );
        latest = latest.max(open_for.saturating_sub(timeout));
    }
    latest
}

/// Reads one response with a `content-length` body from a raw connection; its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "the connection closed before a response");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().expect("content-length"))
        .expect("a content-length");
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.expect("read body");
        assert!(n > 0, "the connection closed in the body");
        data.extend_from_slice(&buf[..n]);
    }
    status
}

/// How long after `from` the server closes `stream` (read returns end of stream or an error).
async fn closed_after(stream: &mut TcpStream, from: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    match tokio::time::timeout_at(from + within, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0) | Err(_)) => Some(from.elapsed()),
        Ok(Ok(_)) => panic!("unexpected bytes on an idle connection"),
    }
}

/// The server starts its idle clock once it has written a response, a little before the client
/// has read it.
const IDLE_CLOCK_LEAD: Duration = Duration::from_millis(100);

/// `closed`, measured by the client, is `timeout`: at most `lead` before it (the server's clock
/// started that much before the client's), at most [`SLACK`] after it.
fn assert_at(closed: Duration, timeout: Duration, lead: Duration, what: &str) {
    assert!(
        closed + lead >= timeout,
        "{what} was closed after {closed:?}, before its timeout of {timeout:?}"
    );
    assert!(closed <= timeout + SLACK, "{what} was closed only after {closed:?} (timeout {timeout:?})");
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_sockets_neither_starve_the_server_nor_stay_open() {
    const SILENT: usize = 2000;
    const PARTIAL: usize = 200;
    let timeout = Duration::from_millis(3000);
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= 2 * (SILENT + PARTIAL) + 500,
            "this test holds both ends of {} sockets: raise `ulimit -n` (now {limit}) to at least {}",
            SILENT + PARTIAL,
            2 * (SILENT + PARTIAL) + 500
        );
    }
    let server =
        TestServer::start_with(|config| config.limits.header_read_timeout_ms = timeout.as_millis() as u64)
            .await;
    let addr = address(&server);
    let client = fresh_connections();
    live(&client, &server).await; // the server is up

    let opening = Instant::now();
    let mut sockets = Vec::with_capacity(SILENT + PARTIAL);
    for n in 0..SILENT + PARTIAL {
        sockets.push(watch(addr, if n % 11 == 10 { PARTIAL_HEAD } else { b"" }).await);
    }
    let first_connecting = sockets[0].connecting;
    let opened_in = opening.elapsed();

    // While they are all open: liveness on new connections, and commands.
    let mut probes = Vec::new();
    let mut commands = Vec::new();
    for _ in 0..10 {
        probes.push(live(&client, &server).await);
        commands.push(place_order(&client, &server).await);
        probes.push(live(&client, &server).await);
    }
    // Every socket was open all along: each one is closed no earlier than its timeout after it
    // began to connect (checked below), which is after the probes ended.
    let probing = first_connecting.elapsed();
    assert!(
        probing < timeout,
        "inconclusive: opening the sockets ({opened_in:?}) and probing ({probing:?} in all) took longer \
         than the header timeout"
    );
    let (median, p90, max) = (percentile(&probes, 0.5), percentile(&probes, 0.9), percentile(&probes, 1.0));
    eprintln!(
        "{} sockets open ({opened_in:?} to open); /health/live on new connections: median {median:?}, \
         p90 {p90:?}, max {max:?}; PlaceOrder: median {:?}, max {:?}",
        SILENT + PARTIAL,
        percentile(&commands, 0.5),
        percentile(&commands, 1.0)
    );
    assert!(p90 < Duration::from_millis(100), "/health/live is slow under idle sockets: {probes:?}");
    assert!(max < Duration::from_secs(1), "/health/live is slow under idle sockets: {probes:?}");
    assert!(commands.iter().all(|c| *c < Duration::from_secs(2)), "commands are slow: {commands:?}");

    // Every one of them is closed at the header timeout.
    let late = assert_closed_at_timeout(sockets, timeout, "socket").await;
    eprintln!("all {} closed at most {late:?} after their {timeout:?} timeout", SILENT + PARTIAL);
    live(&client, &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_at_the_header_timeout() {
    const SOCKETS: usize = 500;
    let timeout = Duration::from_millis(1000);
    let server =
        TestServer::start_with(|config| config.limits.header_read_timeout_ms = timeout.as_millis() as u64)
            .await;
    let addr = address(&server);
    live(&fresh_connections(), &server).await; // the server is up
    let mut watched = Vec::new();
    for _ in 0..SOCKETS {
        let connecting = Instant::now();
        let stream = TcpStream::connect(addr).await.expect("connect");
        let connected = Instant::now();
        let (mut read, mut write) = stream.into_split();
        // One byte of a head every 100 ms: the head is never complete, the socket never silent.
        tokio::spawn(async move {
            for byte in PARTIAL_HEAD.iter().cycle() {
                if write.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let closed = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => continue,
                }
            }
        });
        watched.push(Watched { connecting, connected, closed });
    }
    let late = assert_closed_at_timeout(watched, timeout, "slowloris socket").await;
    eprintln!("{SOCKETS} slowloris sockets closed at most {late:?} after their {timeout:?} timeout");
    live(&fresh_connections(), &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    // Idle timeout shorter than the header timeout: closed at the idle timeout.
    let server = TestServer::start_with(|config| {
        config.limits.idle_timeout_ms = 1000;
        config.limits.header_read_timeout_ms = 5000;
    })
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    stream.write_all(HEALTH).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    let idle_from = Instant::now();
    let closed = closed_after(&mut stream, idle_from, Duration::from_secs(4)).await;
    let closed = closed.expect("an idle kept-alive connection is still open 4 s after its 1 s idle timeout");
    eprintln!("idle keep-alive connection closed {closed:?} after its response (idle timeout 1 s)");
    assert_at(closed, Duration::from_millis(1000), IDLE_CLOCK_LEAD, "the idle connection");
    server.stop().await;

    // Idle timeout longer than the header timeout: kept past the header timeout, which bounds
    // only a request that has begun.
    let server = TestServer::start_with(|config| {
        config.limits.idle_timeout_ms = 3000;
        config.limits.header_read_timeout_ms = 1000;
    })
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    stream.write_all(HEALTH).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stream.write_all(HEALTH).await.expect("write after 2 s idle");
    assert_eq!(
        read_response(&mut stream).await,
        200,
        "the kept-alive connection outlived the header timeout"
    );
    let idle_from = Instant::now();
    let closed = closed_after(&mut stream, idle_from, Duration::from_secs(6)).await;
    let closed = closed.expect("an idle kept-alive connection is still open 6 s after its 3 s idle timeout");
    eprintln!("idle keep-alive connection closed {closed:?} after its response (idle timeout 3 s)");
    assert_at(closed, Duration::from_millis(3000), IDLE_CLOCK_LEAD, "the idle connection");

    // The start of a next request that never completes: the header timeout from its first byte.
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    stream.write_all(HEALTH).await.expect("write");
    assert_eq!(read_response(&mut stream).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let partial_from = Instant::now();
    stream.write_all(PARTIAL_HEAD).await.expect("write");
    let closed = closed_after(&mut stream, partial_from, Duration::from_secs(4)).await;
    let closed = closed.expect("a half-sent second head is still open 4 s after its 1 s header timeout");
    eprintln!(
        "a half-sent second head closed {closed:?} after its first byte (header timeout 1 s, idle 3 s)"
    );
    assert_at(closed, Duration::from_millis(1000), Duration::from_millis(2), "the half-sent second head");

    // A request in flight is not idle: a 2.5 s read-your-writes wait outlives both timeouts.
    let started = Instant::now();
    let reply = server.get("/api/queries/orders/o-never?minVersion=1&timeoutMs=2500").await;
    reply.assert_error(504, "PROJECTION_TIMEOUT");
    assert!(started.elapsed() >= Duration::from_millis(2400), "{:?}", started.elapsed());

    // Nor is a WebSocket after its upgrade: it still gets notifications after both timeouts.
    let mut ws = server.websocket().await;
    ws.request("subscribe", &["o-ws"]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    server
        .accepted(
            "PlaceOrder",
            json!({"aggregateId": "o-ws", "customerId": "c", "items": [{"productId": "p", "quantity": 1}]}),
        )
        .await;
    let note = ws.next().await;
    assert_eq!(
        (note["type"].as_str(), note["aggregateId"].as_str()),
        (Some("projection_updated"), Some("o-ws"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_clients_take_the_slots_of_idle_sockets() {
    const MAX: usize = 50;
    let server = TestServer::start_with(|config| config.limits.max_connections = MAX).await;
    let addr = address(&server);
    let client = fresh_connections();
    live(&client, &server).await; // the server is up
    let mut silent = Vec::new();
    for _ in 0..MAX {
        silent.push(watch(addr, b"").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 30 more silent sockets: each takes the slot of the oldest.
    for _ in 0..30 {
        silent.push(watch(addr, b"").await);
    }
    for (n, watched) in silent.iter_mut().take(30).enumerate() {
        assert!(
            closes_within(watched, Duration::from_secs(2)).await.is_some(),
            "silent socket {n}, among the oldest, was not closed for a new one"
        );
    }
    // Liveness on new connections: served, each in the slot of the oldest idle socket left.
    let mut probes = Vec::new();
    for _ in 0..20 {
        probes.push(live(&client, &server).await);
    }
    eprintln!(
        "/health/live beyond max-connections {MAX}: median {:?}, max {:?}",
        percentile(&probes, 0.5),
        percentile(&probes, 1.0)
    );
    assert!(percentile(&probes, 0.9) < Duration::from_millis(100), "{probes:?}");
    place_order(&client, &server).await;
    // The newest sockets were left alone.
    for (n, watched) in silent.iter_mut().enumerate().skip(MAX + 30 - 20) {
        assert!(
            closes_within(watched, Duration::from_millis(100)).await.is_none(),
            "silent socket {n} was closed"
        );
    }
    drop(silent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_serves_a_request_a_new_one_is_closed_at_once() {
    const MAX: usize = 20;
    let server = TestServer::start_with(|config| config.limits.max_connections = MAX).await;
    live(&fresh_connections(), &server).await; // the server is up
    // MAX requests in flight (read-your-writes waits of 3 s), one connection each, each head sent
    // right after connecting (a connection that has not sent its head yet would be one to
    // replace).
    let addr = address(&server);
    let mut waits = Vec::new();
    for n in 0..MAX {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "GET /api/queries/orders/o-wait-{n}?minVersion=1&timeoutMs=3000 HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        waits.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = fresh_connections().get(server.url("/health/live")).send().await;
    let refused_in = started.elapsed();
    eprintln!("beyond max-connections {MAX} with every slot busy: refused in {refused_in:?}");
    assert!(refused.is_err(), "a connection beyond the cap, with no idle one to replace, must be closed");
    assert!(refused_in < Duration::from_secs(1), "refused only after {refused_in:?}");
    // The requests in flight were not disturbed, and once they are done new clients are served.
    for (n, wait) in waits.iter_mut().enumerate() {
        assert_eq!(read_response(wait).await, 504, "wait {n}");
    }
    live(&fresh_connections(), &server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_waiting_sockets_at_once_and_lets_requests_finish() {
    // A long header timeout: only the shutdown can close these sockets quickly.
    let server = TestServer::start_with(|config| config.limits.header_read_timeout_ms = 60_000).await;
    let addr = address(&server);
    live(&fresh_connections(), &server).await; // the server is up
    let mut partial = Vec::new();
    for _ in 0..100 {
        partial.push(watch(addr, PARTIAL_HEAD).await);
    }
    let url = server.url("/api/queries/orders/o-late?minVersion=1&timeoutMs=1500");
    let in_flight =
        tokio::spawn(async move { fresh_connections().get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    server.stop().await; // asserts that run() returns within 5 s
    eprintln!("stopped in {:?} with 100 half-sent heads open and a request in flight", stopping.elapsed());
    assert_eq!(in_flight.await.expect("task").expect("the request in flight was answered"), 504);
    for (n, watched) in partial.iter_mut().enumerate() {
        let closed = closes_within(watched, Duration::from_secs(1)).await;
        assert!(
            closed.is_some_and(|at| at - stopping < Duration::from_secs(2)),
            "socket {n} outlived the shutdown"
        );
    }
}
