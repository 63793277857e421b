//! A registry client that no one here wrote (Confluent's Python `SchemaRegistryClient`) against
//! the real `nexus serve`: registers, looks up, fetches by id, and sees a 409 for a breaking
//! schema. `scripts/test.sh` installs the client; without it this test fails, it never skips.

use std::process::Command;

use crate::common::Nexus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_works_against_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(dir.path());
    })
    .await;
    let base = server.base.clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/registry_interop.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(format!("{base}/api/schema-registry"))
        .arg("InteropPaymentEvent")
        .output()
        .expect("python3 runs");
    server.kill();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Confluent client failed (install it with: python3 -m pip install 'confluent-kafka[schemaregistry]'):\n{text}"
    );
    assert!(text.contains("checks passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexus_schema_lists_registers_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(dir.path().join("data"));
    })
    .await;
    let url = server.base.clone();
    let nexus = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_nexus")).args(args).args(["--url", &url]).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    };
    let (code, listed) = nexus(&["schema", "list"]);
    assert_eq!(code, Some(0), "{listed}");
    assert!(
        listed.contains("UserRegistered") && listed.contains("[1,2]") && listed.contains("NONE"),
        "{listed}"
    );

    let v1 = dir.path().join("v1.json");
    std::fs::write(&v1, r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#)
        .unwrap();
    let v2 = dir.path().join("v2.json");
    std::fs::write(&v2, r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#)
        .unwrap();
    let (code, registered) = nexus(&["schema", "register", "CliThing", v1.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{registered}");
    assert!(registered.contains("version 1"), "{registered}");
    let (code, checked) = nexus(&["schema", "check", "CliThing", v2.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{checked}");
    assert!(checked.contains("INCOMPATIBLE") && checked.contains("TYPE_CHANGED"), "{checked}");
    let (code, refused) = nexus(&["schema", "register", "CliThing", v2.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{refused}");
    assert!(refused.contains("409"), "{refused}");
    server.kill();
}
