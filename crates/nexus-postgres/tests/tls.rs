//! TLS to a real PostgreSQL server: a private cluster of this test's own (never the machine's
//! shared one) with `ssl = on`, a certificate for `localhost` only from a CA the test makes, and a
//! `pg_hba.conf` that accepts TCP connections over TLS alone (`hostssl`, no `host` line). Each of
//! libpq's `sslmode`s is tried through the crate's public API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nexus_core::ports::{AppendOutcome, AppendRequest, NewEvent};
use nexus_core::{EventStore, Leases, StoreError};
use nexus_postgres::PostgresBackend;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

/// A CA, and a server certificate it signed for the DNS name `localhost` only (so connecting to
/// 127.0.0.1 with `verify-full` must fail).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(ca_name: &str, names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap()
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn as_postgres(dir: &Path, program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", program]).current_dir(dir);
    command
}

/// A PostgreSQL cluster in a temporary directory, on a free port of 127.0.0.1, with TLS on and
/// plain TCP refused. Dropping it stops the server and removes the directory.
struct TlsPostgres {
    dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
}

impl TlsPostgres {
    fn start(pki: &Pki) -> Self {
        let dir = tempfile::Builder::new().prefix("nexus-pg-tls").tempdir().unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(dir.path()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Self { ca: dir.path().join("ca.pem"), dir, port };
        let data = server.data();
        run(as_postgres(server.dir.path(), "initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(&data));
        let (cert, key) = (server.dir.path().join("server.crt"), server.dir.path().join("server.key"));
        std::fs::write(&server.ca, &pki.ca_pem).unwrap();
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        // PostgreSQL refuses a key that others may read, or that is not its own.
        run(Command::new("chown").arg("postgres:postgres").arg(&cert).arg(&key));
        run(Command::new("chmod").arg("0600").arg(&key));
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        writeln!(
            conf,
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             shared_buffers = 16MB\nmax_connections = 60\nlogging_collector = off\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'",
            dir = server.dir.path().display(),
            cert = cert.display(),
            key = key.display(),
        )
        .unwrap();
        // TCP over TLS only; the socket (pg_ctl's readiness check) stays as initdb made it.
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            .unwrap();
        let output = as_postgres(server.dir.path(), "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path().join("log"))
            .args(["-w", "-t", "30", "start"])
            .output()
            .expect("pg_ctl runs");
        if !output.status.success() {
            let log = std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default();
            panic!("pg_ctl start failed ({}); server log:\n{log}", output.status);
        }
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "PostgreSQL does not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(self.dir.path(), "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        // The TempDir removes the directory (root may remove what `postgres` owns).
    }
}

fn request(aggregate_id: &str) -> AppendRequest {
    AppendRequest {
        aggregate_id: aggregate_id.into(),
        aggregate_type: "Test".into(),
        expected_version: 0,
        events: vec![NewEvent {
            event_id: format!("{aggregate_id}-1"),
            event_type: "Happened".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: json!({"over": "tls"}).into(),
            metadata: Default::default(),
        }],
        command: None,
    }
}

/// Opens the store at `url` (the migrations, the pool, the appender and the listener connect),
/// appends one event, reads it back and takes a lease.
async fn round_trip(url: &str, roots: &[CertificateDer<'static>], aggregate_id: &str) {
    let backend = PostgresBackend::connect_with_roots(url, "nexus", roots)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let store = backend.event_store();
    let outcome = store.append(request(aggregate_id)).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Committed(_)), "{outcome:?}");
    let events = store.read_stream(aggregate_id, 1, None).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, json!({"over": "tls"}).into());
    // The leases have a connection of their own.
    let lease = backend.leases().try_lease(aggregate_id).await.unwrap();
    assert!(lease.is_some(), "{url}: the lease is free");
}

/// The message of a refused connection (`Unavailable` from the server or the handshake).
async fn refused(url: &str, roots: &[CertificateDer<'static>]) -> String {
    match PostgresBackend::connect_with_roots(url, "nexus", roots).await {
        Ok(_) => panic!("{url} connected"),
        Err(StoreError::Unavailable(error)) => error.to_string(),
        Err(other) => panic!("{url}: not Unavailable: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_ssl_modes_against_a_server_that_requires_tls() {
    let pki = Pki::new("Nexus test CA", &["localhost"]);
    let server = TlsPostgres::start(&pki);
    let ca = server.ca.display().to_string();

    // verify-full: the chain and the host name, against sslrootcert.
    round_trip(&server.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")), &[], "full").await;
    // The same with the CA among the roots the caller passes (the server's SSL_CERT_FILE).
    round_trip(&server.url("localhost", "sslmode=verify-full"), &[pki.ca_der()], "full-roots").await;
    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the certificate.
    round_trip(&server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")), &[], "ca").await;
    // require: encrypted, the certificate not checked (no root certificate given).
    round_trip(&server.url("127.0.0.1", "sslmode=require"), &[], "require").await;
    // prefer (also the default): TLS, since the server offers it.
    round_trip(&server.url("127.0.0.1", "application_name=nexus-tls-test"), &[], "prefer").await;

    // disable: the server has no entry for a plain connection.
    let message = refused(&server.url("127.0.0.1", "sslmode=disable"), &[]).await;
    assert!(message.contains("no pg_hba.conf entry") && message.contains("no encryption"), "{message}");

    // verify-full to a host the certificate does not name.
    let message =
        refused(&server.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), &[]).await;
    assert!(message.contains("certificate is not valid for the host name '127.0.0.1'"), "{message}");

    // verify-full against a CA that did not sign the server's certificate.
    let stranger = Pki::new("Another CA", &["localhost"]);
    let message = refused(&server.url("localhost", "sslmode=verify-full"), &[stranger.ca_der()]).await;
    assert!(message.contains("not signed by a trusted root"), "{message}");
    // require with a root certificate checks the chain, as libpq does.
    let other_ca = server.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &stranger.ca_pem).unwrap();
    let url = server.url("localhost", &format!("sslmode=require&sslrootcert={}", other_ca.display()));
    let message = refused(&url, &[]).await;
    assert!(message.contains("not signed by a trusted root"), "{message}");
}
