//! Auth through the binary: `nexus serve` beyond loopback refuses to start without a credential
//! configured, and the client subcommands send `NEXUS_API_KEY` / `NEXUS_TOKEN`.

use std::process::Command;

use crate::common::{Nexus, free_port};

const KEY: &str = "operator-key-for-the-cli-test";
/// `printf %s "$KEY" | sha256sum`: what the configuration holds instead of the key.
const KEY_SHA256: &str = "095592e2cbe7b2b9422e20b1d66a44f2c48680c7f98eb6d12149fb0080bd5a49";

#[test]
fn serving_beyond_loopback_without_credentials_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--listen", &format!("0.0.0.0:{}", free_port()), "--data-dir"])
        .arg(dir.path())
        .env_remove("NEXUS_JWT_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served 0.0.0.0 without auth");
    assert!(stderr.contains("auth is required") && stderr.contains("NEXUS_JWT_SECRET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subcommands_send_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"on\"\n[[auth.api-keys]]\nsubject = \"operator\"\nkey-sha256 = \"{}\"\nscopes = [\"admin\"]\n",
            KEY_SHA256
        ),
    )
    .unwrap();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(dir.path().join("data")).arg("--config").arg(&config);
    })
    .await;
    let dlq = |key: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nexus"));
        command
            .args(["dlq", "list", "--url", &server.base])
            .env_remove("NEXUS_TOKEN")
            .env_remove("NEXUS_API_KEY");
        if let Some(key) = key {
            command.env("NEXUS_API_KEY", key);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let (ok, text) = dlq(None);
    assert!(!ok && text.contains("401") && text.contains("NEXUS_API_KEY"), "{text}");
    let (ok, text) = dlq(Some("wrong"));
    assert!(!ok && text.contains("unknown API key"), "{text}");
    let (ok, text) = dlq(Some(KEY));
    assert!(ok && text.contains("0 dead letter(s) waiting"), "{text}");
}
