//! TLS with the real binary: webhooks delivered to an `https://` endpoint whose certificate a
//! private CA signed (trusted through `SSL_CERT_FILE`), `nexus serve --tls-cert --tls-key`, and
//! the client subcommands against that HTTPS server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{Nexus, free_port};

const DEADLINE: Duration = Duration::from_secs(15);

/// A test CA, and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
struct Pki {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
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
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        Self { cert: path("cert.pem"), key: path("key.pem"), ca: path("ca.pem"), _dir: dir }
    }
}

/// An HTTPS webhook endpoint with the PKI's certificate, recording what it receives.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

impl Receiver {
    /// Starts it; returns it and its URL (`https://localhost:PORT/hook`).
    async fn start(pki: &Pki) -> (Self, String) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                        r.requests.lock().unwrap().push((headers, body));
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(receiver.clone());
        let tls = nexus_server::tls::server_config(&pki.cert, &pki.key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}/hook", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (receiver, url)
    }

    fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.requests.lock().unwrap().clone()
    }
}

/// Registers a signed webhook for `OrderPlaced` (a core event) at `url`, then places an order;
/// returns the order's id.
async fn hook_and_place(server: &Nexus, url: &str) -> String {
    let client = reqwest::Client::new();
    let hook = json!({"url": url, "eventTypes": ["OrderPlaced"], "secret": "s3cret"});
    let created = client.post(server.url("/api/admin/webhooks")).json(&hook).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await.unwrap());
    let order = json!({"customerId": "ada", "items": [{"productId": "p-1", "quantity": 2, "unitPrice": 5}]});
    let accepted = client.post(server.url("/api/commands/PlaceOrder")).json(&order).send().await.unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let body: Value = accepted.json().await.unwrap();
    body["aggregateId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_https_endpoints_that_ssl_cert_file_trusts() {
    let pki = Pki::new();
    let (receiver, url) = Receiver::start(&pki).await;

    // Without SSL_CERT_FILE the endpoint's CA is unknown: every attempt fails, the event is
    // dead-lettered and nothing arrives.
    let data = tempfile::tempdir().unwrap();
    let untrusting = Nexus::serve(|command| {
        command
            .arg("--data-dir")
            .arg(data.path())
            .env("NEXUS_RETRY_BASE_MS", "10")
            .env_remove("SSL_CERT_FILE");
    })
    .await;
    hook_and_place(&untrusting, &url).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let letter = loop {
        let body: Value =
            client.get(untrusting.url("/api/admin/dlq")).send().await.unwrap().json().await.unwrap();
        if let Some(letter) = body["items"].as_array().and_then(|items| items.first()) {
            break letter.clone();
        }
        assert!(started.elapsed() < DEADLINE, "the untrusted endpoint's event was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letter["retryCount"], 5, "{letter}");
    assert!(receiver.received().is_empty(), "a delivery passed an unverified certificate");
    untrusting.kill();

    // With it, the delivery arrives, in CloudEvents binary mode and signed.
    let data = tempfile::tempdir().unwrap();
    let trusting = Nexus::serve(|command| {
        command
            .arg("--data-dir")
            .arg(data.path())
            .env("NEXUS_RETRY_BASE_MS", "10")
            .env("SSL_CERT_FILE", &pki.ca);
    })
    .await;
    let order = hook_and_place(&trusting, &url).await;
    let started = Instant::now();
    while receiver.received().is_empty() {
        assert!(started.elapsed() < DEADLINE, "no delivery reached the HTTPS endpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (headers, body) = receiver.received()[0].clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(header("ce-specversion"), "1.0");
    assert_eq!(header("ce-type"), "OrderPlaced");
    assert_eq!(header("ce-source"), "nexus");
    assert_eq!(header("ce-id"), event["eventId"].as_str().unwrap());
    assert_eq!(header("ce-subject"), order);
    assert_eq!(header("ce-time"), event["timestamp"].as_str().unwrap());
    assert_eq!(event["payload"]["customerId"], "ada");
    let expected: String = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&body);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(header("x-nexus-signature"), expected, "X-Nexus-Signature is the hex HMAC-SHA256 of the body");
    trusting.kill();
}

/// `nexus serve` with TLS, once `/health/ready` answers over HTTPS to a client trusting `ca`.
struct HttpsNexus {
    child: std::process::Child,
    base: String,
    _data: TempDir,
}

impl HttpsNexus {
    async fn serve(ca: &Path, configure: impl FnOnce(&mut Command)) -> Self {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .env("NEXUS_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let server =
            Self { child: command.spawn().unwrap(), base: format!("https://127.0.0.1:{port}"), _data: data };
        let client =
            nexus_server::tls::https_client(reqwest::Client::builder(), Some(ca)).unwrap().build().unwrap();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{}/health/ready", server.base)).send().await
                && response.status().is_success()
            {
                return server;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "nexus serve with TLS did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HttpsNexus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dlq_list(base: &str, ssl_cert_file: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
    command.args(["dlq", "list", "--url", base]).env_remove("SSL_CERT_FILE");
    if let Some(path) = ssl_cert_file {
        command.env("SSL_CERT_FILE", path);
    }
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_an_https_server_whose_ca_ssl_cert_file_names() {
    let pki = Pki::new();
    // The flags on one server, the environment variables on the other.
    let by_flags = HttpsNexus::serve(&pki.ca, |command| {
        command.arg("--tls-cert").arg(&pki.cert).arg("--tls-key").arg(&pki.key);
    })
    .await;
    let by_env = HttpsNexus::serve(&pki.ca, |command| {
        command.env("NEXUS_TLS_CERT", &pki.cert).env("NEXUS_TLS_KEY", &pki.key);
    })
    .await;
    for server in [&by_flags, &by_env] {
        let listed = dlq_list(&server.base, Some(&pki.ca));
        let stdout = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.status.success(), "{stdout}{}", String::from_utf8_lossy(&listed.stderr));
        assert!(stdout.contains("0 dead letter(s) waiting"), "{stdout}");
    }

    // Without the CA: a clear certificate error, not a panic.
    let refused = dlq_list(&by_flags.base, None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("certificate is not trusted") && stderr.contains("SSL_CERT_FILE"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = reqwest::Client::builder().timeout(DEADLINE).build().unwrap();
    let url = format!("{}/health/live", by_flags.base.replacen("https://", "http://", 1));
    assert!(plain.get(url).send().await.is_err(), "plain HTTP was served on the HTTPS port");
}

#[test]
fn serve_refuses_a_half_or_unusable_tls_configuration() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    // `nexus serve` must exit by itself; one that serves instead is killed and fails the test.
    let serve = |args: &[&std::ffi::OsStr]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(args)
            .env("NEXUS_DATA_DIR", data.path())
            .env_remove("NEXUS_TLS_CERT")
            .env_remove("NEXUS_TLS_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("nexus serve {args:?} started instead of refusing its TLS configuration");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    };
    let half = serve(&["--tls-cert".as_ref(), pki.cert.as_os_str()]);
    assert!(!half.status.success());
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&half.stderr)
    );
    let missing = pki.key.with_file_name("no-such-key.pem");
    let unusable =
        serve(&["--tls-cert".as_ref(), pki.cert.as_os_str(), "--tls-key".as_ref(), missing.as_os_str()]);
    let stderr = String::from_utf8_lossy(&unusable.stderr);
    assert!(!unusable.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-key.pem") && stderr.contains("TLS"), "{stderr}");
}
