//! The HTTPS listener (`config.tls.listener`, `--tls-cert`/`--tls-key`): the API and WSS over
//! TLS with a certificate from a test CA, plain HTTP refused on the same port, the handshake
//! inside the header-read timeout, and unusable certificate files refused at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nexus_server::config::TlsFiles;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{DEADLINE, TestServer};

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
struct Pki {
    dir: TempDir,
    files: TlsFiles,
    ca: PathBuf,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Nexus test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        // The chain as servers ship it: the server's certificate, then its issuer's.
        std::fs::write(path("cert.pem"), format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        let files = TlsFiles { cert: path("cert.pem"), key: path("key.pem") };
        Self { ca: path("ca.pem"), files, dir }
    }
}

async fn tls_server(pki: &Pki, configure: impl FnOnce(&mut nexus_server::Config)) -> TestServer {
    TestServer::start_with(|config| {
        config.tls.listener = Some(pki.files.clone());
        config.tls.extra_roots = Some(pki.ca.clone());
        configure(config);
    })
    .await
}

fn addr(server: &TestServer) -> std::net::SocketAddr {
    server.base.trim_start_matches("https://").parse().expect("server address")
}

/// Writes `request` on a plain TCP connection and reads until the server closes it; fails the
/// test when it does not close within `within`.
async fn plain_exchange(addr: std::net::SocketAddr, request: &[u8], within: Duration) -> Vec<u8> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection within {within:?}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_plain_http_to_the_port_is_closed() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);

    let ready = server.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let accepted = server
        .accepted(
            "RegisterUser",
            json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}),
        )
        .await;
    let id = accepted["aggregateId"].as_str().unwrap().to_owned();
    let user = server.document_at("users", &id, 1).await;
    assert_eq!(user["email"], "ada@example.com");

    // The same request in plain HTTP: no answer in plain text, the connection closed.
    let answer =
        plain_exchange(addr(&server), b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n", DEADLINE).await;
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {:?}", String::from_utf8_lossy(&answer));
    let plain = reqwest::Client::builder().no_proxy().timeout(DEADLINE).build().unwrap();
    let url = server.url("/health/live").replacen("https://", "http://", 1);
    assert!(plain.get(&url).send().await.is_err(), "a plain-HTTP request to the HTTPS port succeeded");

    // A client that does not trust the test CA refuses the server.
    let untrusting = nexus_server::tls::https_client(reqwest::Client::builder().no_proxy(), None)
        .unwrap()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let refused = untrusting.get(server.url("/health/live")).send().await;
    let error = format!("{:?}", refused.expect_err("a certificate from an unknown CA was accepted"));
    assert!(error.contains("UnknownIssuer") || error.contains("certificate"), "{error}");

    // The failed handshakes are counted, and the server goes on serving.
    let metrics = server.get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("reason=\"tls_handshake\""), "no tls_handshake close counted");
    assert_eq!(server.get("/health/live").await.status, 200);
    server.stop().await;
    drop(pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_wss_is_notified() {
    let pki = Pki::new();
    let server = tls_server(&pki, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(addr(&server)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        nexus_server::tls::client_config(Some(&pki.ca)).expect("client TLS configuration"),
    ));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/api/subscriptions", addr(&server).port());
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
    let id = "o-wss-1";
    let subscribe = json!({"type": "subscribe", "aggregateIds": [id]});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"type": "subscribed", "aggregateIds": [id]}));
    let items = json!([{"productId": "p-1", "quantity": 1, "unitPrice": 2.5}]);
    server.accepted("PlaceOrder", json!({"aggregateId": id, "customerId": "c-wss", "items": items})).await;
    let note = next_json(&mut ws).await;
    assert_eq!((note["type"].clone(), note["aggregateId"].clone()), (json!("projection_updated"), json!(id)));
    ws.close(None).await.unwrap();
    server.stop().await;
}

/// The next JSON text message of a WebSocket, within [`DEADLINE`].
async fn next_json<S>(ws: &mut S) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next()).await.expect("a message in time");
        if let Message::Text(text) = message.expect("the WebSocket is open").expect("a message") {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_does_not_finish_is_closed_at_the_header_timeout() {
    let pki = Pki::new();
    let server = tls_server(&pki, |config| config.limits.header_read_timeout_ms = 300).await;
    let started = Instant::now();
    // Silent after connecting, then half a TLS record header: neither finishes a handshake.
    plain_exchange(addr(&server), b"", DEADLINE).await;
    plain_exchange(addr(&server), &[0x16, 0x03, 0x01], DEADLINE).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2 * 290), "closed before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "closed long after the timeout: {elapsed:?}");
    // A real client is unaffected.
    assert_eq!(server.get("/health/live").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_fail_the_start_naming_the_file() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing-key.pem");
    for (files, named) in [
        (TlsFiles { cert: pki.files.cert.clone(), key: missing.clone() }, "missing-key.pem"),
        // The key file given as the certificate: no certificate in it.
        (TlsFiles { cert: pki.files.key.clone(), key: pki.files.key.clone() }, "key.pem"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut config = nexus_server::Config::embedded(data.path());
        config.tls.listener = Some(files);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = nexus_server::run(config, nexus_domain::domain(), listener, std::future::pending());
        let outcome = tokio::time::timeout(DEADLINE, run).await.expect("run returns at once");
        let error = outcome.expect_err("the server started with an unusable certificate").to_string();
        assert!(error.contains("TLS") && error.contains(named), "{error}");
    }
}
