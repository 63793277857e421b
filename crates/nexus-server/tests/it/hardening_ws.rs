//! Findings of an adversarial probe, each held by a test through the real server:
//! - a WebSocket connection follows a bounded number of aggregate ids (`[limits]
//!   ws-subscriptions-per-connection`): a `subscribe` over it is refused on the socket, which
//!   keeps working;
//! - a WebSocket message or frame over `[limits] ws-max-message-bytes` closes the connection
//!   (close code 1009) instead of being read whole;
//! - a webhook delivery never follows a redirect: a `3xx` is a failed delivery, retried, then
//!   dead-lettered, and the redirect's target receives nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, TestServer};
use axum::http::{HeaderMap, StatusCode};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type RawWs = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_websocket(server: &TestServer) -> RawWs {
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connect");
    stream
}

/// How the server ended the connection within the deadline: `Some(code)` for a close frame
/// with a code, `None` for a close without one or the end of the stream. Panics when it stays
/// open or sends anything but a close.
async fn closed(stream: &mut RawWs) -> Option<u16> {
    loop {
        match tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("the server kept the connection open")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

fn order(id: &str) -> Value {
    json!({"aggregateId": id, "customerId": "c", "items": [{"productId": "p", "quantity": 1}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_over_the_bound_is_refused_and_the_connection_keeps_working() {
    // The default bound: 1000 aggregate ids per connection.
    let server = TestServer::start().await;
    let mut ws = server.websocket().await;
    let too_many: Vec<String> = (0..1001).map(|n| format!("o-{n}")).collect();
    ws.send(json!({"type": "subscribe", "aggregateIds": too_many})).await;
    let refused = ws.next().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "VALIDATION_ERROR", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("at most 1000"), "{refused}");

    // Up to the bound is fine; one more is refused as a whole, already followed ids are free.
    let ids: Vec<&str> = too_many[..999].iter().map(String::as_str).collect();
    ws.request("subscribe", &ids).await;
    ws.send(json!({"type": "subscribe", "aggregateIds": ["o-0", "o-999", "o-1000"]})).await;
    assert_eq!(ws.next().await["type"], "error");
    ws.request("subscribe", &["o-0", "hardening-1"]).await;

    // The connection still works: the id subscribed last is followed.
    server.accepted("PlaceOrder", order("hardening-1")).await;
    let note = ws.next().await;
    assert_eq!(
        (note["type"].as_str(), note["aggregateId"].as_str()),
        (Some("projection_updated"), Some("hardening-1")),
        "{note}"
    );
    // ... and the refused ones are not.
    server.accepted("PlaceOrder", order("o-1000")).await;
    if let Some(message) = ws.next_within(Duration::from_millis(500)).await {
        panic!("an id of a refused subscribe was followed: {message}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_on_subscriptions_is_configurable() {
    let server = TestServer::start_with(|config| config.limits.ws_subscriptions_per_connection = 2).await;
    let mut ws = server.websocket().await;
    ws.request("subscribe", &["a", "b"]).await;
    ws.send(json!({"type": "subscribe", "aggregateIds": ["c"]})).await;
    assert_eq!(ws.next().await["code"], "VALIDATION_ERROR");
    ws.request("unsubscribe", &["a"]).await;
    ws.request("subscribe", &["c"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_closes_the_connection() {
    // The default bound: 64 KiB. A message just under it is read ...
    let server = TestServer::start().await;
    let mut ws = server.websocket().await;
    let long_id = "x".repeat(60 * 1024);
    ws.request("subscribe", &[long_id.as_str()]).await;

    // ... one frame of 100 KB is not: the connection closes.
    let mut big = raw_websocket(&server).await;
    let huge_id = "y".repeat(100 * 1024);
    let _ =
        big.send(Message::text(json!({"type": "subscribe", "aggregateIds": [huge_id]}).to_string())).await;
    closed(&mut big).await;

    // Nor is a message of small frames that add up to more.
    let mut fragmented = raw_websocket(&server).await;
    let chunk = "z".repeat(16 * 1024);
    let _ =
        fragmented.feed(Message::Frame(Frame::message(chunk.clone(), OpCode::Data(Data::Text), false))).await;
    for _ in 0..4 {
        let frame = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
        let _ = fragmented.feed(Message::Frame(frame)).await;
    }
    let _ = fragmented.send(Message::Frame(Frame::message("", OpCode::Data(Data::Continue), true))).await;
    closed(&mut fragmented).await;

    // Other connections are unaffected.
    ws.request("subscribe", &["still-here"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_with_close_code_1009() {
    let server = TestServer::start_with(|config| config.limits.ws_max_message_bytes = 4096).await;
    let mut ws = raw_websocket(&server).await;
    let id = "y".repeat(8 * 1024);
    ws.send(Message::text(json!({"type": "subscribe", "aggregateIds": [id]}).to_string())).await.unwrap();
    assert_eq!(closed(&mut ws).await, Some(1009), "close code 1009: message too big");
    server.stop().await;
}

/// An HTTP endpoint on port 0 that records what it receives and answers `answer`.
#[derive(Clone)]
struct Endpoint {
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Endpoint {
    async fn start(answer: (StatusCode, Vec<(&'static str, String)>)) -> (Self, String) {
        let endpoint = Endpoint { requests: Arc::default() };
        let recorded = endpoint.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::any(move |headers: HeaderMap| {
                let (recorded, (status, headers_out)) = (recorded.clone(), answer.clone());
                async move {
                    recorded.requests.lock().unwrap().push(headers);
                    let mut response = axum::response::Response::new(axum::body::Body::empty());
                    *response.status_mut() = status;
                    for (name, value) in headers_out {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (endpoint, url)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_redirect_is_not_followed_but_a_failed_delivery() {
    let server = TestServer::start_with(|config| {
        config.queue.retry_base_ms = 10;
        config.queue.dlq_process_interval_secs = 0;
    })
    .await;
    let (target, target_url) = Endpoint::start((StatusCode::NO_CONTENT, Vec::new())).await;
    let (redirecting, url) =
        Endpoint::start((StatusCode::TEMPORARY_REDIRECT, vec![("location", target_url.clone())])).await;
    let created = server
        .http
        .post(server.url("/api/admin/webhooks"))
        .json(&json!({"url": url, "eventTypes": ["UserRegistered"], "secret": "s3cret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let body = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"});
    server.accepted("RegisterUser", body).await;

    // Five attempts at the registered URL, each a failure, then the dead-letter queue.
    let started = Instant::now();
    let letters = loop {
        let reply = server.get("/api/admin/dlq").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let letters = reply.body["items"].as_array().unwrap().clone();
        if !letters.is_empty() {
            break letters;
        }
        assert!(started.elapsed() < DEADLINE, "no dead letter appeared ({} attempts)", redirecting.count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redirecting.count(), 5, "5 attempts at the registered URL");
    assert_eq!(target.count(), 0, "the redirect's target received nothing");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["retryCount"], 5, "{}", letters[0]);
    let reason = letters[0]["failureReason"].as_str().unwrap();
    assert!(reason.contains("HTTP 307") && reason.contains("redirects are not followed"), "{reason}");
    server.stop().await;
}
