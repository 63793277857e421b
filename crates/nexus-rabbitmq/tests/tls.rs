//! `amqps://` to the real broker (`NEXUS_TEST_AMQP_URL`) through a TLS-terminating proxy of this
//! test's own: it serves a certificate for `localhost` from a CA the test makes and forwards the
//! plain bytes to the broker, whose configuration is never touched. Trusted through the roots the
//! caller passes (what the server builds from the platform and `SSL_CERT_FILE`), an event goes
//! through; with the CA not trusted, the connection is refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cleanup, url};
use nexus_conformance::event_queue::event;
use nexus_core::StoreError;
use nexus_core::ports::EventQueue;
use nexus_rabbitmq::RabbitEventQueue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

const CONSUMER: &str = "hook";

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

/// Accepts TLS on 127.0.0.1 and a free port and forwards each connection, decrypted, to
/// `upstream`. Dropping it stops it and every connection it forwards.
struct TlsProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    async fn start(pki: &Pki, upstream: String) -> Self {
        let chain = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Dropped with this task: aborts the connections.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                connections.spawn(async move {
                    // A handshake the client gives up (an untrusted certificate) just ends.
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut broker) = TcpStream::connect(&upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's `user:password` and `host:port`, from the test URL.
fn broker() -> (String, String) {
    let url = url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let (credentials, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let address = rest.split('/').next().unwrap_or(rest);
    let address = if address.contains(':') { address.to_owned() } else { format!("{address}:5672") };
    (credentials.to_owned(), address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_goes_through_amqps() {
    let namespace = format!("nexus-test-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = Cleanup { namespace: namespace.clone(), consumer: Some(CONSUMER) };
    let pki = Pki::new("Nexus test CA");
    let (credentials, address) = broker();
    let proxy = TlsProxy::start(&pki, address).await;
    let amqps = format!("amqps://{credentials}@localhost:{}/%2f", proxy.port);

    let queue =
        RabbitEventQueue::connect_for_store_with_roots(&amqps, &namespace, "store-tls", &[pki.ca_der()])
            .await
            .unwrap_or_else(|e| panic!("{amqps} (to RabbitMQ at {}): {e}", url()));
    queue.subscribe(CONSUMER).await.unwrap();
    queue.publish(&[event(1)]).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no delivery over amqps");
        got = queue.receive(CONSUMER, 10, Duration::from_secs(1)).await.unwrap();
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, event(1));
    queue.ack(&got[0]).await.unwrap();
    queue.unsubscribe(CONSUMER).await.unwrap();
    queue.destroy().await.unwrap();
    queue.close().await;

    // The proxy's CA is not among the roots: refused, saying why.
    let stranger = Pki::new("Another CA");
    let untrusted = [stranger.ca_der()];
    let refused = RabbitEventQueue::connect_for_store_with_roots(&amqps, &namespace, "store-tls", &untrusted);
    match tokio::time::timeout(Duration::from_secs(30), refused).await.expect("refused in time") {
        Ok(_) => panic!("{amqps} connected with an untrusted certificate"),
        Err(StoreError::Unavailable(error)) => {
            let message = error.to_string();
            let server = format!("cannot connect to RabbitMQ at amqps://localhost:{}/%2f", proxy.port);
            assert!(message.contains(&server) && !message.contains(&credentials), "{message}");
            assert!(message.contains("invalid peer certificate"), "{message}");
            assert!(message.contains("not signed by a trusted root"), "{message}");
        }
        Err(other) => panic!("not Unavailable: {other}"),
    }
}
