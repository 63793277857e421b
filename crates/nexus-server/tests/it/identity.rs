//! Contract §3: when a credential authenticated a request, `metadata.userId` of every event it
//! appends is the credential's subject, whatever the body says; without auth it is the body's
//! `userId`, or `anonymous`. For commands (flat body and full envelope), sagas started over HTTP
//! (the saga's events and its steps' events) and raw event imports.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{Reply, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_server::config::{ApiKey, AuthMode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SECRET: &str = "an-identity-test-secret-of-32-bytes!";
const SERVICE_KEY: &str = "identity-test-service-key";
const ADMIN_KEY: &str = "identity-test-admin-key";

fn token(subject: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({"sub": subject, "scope": "commands queries", "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn key(subject: &str, key: &str, scopes: &[&str]) -> ApiKey {
    ApiKey {
        subject: subject.into(),
        key_sha256: Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn with_auth() -> TestServer {
    TestServer::start_with(|config| {
        config.auth.mode = AuthMode::On;
        config.auth.jwt_hs256_secret = Some(SECRET.into());
        config.auth.api_keys = vec![
            key("order-service", SERVICE_KEY, &["commands", "queries"]),
            key("migration-tool", ADMIN_KEY, &["admin", "queries"]),
        ];
    })
    .await
}

/// A request with `credential` as its only header (`None`: no credential).
async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    credential: Option<(&str, String)>,
    body: Option<Value>,
) -> Reply {
    let mut request = server.http.request(method.parse().unwrap(), server.url(path));
    if let Some((name, value)) = credential {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::read(request.send().await.expect("request")).await
}

fn bearer(subject: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {}", token(subject))))
}

fn api_key(key: &str) -> Option<(&'static str, String)> {
    Some(("x-api-key", key.to_owned()))
}

/// The `userId` of every event of `aggregate_id`, read with `credential`.
async fn user_ids(
    server: &TestServer,
    aggregate_id: &str,
    credential: Option<(&str, String)>,
) -> Vec<String> {
    let reply = send(server, "GET", &format!("/api/events/{aggregate_id}"), credential, None).await;
    assert_eq!(reply.status, 200, "events of {aggregate_id}: {}", reply.body);
    let events = reply.body["events"].as_array().expect("events");
    assert!(!events.is_empty(), "{aggregate_id} has no events");
    events.iter().map(|e| e["metadata"]["userId"].as_str().expect("userId").to_owned()).collect()
}

fn order(id: &str) -> Value {
    json!({"aggregateId": id, "customerId": "c", "items": [{"productId": "p", "quantity": 1}]})
}

/// `order(id)` with `metadata` among its envelope keys.
fn order_claiming(id: &str, metadata: Value) -> Value {
    let mut body = order(id);
    body["metadata"] = metadata;
    body
}

/// The same command as the seed's full `Command` envelope.
fn envelope(id: &str, metadata: Value) -> Value {
    json!({
        "commandType": "PlaceOrder",
        "aggregateId": id,
        "payload": {"customerId": "c", "items": [{"productId": "p", "quantity": 1}]},
        "metadata": metadata
    })
}

fn saga(product: &str, metadata: Value) -> Value {
    json!({
        "sagaType": "Restock",
        "steps": [{"stepId": "add", "command": {"commandType": "AddStock", "aggregateId": product, "payload": {"quantity": 3}}}],
        "metadata": metadata
    })
}

/// Starts the saga and waits until it completed; returns its id.
async fn completed_saga(server: &TestServer, body: Value, credential: Option<(&str, String)>) -> String {
    let reply = send(server, "POST", "/api/sagas", credential.clone(), Some(body)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let saga_id = reply.body["sagaId"].as_str().expect("sagaId").to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply =
            send(server, "GET", &format!("/api/sagas/{saga_id}/status"), credential.clone(), None).await;
        if reply.status == 200 && reply.body["status"] == "COMPLETED" {
            return saga_id;
        }
        assert!(Instant::now() < deadline, "saga {saga_id} did not complete: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn import(metadata: Value) -> Value {
    json!({"events": [{
        "eventType": "UserRegistered",
        "payload": {"fullName": "Ada Lovelace", "email": "ada@example.com"},
        "metadata": metadata
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_command_appends_the_credential_subject_whatever_the_body_claims() {
    let server = with_auth().await;
    let mallory = json!({"userId": "mallory", "correlationId": "corr-1"});

    // A JWT, flat body and full envelope.
    let reply = send(
        &server,
        "POST",
        "/api/commands/PlaceOrder",
        bearer("alice"),
        Some(order_claiming("o-jwt", mallory.clone())),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(user_ids(&server, "o-jwt", bearer("alice")).await, ["alice"]);
    let reply = send(
        &server,
        "POST",
        "/api/commands/PlaceOrder",
        bearer("alice"),
        Some(envelope("o-env", mallory.clone())),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(user_ids(&server, "o-env", bearer("alice")).await, ["alice"]);

    // An API key; and the other metadata is still the body's.
    let reply = send(
        &server,
        "POST",
        "/api/commands/PlaceOrder",
        api_key(SERVICE_KEY),
        Some(order_claiming("o-key", mallory.clone())),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let reply = send(&server, "GET", "/api/events/o-key", api_key(SERVICE_KEY), None).await;
    let metadata = &reply.body["events"][0]["metadata"];
    assert_eq!(
        (&metadata["userId"], &metadata["correlationId"]),
        (&json!("order-service"), &json!("corr-1")),
        "{}",
        reply.body
    );
    // Claiming nothing: the subject too, not `anonymous`.
    let reply = send(
        &server,
        "POST",
        "/api/commands/ConfirmOrder",
        bearer("bob"),
        Some(json!({"aggregateId": "o-key"})),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(user_ids(&server, "o-key", api_key(SERVICE_KEY)).await, ["order-service", "bob"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_saga_and_import_append_the_credential_subject() {
    let server = with_auth().await;
    let mallory = json!({"userId": "mallory"});

    // The saga's own events and those of its steps' commands.
    let saga_id = completed_saga(&server, saga("p-saga", mallory.clone()), bearer("alice")).await;
    assert_eq!(user_ids(&server, "p-saga", bearer("alice")).await, ["alice"]);
    let saga_users = user_ids(&server, &saga_id, bearer("alice")).await;
    assert!(saga_users.len() >= 2 && saga_users.iter().all(|u| u == "alice"), "{saga_users:?}");

    // A raw import: the importing key's subject, not the userId of the imported metadata.
    let body = import(json!({"schemaVersion": "1", "userId": "mallory"}));
    let reply = send(&server, "POST", "/api/events/u-import", api_key(ADMIN_KEY), Some(body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(user_ids(&server, "u-import", api_key(ADMIN_KEY)).await, ["migration-tool"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_the_body_user_id_is_kept_and_absent_is_anonymous() {
    let server = TestServer::start().await;
    // The server ignores credentials it does not ask for: no subject to impose.
    let reply = send(
        &server,
        "POST",
        "/api/commands/PlaceOrder",
        bearer("alice"),
        Some(order_claiming("o-1", json!({"userId": "mallory"}))),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(user_ids(&server, "o-1", None).await, ["mallory"]);
    assert_eq!(server.command("PlaceOrder", envelope("o-2", json!({"userId": "carol"}))).await.status, 202);
    assert_eq!(user_ids(&server, "o-2", None).await, ["carol"]);
    assert_eq!(server.command("PlaceOrder", order("o-3")).await.status, 202);
    assert_eq!(user_ids(&server, "o-3", None).await, ["anonymous"]);

    completed_saga(&server, saga("p-saga", json!({"userId": "dave"})), None).await;
    assert_eq!(user_ids(&server, "p-saga", None).await, ["dave"]);

    let reply = send(
        &server,
        "POST",
        "/api/events/u-import",
        None,
        Some(import(json!({"schemaVersion": "1", "userId": "erin"}))),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(user_ids(&server, "u-import", None).await, ["erin"]);
    server.stop().await;
}
