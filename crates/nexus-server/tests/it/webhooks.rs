//! Contract §9 end to end: the router sends a non-core event to the queue path, a webhook
//! consumer POSTs it in CloudEvents binary mode with an HMAC signature, failures are retried with
//! backoff and dead-lettered after 5 attempts, and the dead-letter queue's admin API retries and
//! archives. The endpoint is a real HTTP server on port 0.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, TestServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

/// What the endpoint received, and the status it answers.
#[derive(Clone, Default)]
struct Endpoint {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes, Instant)>>>,
    status: Arc<AtomicU16>,
}

impl Endpoint {
    async fn start(status: u16) -> (Self, String) {
        let endpoint = Endpoint::default();
        endpoint.status.store(status, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(e): State<Endpoint>, headers: HeaderMap, body: Bytes| async move {
                        e.requests.lock().unwrap().push((headers, body, Instant::now()));
                        StatusCode::from_u16(e.status.load(Ordering::SeqCst)).unwrap()
                    },
                ),
            )
            .with_state(endpoint.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (endpoint, url)
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    async fn wait_for(&self, count: usize) {
        let started = Instant::now();
        while self.count() < count {
            assert!(started.elapsed() < DEADLINE, "{} of {count} requests arrived", self.count());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn post(server: &TestServer, path: &str, body: Value) -> crate::support::Reply {
    crate::support::Reply::read(server.http.post(server.url(path)).json(&body).send().await.unwrap()).await
}

async fn dead_letters(server: &TestServer) -> Vec<Value> {
    let reply = server.get("/api/admin/dlq").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["items"].as_array().unwrap().clone()
}

async fn register_user(server: &TestServer, email: &str) -> String {
    let body = json!({"firstName": "Ada", "lastName": "Lovelace", "email": email});
    server.accepted("RegisterUser", body).await["aggregateId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_gets_five_attempts_then_the_dlq_then_one_signed_retry() {
    let server = TestServer::start_with(|config| {
        config.queue.retry_base_ms = 10;
        config.queue.dlq_process_interval_secs = 0;
    })
    .await;
    five_attempts_dlq_and_one_signed_retry(&server).await;
    server.stop().await;
}

/// The same on RabbitMQ (`NEXUS_TEST_AMQP_URL`, default the local broker), in a fresh namespace
/// deleted at the end. An unreachable broker fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_a_failing_endpoint_gets_five_attempts_then_the_dlq_then_one_signed_retry() {
    let url = std::env::var("NEXUS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::start_with(|config| {
        config.queue.retry_base_ms = 10;
        config.queue.dlq_process_interval_secs = 0;
        config.queue.url = Some(url.clone());
        config.queue.namespace = Some(namespace.clone());
    })
    .await;
    let hook = five_attempts_dlq_and_one_signed_retry(&server).await;
    let deleted =
        server.http.delete(server.url(&format!("/api/admin/webhooks/{hook}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204, "deleting the webhook deletes its queues");
    server.stop().await;
    let queue = nexus_rabbitmq::RabbitEventQueue::connect(&url, &namespace).await.unwrap();
    queue.destroy().await.unwrap();
}

/// Returns the webhook's id.
async fn five_attempts_dlq_and_one_signed_retry(server: &TestServer) -> String {
    let (endpoint, url) = Endpoint::start(500).await;
    let created = post(
        server,
        "/api/admin/webhooks",
        json!({"url": url, "eventTypes": ["UserRegistered"], "secret": "s3cret"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let hook_id = created.body["id"].as_str().unwrap().to_owned();
    let listed = server.get("/api/admin/webhooks").await;
    assert_eq!(listed.body["items"][0]["id"], hook_id.as_str());
    assert_eq!(listed.body["items"][0]["url"], url.as_str());
    assert!(listed.body["items"][0].get("secret").is_none(), "the secret is never shown");

    let user = register_user(server, "ada@example.com").await;

    endpoint.wait_for(5).await;
    let started = Instant::now();
    let letters = loop {
        let letters = dead_letters(server).await;
        if !letters.is_empty() {
            break letters;
        }
        assert!(started.elapsed() < DEADLINE, "no dead letter appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.count(), 5, "exactly 5 attempts, then no more");
    let times: Vec<Instant> = endpoint.requests.lock().unwrap().iter().map(|r| r.2).collect();
    for (gap, expected) in times.windows(2).map(|w| w[1] - w[0]).zip([10u64, 20, 40, 80]) {
        assert!(gap >= Duration::from_millis(expected - 2), "backoff {gap:?} shorter than {expected} ms");
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["eventType"], "UserRegistered");
    assert_eq!(letter["consumer"], format!("webhook-{hook_id}"));
    assert_eq!(letter["retryCount"], 5);
    assert!(letter["failureReason"].as_str().unwrap().contains("HTTP 500"), "{letter}");
    assert!(letter["firstFailureTime"].as_str().unwrap() <= letter["lastFailureTime"].as_str().unwrap());
    let event_id = letter["eventId"].as_str().unwrap().to_owned();

    // The endpoint recovers; an operator retries the dead letter: one delivery, signed.
    endpoint.status.store(200, Ordering::SeqCst);
    let id = letter["id"].as_str().unwrap();
    let retried = post(server, &format!("/api/admin/dlq/{id}/retry"), json!({})).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    endpoint.wait_for(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.count(), 6, "the retry delivers once");
    assert!(dead_letters(server).await.is_empty(), "the dead letter is no longer waiting");
    post(server, &format!("/api/admin/dlq/{id}/retry"), json!({})).await.assert_error(404, "NOT_FOUND");

    let (headers, body, _) = endpoint.requests.lock().unwrap()[5].clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let signature = header("x-nexus-signature");
    {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&body);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature, expected, "X-Nexus-Signature is the hex HMAC-SHA256 of the body");
    }
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(header("ce-id"), event_id);
    assert_eq!(header("ce-type"), "UserRegistered");
    assert_eq!(header("ce-source"), "nexus");
    assert_eq!(header("ce-subject"), user);
    assert!(header("content-type").starts_with("application/json"));
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["eventId"], event_id.as_str());
    assert_eq!(event["payload"]["email"], "ada@example.com");
    assert_eq!(header("ce-time"), event["timestamp"].as_str().unwrap());

    let metrics = server.get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("nexus_events_routed_total{path=\"queue\"}"), "routed metric missing");
    assert!(metrics.contains("nexus_delivery_attempts_total"), "attempts metric missing");
    hook_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_filter_types_and_can_be_deleted() {
    let server = TestServer::start_with(|config| config.queue.retry_base_ms = 10).await;
    let (endpoint, url) = Endpoint::start(204).await;

    let bad = post(
        &server,
        "/api/admin/webhooks",
        json!({"url": "ftp://x", "eventTypes": ["OrderPlaced", "Nope"]}),
    )
    .await;
    let mut fields = bad.error_fields();
    fields.sort();
    // A core event type is accepted (see `webhooks_any`); an unknown one is not.
    assert_eq!(fields, ["eventTypes[1]", "url"]);

    let created =
        post(&server, "/api/admin/webhooks", json!({"url": url, "eventTypes": ["UserRegistered"]})).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    // An event of a type not subscribed to is not delivered; the subscribed one is, unsigned
    // without a secret.
    server.accepted("OpenAccount", json!({"creditLimit": 100})).await;
    register_user(&server, "grace@example.com").await;
    endpoint.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(endpoint.count(), 1);
    let headers = endpoint.requests.lock().unwrap()[0].0.clone();
    assert_eq!(headers.get("ce-type").unwrap(), "UserRegistered");
    assert!(headers.get("x-nexus-signature").is_none());

    let deleted = server.http.delete(server.url(&format!("/api/admin/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let again = server.http.delete(server.url(&format!("/api/admin/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(server.get("/api/admin/webhooks").await.body["items"], json!([]));
    register_user(&server, "alan@example.com").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(endpoint.count(), 1, "a deleted webhook gets nothing more");
    server.stop().await;
}
