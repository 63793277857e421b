//! Contract §9: webhooks on any event type, core ones included (`"*"` = all); one aggregate's
//! deliveries in order when one of them is retried; and the guard against webhook targets inside
//! the network when the server listens beyond loopback. Endpoints are real HTTP servers on
//! 127.0.0.1, port 0; the guard's test only registers (nothing is delivered to the refused or
//! accepted private targets).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, Reply, TestServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use nexus_server::config::ApiKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One request an endpoint received: its headers, body, when, and the status it answered.
#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    fn event_type(&self) -> String {
        self.header("ce-type")
    }

    fn subject(&self) -> String {
        self.header("ce-subject")
    }
}

/// An endpoint answering `204`, except `500` to the first request whose `ce-type` and
/// `ce-subject` are `fail_first` (when set).
#[derive(Clone, Default)]
struct Endpoint {
    requests: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<Mutex<Option<(String, String)>>>,
}

impl Endpoint {
    async fn start() -> (Self, String) {
        let endpoint = Endpoint::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(e): State<Endpoint>, headers: HeaderMap, body: Bytes| async move {
                        let ce =
                            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
                        let failing = {
                            let mut fail = e.fail_first.lock().unwrap();
                            let hit = fail
                                .as_ref()
                                .is_some_and(|(t, s)| t == ce("ce-type") && s == ce("ce-subject"));
                            if hit {
                                *fail = None;
                            }
                            hit
                        };
                        let status = if failing { 500 } else { 204 };
                        e.requests.lock().unwrap().push(Received {
                            headers,
                            body,
                            at: Instant::now(),
                            status,
                        });
                        StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (endpoint, url)
    }

    fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(started.elapsed() < DEADLINE, "{} of {count} requests arrived", received.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn register(server: &TestServer, body: Value) -> Reply {
    Reply::read(server.http.post(server.url("/api/admin/webhooks")).json(&body).send().await.unwrap()).await
}

async fn registered(server: &TestServer, body: Value) -> String {
    let reply = register(server, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

fn place(order: &str) -> Value {
    json!({"aggregateId": order, "customerId": "c-1", "items": [{"productId": "p-1", "quantity": 2, "unitPrice": 5}]})
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_event_webhook_receives_place_order_signed_in_cloudevents_binary_mode() {
    let server = TestServer::start().await;
    let (endpoint, url) = Endpoint::start().await;
    registered(&server, json!({"url": url, "eventTypes": ["OrderPlaced"], "secret": "s3cret"})).await;

    server.accepted("PlaceOrder", place("order-1")).await;
    server.accepted("ConfirmOrder", json!({"aggregateId": "order-1"})).await;
    let received = endpoint.wait_for(1).await;
    let event = server.events_of("order-1").await[0].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.received().len(), 1, "OrderConfirmed is not subscribed to");

    let request = &received[0];
    assert_eq!(request.header("x-nexus-signature"), hmac_hex("s3cret", &request.body));
    assert_eq!(request.header("ce-specversion"), "1.0");
    assert_eq!(request.header("ce-id"), event["eventId"].as_str().unwrap());
    assert_eq!(request.header("ce-type"), "OrderPlaced");
    assert_eq!(request.header("ce-source"), "nexus");
    assert_eq!(request.header("ce-subject"), "order-1");
    assert_eq!(request.header("ce-time"), event["timestamp"].as_str().unwrap());
    assert!(request.header("content-type").starts_with("application/json"));
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["eventId"], event["eventId"]);
    assert_eq!(body["payload"]["total"], 10.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_webhook_receives_every_type_and_the_others_only_theirs() {
    let server = TestServer::start().await;
    let (everything, all_url) = Endpoint::start().await;
    let (users, users_url) = Endpoint::start().await;
    registered(&server, json!({"url": all_url, "eventTypes": ["*"]})).await;
    registered(&server, json!({"url": users_url, "eventTypes": ["UserRegistered"]})).await;
    let listed = server.get("/api/admin/webhooks").await;
    assert_eq!(listed.body["items"][0]["eventTypes"], json!(["*"]));

    server.accepted("PlaceOrder", place("order-2")).await;
    let user = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"});
    server.accepted("RegisterUser", user).await;
    server.accepted("OpenAccount", json!({"creditLimit": 100})).await;

    let received = everything.wait_for(3).await;
    users.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut types: Vec<String> = everything.received().iter().map(Received::event_type).collect();
    types.sort();
    assert_eq!(types, ["AccountOpened", "OrderPlaced", "UserRegistered"], "core and queue path alike");
    assert_eq!(received.len(), 3);
    // Core events reach the queue path now, and this webhook's queue too: it delivers none of them.
    let theirs: Vec<String> = users.received().iter().map(Received::event_type).collect();
    assert_eq!(theirs, ["UserRegistered"]);
    server.stop().await;
}

/// Registrations are as durable as events: after a restart, the router copies the core events a
/// registered webhook wants from its first batch on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_core_event_webhook_still_receives_its_events() {
    let server = TestServer::start().await;
    let (endpoint, url) = Endpoint::start().await;
    registered(&server, json!({"url": url, "eventTypes": ["OrderPlaced"]})).await;
    let server = TestServer::start_in(server.stop().await).await;
    server.accepted("PlaceOrder", place("order-3")).await;
    let received = endpoint.wait_for(1).await;
    assert_eq!((received[0].event_type(), received[0].subject()), ("OrderPlaced".into(), "order-3".into()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_types_and_bad_urls_are_refused() {
    let server = TestServer::start().await;
    let bad = register(&server, json!({"url": "http://127.0.0.1:9/hook", "eventTypes": ["Nope"]})).await;
    assert_eq!(bad.error_fields(), ["eventTypes[0]"]);
    assert!(bad.body.to_string().contains("Nope"), "{}", bad.body);
    let bad = register(
        &server,
        json!({"url": "http://127.0.0.1:9/", "eventTypes": ["OrderPlaced", "*", "orderplaced"]}),
    )
    .await;
    assert_eq!(bad.error_fields(), ["eventTypes[2]"], "names are exact");
    for url in ["ftp://127.0.0.1/hook", "http://user:pw@127.0.0.1:9/hook", "not a url"] {
        let bad = register(&server, json!({"url": url, "eventTypes": ["*"]})).await;
        assert_eq!(bad.error_fields(), ["url"], "{url}");
    }
    assert_eq!(server.get("/api/admin/webhooks").await.body["items"], json!([]), "nothing registered");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_aggregate_s_events_arrive_in_order_while_a_delivery_is_retried() {
    let server = TestServer::start_with(|config| {
        config.queue.retry_base_ms = 500;
        config.queue.dlq_process_interval_secs = 0;
    })
    .await;
    in_order_while_retried(&server).await;
    server.stop().await;
}

/// The same on RabbitMQ, where a retried delivery comes back behind the aggregate's later events
/// (`NEXUS_TEST_AMQP_URL`, default the local broker; an unreachable one fails the test), in a fresh
/// namespace deleted at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_one_aggregate_s_events_arrive_in_order_while_a_delivery_is_retried() {
    let url = std::env::var("NEXUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start_with(|config| {
        config.queue.retry_base_ms = 500;
        config.queue.dlq_process_interval_secs = 0;
        config.queue.url = Some(url.clone());
        config.queue.namespace = Some(namespace.clone());
    })
    .await;
    let hook = in_order_while_retried(&server).await;
    let deleted =
        server.http.delete(server.url(&format!("/api/admin/webhooks/{hook}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    server.stop().await;
    let queue = nexus_rabbitmq::RabbitEventQueue::connect(&url, &namespace).await.unwrap();
    queue.destroy().await.unwrap();
}

/// The endpoint fails the first delivery of order A's `OrderPlaced`; A's later events wait for
/// its retry, order B's go on meanwhile. Returns the webhook's id.
async fn in_order_while_retried(server: &TestServer) -> String {
    let (endpoint, url) = Endpoint::start().await;
    *endpoint.fail_first.lock().unwrap() = Some(("OrderPlaced".into(), "order-a".into()));
    let hook = registered(
        server,
        json!({"url": url, "eventTypes": ["OrderPlaced", "OrderConfirmed", "OrderShipped"]}),
    )
    .await;

    server.accepted("PlaceOrder", place("order-a")).await;
    server.accepted("ConfirmOrder", json!({"aggregateId": "order-a"})).await;
    server.accepted("ShipOrder", json!({"aggregateId": "order-a"})).await;
    server.accepted("PlaceOrder", place("order-b")).await;

    // One failure, then A's three events and B's one.
    endpoint.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = endpoint.received();
    let of_a: Vec<(String, u16)> =
        received.iter().filter(|r| r.subject() == "order-a").map(|r| (r.event_type(), r.status)).collect();
    assert_eq!(
        of_a,
        [
            ("OrderPlaced".to_owned(), 500),
            ("OrderPlaced".to_owned(), 204),
            ("OrderConfirmed".to_owned(), 204),
            ("OrderShipped".to_owned(), 204),
        ],
        "A's later events wait until its first one is delivered"
    );
    let retried = received.iter().find(|r| r.subject() == "order-a" && r.status == 204).unwrap();
    let first = received.iter().find(|r| r.subject() == "order-a").unwrap();
    assert!(retried.at - first.at >= Duration::from_millis(450), "retried after the backoff");
    let of_b: Vec<&Received> = received.iter().filter(|r| r.subject() == "order-b").collect();
    assert_eq!(of_b.len(), 1);
    assert!(of_b[0].at < retried.at, "B is not held behind A's retry");
    assert_eq!(received.len(), 5);
    hook
}

const OPERATOR_KEY: &str = "an-operator-key-for-the-guard-test";

/// A server that says it listens on every interface (its test listener is still 127.0.0.1): auth
/// is then required, so requests carry an admin API key.
async fn beyond_loopback(allow_private_targets: bool) -> TestServer {
    TestServer::start_with(|config| {
        config.listen = "0.0.0.0:8080".parse().unwrap();
        config.webhooks.allow_private_targets = allow_private_targets;
        config.auth.api_keys = vec![ApiKey {
            subject: "operator".into(),
            key_sha256: Sha256::digest(OPERATOR_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect(),
            scopes: vec!["admin".into()],
        }];
    })
    .await
}

async fn register_as_operator(server: &TestServer, url: &str) -> Reply {
    // An event type nothing in these tests emits: even an accepted webhook receives nothing.
    let body = json!({"url": url, "eventTypes": ["PaymentRefunded"]});
    let request = server.http.post(server.url("/api/admin/webhooks")).header("x-api-key", OPERATOR_KEY);
    Reply::read(request.json(&body).send().await.unwrap()).await
}

async fn delete_as_operator(server: &TestServer, id: &str) {
    let url = server.url(&format!("/api/admin/webhooks/{id}"));
    let deleted = server.http.delete(url).header("x-api-key", OPERATOR_KEY).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
}

const INSIDE: [&str; 6] = [
    "http://10.1.2.3/hook",
    "http://169.254.169.254/",
    "http://127.0.0.1:9/",
    "http://[::1]:9/",
    "http://[fd00::1]/hook",
    "http://localhost:9/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_targets_inside_the_network_are_refused() {
    let server = beyond_loopback(false).await;
    let anonymous =
        register(&server, json!({"url": "http://10.1.2.3/hook", "eventTypes": ["PaymentRefunded"]})).await;
    anonymous.assert_error(401, "UNAUTHENTICATED");
    for url in INSIDE {
        let refused = register_as_operator(&server, url).await;
        assert_eq!(refused.error_fields(), ["url"], "{url}: {}", refused.body);
        let message = refused.body["fields"][0]["error"].as_str().unwrap();
        assert!(message.contains("allow-private-targets") || message.contains("resolve"), "{url}: {message}");
    }
    // Credentials in the URL and other schemes are refused wherever the server listens.
    for url in ["http://user:pw@example.com/hook", "gopher://example.com/"] {
        assert_eq!(register_as_operator(&server, url).await.error_fields(), ["url"], "{url}");
    }
    // A public address is accepted (an IP literal: nothing is resolved, nothing is sent).
    let public = register_as_operator(&server, "http://93.184.216.34/hook").await;
    assert_eq!(public.status, 201, "{}", public.body);
    delete_as_operator(&server, public.body["id"].as_str().unwrap()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_targets_accepts_them_beyond_loopback() {
    let server = beyond_loopback(true).await;
    for url in INSIDE {
        let accepted = register_as_operator(&server, url).await;
        assert_eq!(accepted.status, 201, "{url}: {}", accepted.body);
        delete_as_operator(&server, accepted.body["id"].as_str().unwrap()).await;
    }
    server.stop().await;
}
