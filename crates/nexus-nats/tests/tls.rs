//! TLS to a real NATS server: a private `nats-server -js --tls` of this test's own (never the
//! machine's shared one) with a certificate for `localhost` from a CA the test makes. Trusted
//! through the roots the caller passes (what the server builds from the platform and
//! `SSL_CERT_FILE`), an event goes through; with the CA not trusted, the connection is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_core::ports::EventStream;
use nexus_core::{DomainEvent, StoreError};
use nexus_nats::NatsEventStream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

/// A CA named `ca_name` and a server certificate it signed for `localhost`, as PEM.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(ca_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
        Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `nats-server -js --tls` on 127.0.0.1 and a free port, its certificate, key and JetStream
/// store in a temporary directory. Dropping it kills it and removes the directory.
struct TlsNats {
    dir: tempfile::TempDir,
    port: u16,
    server: Child,
}

impl TlsNats {
    fn start(pki: &Pki) -> Self {
        let dir = tempfile::Builder::new().prefix("nexus-nats-tls").tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("server.crt"), &pki.cert_pem).unwrap();
        std::fs::write(path("server.key"), &pki.key_pem).unwrap();
        let (port, monitor) = (free_port(), free_port());
        let log = std::fs::File::create(path("nats.log")).unwrap();
        let server = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()])
            .arg("--tls")
            .arg("--tlscert")
            .arg(path("server.crt"))
            .arg("--tlskey")
            .arg(path("server.key"))
            .arg("-sd")
            .arg(path("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts (is it installed?)");
        let mut nats = Self { dir, port, server };
        let started = Instant::now();
        // The monitoring port answers /healthz with 200 once JetStream is ready.
        while !healthy(monitor) {
            if let Some(status) = nats.server.try_wait().unwrap() {
                let log = std::fs::read_to_string(nats.dir.path().join("nats.log")).unwrap_or_default();
                panic!("nats-server exited ({status}): {log}");
            }
            assert!(started.elapsed() < Duration::from_secs(30), "nats-server did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}

fn event() -> DomainEvent {
    DomainEvent {
        event_id: "e-tls-1".into(),
        event_type: "Happened".into(),
        aggregate_id: "a-1".into(),
        aggregate_version: 1,
        position: 1,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        payload: json!({"over": "tls"}).into(),
        metadata: Default::default(),
    }
}

async fn refused(url: &str, roots: &[CertificateDer<'static>]) -> String {
    match NatsEventStream::connect_for_store_with_roots(url, "nexus-tls", 1, "store-tls", roots).await {
        Ok(_) => panic!("{url} connected"),
        Err(StoreError::Unavailable(error)) => error.to_string(),
        Err(other) => panic!("{url}: not Unavailable: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_goes_through_a_server_that_requires_tls() {
    let pki = Pki::new("Nexus test CA");
    let nats = TlsNats::start(&pki);

    let urls = [format!("tls://localhost:{}", nats.port), format!("nats://localhost:{}", nats.port)];
    for (n, url) in urls.iter().enumerate() {
        // Trusted: publish one event and fetch it back (a stream of its own per URL).
        let name = format!("nexus-tls-{n}");
        let stream =
            NatsEventStream::connect_for_store_with_roots(url, &name, 1, "store-tls", &[pki.ca_der()])
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        stream.publish(&[event()]).await.unwrap();
        let fetched = stream.fetch("reader", 0, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(fetched.len(), 1, "{url}: the one event");
        assert_eq!(fetched[0].event.payload, json!({"over": "tls"}).into());
        assert_eq!(fetched[0].event.event_id, "e-tls-1");
        stream.ack("reader", 0, fetched[0].sequence).await.unwrap();
        stream.ping().await.unwrap();
    }

    // The server's CA is not among the roots: refused, saying why.
    let stranger = Pki::new("Another CA");
    for url in &urls {
        let message = refused(url, &[stranger.ca_der()]).await;
        assert!(message.contains(&format!("cannot connect to NATS at {url}")), "{message}");
        assert!(message.contains("invalid peer certificate"), "{message}");
        assert!(message.contains("not signed by a trusted root"), "{message}");
    }
    // A certificate that does not name the host connected to.
    let message = refused(&format!("tls://127.0.0.1:{}", nats.port), &[pki.ca_der()]).await;
    assert!(message.contains("does not name the host") && message.contains("127.0.0.1"), "{message}");
}
