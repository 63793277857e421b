//! Real servers on port 0 for the API tests (the reference domain on
//! [`nexus_server::testing::TestServer`]), and a WebSocket client that speaks to them.
//!
//! Every test starts its own [`TestServer`] in its own temporary data directory, so tests share
//! nothing but the process-wide metrics recorder.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
// Not every test binary that includes this module uses both.
use nexus_server::Config;
#[allow(unused_imports)]
pub use nexus_server::testing::{DEADLINE, Reply};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The framework's test server with the reference domain.
pub struct TestServer(nexus_server::testing::TestServer);

impl std::ops::Deref for TestServer {
    type Target = nexus_server::testing::TestServer;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TestServer {
    /// Starts a server in a fresh temporary data directory.
    pub async fn start() -> Self {
        Self(nexus_server::testing::TestServer::start(nexus_domain::domain()).await)
    }

    /// Starts a server on an existing data directory (a restart keeps its state).
    pub async fn start_in(dir: TempDir) -> Self {
        Self(nexus_server::testing::TestServer::start_in(nexus_domain::domain(), dir).await)
    }

    /// Starts a server in a fresh directory with `configure` applied to the default config.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self(nexus_server::testing::TestServer::start_with(nexus_domain::domain(), configure).await)
    }

    /// Stops the server cleanly (asserting it stops) and hands back the data directory.
    pub async fn stop(self) -> TempDir {
        self.0.stop().await
    }

    pub async fn websocket(&self) -> Ws {
        let url = format!("{}/api/subscriptions", self.base.replacen("http://", "ws://", 1));
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect");
        Ws { stream }
    }

    /// A WebSocket from another loopback address: another client, as far as per-client limits go.
    pub async fn websocket_from(&self, local: &str) -> Ws {
        let url = format!("{}/api/subscriptions", self.base.replacen("http://", "ws://", 1));
        let addr: std::net::SocketAddr =
            self.base.trim_start_matches("http://").parse().expect("server address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{local}:0").parse().expect("local address")).expect("bind");
        let tcp = socket.connect(addr).await.expect("connect");
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("WebSocket handshake");
        Ws { stream }
    }
}

/// A WebSocket client of `/api/subscriptions`.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn send(&mut self, message: Value) {
        self.stream.send(Message::text(message.to_string())).await.expect("WebSocket send");
    }

    /// The next JSON text message within `within`; `None` when none came in time. Panics when the
    /// connection ends.
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("the WebSocket closed"),
                Ok(Some(message)) => message.expect("WebSocket receive"),
            };
            match message {
                Message::Text(text) => return Some(serde_json::from_str(&text).expect("JSON message")),
                Message::Close(frame) => panic!("the WebSocket closed: {frame:?}"),
                _ => continue, // ping/pong
            }
        }
    }

    /// The next JSON message; fails the test when none comes within [`DEADLINE`].
    pub async fn next(&mut self) -> Value {
        self.next_within(DEADLINE).await.expect("no WebSocket message within the deadline")
    }

    /// Sends `{"type": kind, "aggregateIds": ids}` and asserts the acknowledgement.
    pub async fn request(&mut self, kind: &str, ids: &[&str]) {
        self.send(json!({"type": kind, "aggregateIds": ids})).await;
        let answer = self.next().await;
        assert_eq!(answer, json!({"type": format!("{kind}d"), "aggregateIds": ids}), "answer to {kind}");
    }

    /// Whether the server ends the connection (close frame or end of stream) within `within`,
    /// skipping other messages.
    pub async fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Whether `text` is an ISO 8601 UTC timestamp with milliseconds (`2026-11-27T02:35:45.123Z`),
/// i.e. matches `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`.
pub fn is_iso_millis(text: &str) -> bool {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(c, &s)| if s == b'd' { c.is_ascii_digit() } else { c == s })
}
