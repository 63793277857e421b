//! Auth hygiene: credentials that do not verify are throttled per peer address (`[auth]
//! failures-per-minute`), every credential a request carries must verify, a JWT's subject must
//! not be blank, and a WebSocket opened with a JWT is closed when the token expires.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::{DEADLINE, Reply, TestServer};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_server::config::{ApiKey, AuthMode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const KEY: &str = "key-of-the-order-service";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

fn hs256(subject: &str, scope: &str, exp: u64) -> String {
    jwt(json!({"sub": subject, "scope": scope, "exp": exp}))
}

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Auth on, with the default failure throttle (20 per minute).
async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.auth.mode = AuthMode::On;
        config.auth.jwt_hs256_secret = Some(SECRET.into());
        config.auth.api_keys = vec![ApiKey {
            subject: "order-service".into(),
            key_sha256: sha256_hex(KEY),
            scopes: vec!["commands".into(), "queries".into()],
        }];
    })
    .await
}

/// An HTTP client whose connections come from `local` (another loopback address: another peer).
fn client_from(local: &str) -> reqwest::Client {
    let local: IpAddr = local.parse().unwrap();
    reqwest::Client::builder().local_address(local).build().unwrap()
}

async fn get(server: &TestServer, client: &reqwest::Client, path: &str, headers: &[(&str, String)]) -> Reply {
    let mut request = client.get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    Reply::read(request.send().await.unwrap()).await
}

fn key(key: &str) -> (&'static str, String) {
    ("x-api-key", key.to_owned())
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

const READ: &str = "/api/queries/orders/order-1";

/// Neither refused for the credential nor throttled.
fn assert_admitted(reply: &Reply) {
    assert!(![401, 403, 429].contains(&reply.status), "{} {}", reply.status, reply.body);
}

fn assert_throttled(reply: &Reply) {
    reply.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = reply.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_credentials_are_throttled_per_peer_address() {
    let server = start().await;
    let good = [key(KEY)];

    // Valid credentials are never counted nor slowed.
    let steady = client_from("127.0.0.1");
    for _ in 0..50 {
        assert_admitted(&get(&server, &steady, READ, &good).await);
    }

    // A stream of wrong API keys: 20 are checked (401), every later one is refused unchecked.
    let guesser = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    for n in 0..200 {
        let reply = get(&server, &guesser, READ, &[key(&format!("guess-{n}"))]).await;
        if reply.status == 429 {
            assert_throttled(&reply);
        } else {
            reply.assert_error(401, "UNAUTHENTICATED");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // Until the minute is over, a right guess cannot be told from a wrong one: also 429.
    assert_throttled(&get(&server, &guesser, READ, &good).await);
    assert_throttled(&get(&server, &guesser, READ, &[bearer(&hs256("svc", "queries", now() + 600))]).await);
    // A request without a credential guesses nothing: still the plain 401.
    get(&server, &guesser, READ, &[]).await.assert_error(401, "UNAUTHENTICATED");
    // Other peers are not affected; a valid credential there is admitted.
    assert_admitted(&get(&server, &steady, READ, &good).await);

    // Forged tokens count the same way.
    let forger = client_from("127.0.0.3");
    let forged = hs256("svc", "queries", now() + 600).replace('.', ".x");
    for n in 0..100 {
        let reply = get(&server, &forger, READ, &[bearer(&forged)]).await;
        match n {
            0..20 => reply.assert_error(401, "UNAUTHENTICATED"),
            _ => assert_throttled(&reply),
        }
    }
    assert_throttled(&get(&server, &forger, READ, &good).await);

    // The throttled requests are counted with their class.
    let admin = client_from("127.0.0.4");
    let metrics = get(&server, &admin, "/metrics", &[bearer(&hs256("operator", "admin", now() + 600))]).await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("nexus_throttled_requests_total") && l.contains("AuthFailures")),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_is_configurable_and_can_be_turned_off() {
    let server = TestServer::start_with(|config| {
        config.auth.mode = AuthMode::On;
        config.auth.jwt_hs256_secret = Some(SECRET.into());
        config.auth.failures_per_minute = 0;
    })
    .await;
    let client = client_from("127.0.0.5");
    for _ in 0..100 {
        get(&server, &client, READ, &[bearer("garbage")]).await.assert_error(401, "UNAUTHENTICATED");
    }
    server.stop().await;

    let server = TestServer::start_with(|config| {
        config.auth.mode = AuthMode::On;
        config.auth.jwt_hs256_secret = Some(SECRET.into());
        config.auth.failures_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        get(&server, &client, READ, &[bearer("garbage")]).await.assert_error(401, "UNAUTHENTICATED");
    }
    let reply = get(&server, &client, READ, &[bearer("garbage")]).await;
    assert_throttled(&reply);
    assert!(reply.body["message"].as_str().unwrap().contains('3'), "{}", reply.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_a_request_carries_must_be_valid() {
    let server = start().await;
    let client = client_from("127.0.0.6");
    let token = hs256("reader", "queries", now() + 600);

    // Each alone is good.
    assert_admitted(&get(&server, &client, READ, &[key(KEY)]).await);
    assert_admitted(&get(&server, &client, READ, &[bearer(&token)]).await);
    // Both good: admitted.
    assert_admitted(&get(&server, &client, READ, &[key(KEY), bearer(&token)]).await);

    // A good key does not cover a bad token, nor a good token a bad key.
    for headers in [
        vec![key(KEY), bearer("garbage")],
        vec![key(KEY), bearer(&hs256("reader", "queries", now() - 3600))],
        vec![key(KEY), ("authorization", "Basic dXNlcjpwYXNz".to_owned())],
        vec![key("wrong-key"), bearer(&token)],
    ] {
        let reply = get(&server, &client, READ, &headers).await;
        reply.assert_error(401, "UNAUTHENTICATED");
        assert!(reply.body["message"].as_str().unwrap().contains("every credential"), "{}", reply.body);
    }

    // On the WebSocket too: a good access token next to a bad header is refused.
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    let mut request = format!("{url}?access_token={token}").into_client_request().unwrap();
    request.headers_mut().insert("x-api-key", "wrong-key".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_a_blank_subject_are_refused() {
    let server = start().await;
    let client = client_from("127.0.0.7");
    for subject in ["", "   "] {
        let token = hs256(subject, "queries", now() + 600);
        let reply = get(&server, &client, READ, &[bearer(&token)]).await;
        reply.assert_error(401, "UNAUTHENTICATED");
        assert!(reply.body["message"].as_str().unwrap().contains("subject"), "{}", reply.body);
        let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
        let refused =
            tokio_tungstenite::connect_async(format!("{url}?access_token={token}")).await.unwrap_err();
        assert!(refused.to_string().contains("401"), "{refused}");
    }
    server.stop().await;
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(server: &TestServer, credential: &str) -> Socket {
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    let url = reqwest::Url::parse_with_params(&url, [("access_token", credential)]).unwrap();
    tokio_tungstenite::connect_async(url.as_str()).await.unwrap().0
}

/// Sends a subscribe and expects its acknowledgement: the connection is alive.
async fn assert_alive(socket: &mut Socket) {
    let subscribe = json!({"type": "subscribe", "aggregateIds": ["order-1"]}).to_string();
    socket.send(Message::text(subscribe)).await.unwrap();
    let reply = tokio::time::timeout(DEADLINE, socket.next()).await.unwrap().unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_when_their_token_expires() {
    let server = start().await;
    let short = hs256("reader", "queries", now() + 2);
    let mut expiring = open(&server, &short).await;
    let mut long = open(&server, &hs256("reader", "queries", now() + 600)).await;
    let mut keyed = open(&server, KEY).await;
    assert_alive(&mut expiring).await;

    // Within the token's life (at most 2 s from now), the server closes with 1008.
    let started = tokio::time::Instant::now();
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(5), expiring.next()).await {
            Err(_) => panic!("the connection outlived its token"),
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame with a reason"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "token expired");
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());

    // A token that lives on, and an API key (which does not expire), keep their connections.
    assert_alive(&mut long).await;
    assert_alive(&mut keyed).await;
    server.stop().await;
}
