//! A registry client that no one here wrote (Confluent's Python `SchemaRegistryClient`) against
//! the real `nexus serve`: registers, looks up, fetches by id, and sees a 409 for a breaking
//! schema. `scripts/test.sh` installs the client; without it this test fails, it never skips.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_works_against_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("NEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/health/ready")).await.map(|r| r.status().is_success()).ok()
        != Some(true)
    {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/registry_interop.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(format!("{base}/api/schema-registry"))
        .arg("InteropPaymentEvent")
        .output()
        .expect("python3 runs");
    server.kill().unwrap();
    server.wait().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Confluent client failed (install it with: python3 -m pip install 'confluent-kafka[schemaregistry]'):\n{text}"
    );
    assert!(text.contains("checks passed"), "{text}");
}
