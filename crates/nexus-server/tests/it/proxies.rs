//! Contract §10, behind a reverse proxy: from a peer in `[server] trusted-proxies` the client is
//! the right-most untrusted address of `X-Forwarded-For`, and per-client limits count that
//! client; from any other peer the header is ignored. The test client's peer is 127.0.0.1.

use crate::support::{Reply, TestServer};
use nexus_server::config::{ApiKey, AuthMode, Cidr};

/// A server trusting `proxies`, with 2 list reads per client and minute.
async fn trusting(proxies: &[&str]) -> TestServer {
    let proxies: Vec<Cidr> = proxies.iter().map(|p| p.parse().expect("CIDR")).collect();
    TestServer::start_with(move |config| {
        config.server.trusted_proxies = proxies;
        config.rate_limits.list_per_window = 2;
    })
    .await
}

/// `GET path` with `X-Forwarded-For: forwarded` (none when `None`) and extra headers.
async fn get(server: &TestServer, path: &str, forwarded: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    let mut request = server.http.get(server.url(path));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::read(request.send().await.expect("GET")).await
}

async fn list(server: &TestServer, forwarded: Option<&str>) -> u16 {
    get(server, "/api/queries/orders", forwarded, &[]).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let server = trusting(&["127.0.0.1/32"]).await;
    assert_eq!(list(&server, Some("203.0.113.1")).await, 200);
    assert_eq!(list(&server, Some("203.0.113.1")).await, 200);
    get(&server, "/api/queries/orders", Some("203.0.113.1"), &[]).await.assert_error(429, "RATE_LIMITED");
    // Another client behind the same proxy, and the proxy itself (no header), are untouched.
    assert_eq!(list(&server, Some("203.0.113.2")).await, 200);
    assert_eq!(list(&server, Some("2001:db8::2")).await, 200);
    assert_eq!(list(&server, None).await, 200);
    // Entries the client wrote left of its own address change nothing.
    assert_eq!(list(&server, Some("198.51.100.7, 203.0.113.1")).await, 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_untrusted_peer_a_forwarded_header_is_ignored() {
    let server = trusting(&[]).await;
    assert_eq!(list(&server, Some("203.0.113.1")).await, 200);
    assert_eq!(list(&server, Some("203.0.113.2")).await, 200);
    // Both counted against the peer: a third address does not buy a fresh bucket.
    assert_eq!(list(&server, Some("203.0.113.3")).await, 429);
    assert_eq!(list(&server, None).await, 429);
    server.stop().await;

    // Trusting another network is no different for this peer.
    let server = trusting(&["10.0.0.0/8"]).await;
    assert_eq!(list(&server, Some("203.0.113.1")).await, 200);
    assert_eq!(list(&server, Some("203.0.113.2")).await, 200);
    assert_eq!(list(&server, Some("203.0.113.3")).await, 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_chain_of_trusted_proxies_the_client_is_the_right_most_untrusted_address() {
    let server = trusting(&["127.0.0.1/32", "10.0.0.0/8"]).await;
    let chain = Some("203.0.113.9, 10.0.0.5");
    assert_eq!(list(&server, chain).await, 200);
    assert_eq!(list(&server, chain).await, 200);
    assert_eq!(list(&server, chain).await, 429);
    // The client is 203.0.113.9, however it reached the last proxy.
    assert_eq!(list(&server, Some("203.0.113.9")).await, 429);
    assert_eq!(list(&server, Some("192.0.2.1, 203.0.113.9, 10.0.0.6")).await, 429);
    // Not the inner proxy, which is trusted; nor an address to the left of the client.
    assert_eq!(list(&server, Some("10.0.0.5")).await, 200);
    assert_eq!(list(&server, Some("192.0.2.1")).await, 200);
    // A malformed entry ends the walk at the last good address: here the inner proxy.
    assert_eq!(list(&server, Some("203.0.113.9, unknown, 10.0.0.7")).await, 200);
    server.stop().await;
}

/// The bad-credential throttle counts the forwarded client too: one client guessing keys behind
/// the proxy does not lock out the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_credential_throttle_counts_per_forwarded_client() {
    let server = TestServer::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.auth.mode = AuthMode::On;
        config.auth.failures_per_minute = 2;
        config.auth.api_keys = vec![ApiKey {
            subject: "reader".into(),
            key_sha256: "a".repeat(64),
            scopes: vec!["queries".into()],
        }];
    })
    .await;
    let bad = [("x-api-key", "guess")];
    let path = "/api/queries/orders";
    get(&server, path, Some("203.0.113.1"), &bad).await.assert_error(401, "UNAUTHENTICATED");
    get(&server, path, Some("203.0.113.1"), &bad).await.assert_error(401, "UNAUTHENTICATED");
    get(&server, path, Some("203.0.113.1"), &bad).await.assert_error(429, "RATE_LIMITED");
    get(&server, path, Some("203.0.113.2"), &bad).await.assert_error(401, "UNAUTHENTICATED");
    get(&server, path, None, &bad).await.assert_error(401, "UNAUTHENTICATED");
    server.stop().await;
}

/// WebSocket connection limits count the forwarded client as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_count_per_forwarded_client() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = TestServer::start_with(|config| {
        config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        config.limits.ws_connections_per_client = 1;
    })
    .await;
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    let connect = |forwarded: &'static str| {
        let mut request = url.as_str().into_client_request().expect("WebSocket request");
        request.headers_mut().insert("x-forwarded-for", forwarded.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let _first = connect("203.0.113.1").await.expect("the first connection of 203.0.113.1");
    match connect("203.0.113.1").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("a second connection of 203.0.113.1 must be refused, got {:?}", other.map(|_| ())),
    }
    let _other = connect("203.0.113.2").await.expect("another client behind the same proxy");
    server.stop().await;
}
