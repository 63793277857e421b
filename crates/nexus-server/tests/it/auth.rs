//! Contract §10 auth: bearer JWTs (HS256, RS256) and API keys with scopes `commands`, `queries`,
//! `admin`; 401 without a valid credential, 403 without the endpoint's scope; health public;
//! WebSocket upgrades with `?access_token=`; rate limits per credential subject.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{Reply, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_server::config::{ApiKey, AuthMode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
/// With the characters a base64 key has, which a browser percent-encodes in a URL.
const ORDER_KEY: &str = "key+of/the=order.service";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(subject: &str, scope: &str, exp: u64) -> String {
    let claims = json!({"sub": subject, "scope": scope, "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn rs256(subject: &str, scopes: &[&str]) -> String {
    let pem = include_str!("fixtures/test_rs256_private.pem");
    let claims = json!({"sub": subject, "scopes": scopes, "exp": now() + 600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.auth.mode = AuthMode::On;
        config.auth.jwt_hs256_secret = Some(SECRET.into());
        config.auth.jwt_rs256_public_key = Some(include_str!("fixtures/test_rs256_public.pem").into());
        config.auth.api_keys = vec![ApiKey {
            subject: "order-service".into(),
            key_sha256: sha256_hex(ORDER_KEY),
            scopes: vec!["commands".into(), "queries".into()],
        }];
        config.rate_limits.search_per_window = 2;
    })
    .await
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> Reply {
    let mut request = server.http.request(method.parse().unwrap(), server.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::read(request.send().await.unwrap()).await
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn place() -> Value {
    json!({"aggregateId": "order-1", "customerId": "c", "items": [{"productId": "p", "quantity": 1}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_scopes() {
    let server = start().await;

    // Health and readiness stay public.
    assert_eq!(send(&server, "GET", "/health/ready", &[], None).await.status, 200);

    // No credential, a bad one, an expired one, a forged one: 401 with a challenge.
    let reply = send(&server, "POST", "/api/commands/PlaceOrder", &[], Some(place())).await;
    reply.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"nexus\""));
    for headers in [
        vec![bearer("not-a-token")],
        vec![bearer(&hs256("svc", "commands", now() - 3600))],
        vec![bearer(&hs256("svc", "commands", now() + 600).replace('.', ".x"))],
        vec![("authorization", format!("Basic {}", "dXNlcjpwYXNz"))],
        // Not valid yet (`nbf` an hour ahead).
        vec![bearer(&{
            let claims = json!({"sub": "svc", "scope": "commands", "exp": now() + 7200, "nbf": now() + 3600});
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        })],
        vec![("x-api-key", "wrong-key".to_owned())],
    ] {
        let reply = send(&server, "POST", "/api/commands/PlaceOrder", &headers, Some(place())).await;
        reply.assert_error(401, "UNAUTHENTICATED");
        assert!(!reply.body["message"].as_str().unwrap().is_empty());
    }
    // A token signed with the HS256 secret but claiming RS256 (algorithm confusion) is refused.
    let confused = {
        let token = hs256("svc", "admin", now() + 600);
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", base64url(&json!({"alg": "RS256", "typ": "JWT"}).to_string()))
    };
    send(&server, "GET", "/api/admin/projections", &[bearer(&confused)], None)
        .await
        .assert_error(401, "UNAUTHENTICATED");

    // A commands-only token sends commands but cannot read.
    let writer = hs256("writer", "commands", now() + 600);
    // The scheme name is case-insensitive.
    let shouted = [("authorization", format!("BEARER {writer}"))];
    let reply = send(&server, "POST", "/api/commands/PlaceOrder", &shouted, Some(place())).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let reply = send(&server, "GET", "/api/queries/orders/order-1", &[bearer(&writer)], None).await;
    reply.assert_error(403, "FORBIDDEN");
    assert!(reply.body["message"].as_str().unwrap().contains("queries"), "{}", reply.body);

    // An API key with commands and queries reads; admin endpoints need admin.
    let key = [("x-api-key", ORDER_KEY.to_owned())];
    let reply = send(&server, "GET", "/api/queries/orders/order-1?minVersion=1", &key, None).await;
    assert_eq!((reply.status, reply.body["status"].as_str()), (200, Some("PLACED")), "{}", reply.body);
    send(&server, "GET", "/api/admin/projections", &key, None).await.assert_error(403, "FORBIDDEN");
    send(&server, "GET", "/metrics", &key, None).await.assert_error(403, "FORBIDDEN");
    let reply = send(&server, "POST", "/api/events/order-9", &key, Some(json!({"events": []}))).await;
    reply.assert_error(403, "FORBIDDEN");

    // RS256 tokens (scopes as an array) work too; admin reaches the admin API.
    let operator = rs256("operator", &["admin"]);
    let reply = send(&server, "GET", "/api/admin/projections", &[bearer(&operator)], None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(send(&server, "GET", "/metrics", &[bearer(&operator)], None).await.status, 200);
    // Each scope grants only itself.
    send(&server, "GET", "/api/queries/orders/order-1", &[bearer(&operator)], None)
        .await
        .assert_error(403, "FORBIDDEN");
    server.stop().await;
}

fn base64url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_take_an_access_token() {
    let server = start().await;
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    let refused = tokio_tungstenite::connect_async(url.clone()).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    let writer = hs256("writer", "commands", now() + 600);
    let refused = tokio_tungstenite::connect_async(format!("{url}?access_token={writer}")).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");

    let reader = hs256("reader", "queries", now() + 600);
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{url}?access_token={reader}")).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    let subscribe = json!({"type": "subscribe", "aggregateIds": ["order-1"]}).to_string();
    socket.send(tokio_tungstenite::tungstenite::Message::text(subscribe)).await.unwrap();
    let reply =
        tokio::time::timeout(crate::support::DEADLINE, socket.next()).await.unwrap().unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // An API key works the same way, percent-encoded as a browser sends it.
    let encoded = reqwest::Url::parse_with_params(&url, [("access_token", ORDER_KEY)]).unwrap();
    assert!(encoded.as_str().contains("%2B"), "{encoded}");
    let (_socket, _) = tokio_tungstenite::connect_async(encoded.as_str()).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_credential_subject() {
    let server = start().await;
    let alice = [bearer(&hs256("alice", "queries", now() + 600))];
    let bob = [bearer(&hs256("bob", "queries", now() + 600))];
    let search = "/api/queries/orders/search?q=anything";
    for _ in 0..2 {
        assert_eq!(send(&server, "GET", search, &alice, None).await.status, 200);
    }
    let reply = send(&server, "GET", search, &alice, None).await;
    reply.assert_error(429, "RATE_LIMITED");
    assert!(reply.header("retry-after").is_some());
    // Same address, another subject: its own budget.
    assert_eq!(send(&server, "GET", search, &bob, None).await.status, 200);
    // A refused credential spends nobody's budget and is refused before the limiter.
    send(&server, "GET", search, &[bearer("garbage")], None).await.assert_error(401, "UNAUTHENTICATED");
    server.stop().await;
}
