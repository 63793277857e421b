//! The architecture policies through the real binary: the project's own graph passes, each
//! rule's violation is caught with its message, and `nexus serve` refuses a violating config.

use std::process::{Command, Output};
use std::time::Duration;

fn nexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(args)
        .env("NEXUS_LOG", "error")
        .output()
        .expect("nexus runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn the_projects_own_graph_passes() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("service-graph.json");
    let written = nexus(&["graph", "--out", graph.to_str().unwrap()]);
    assert!(written.status.success(), "{}", text(&written));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&graph).unwrap()).unwrap();
    assert!(
        json["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/api/events" && e["rateLimitPerMinute"] == 10)
    );
    assert!(json["events"].as_array().unwrap().iter().any(|e| e["eventType"] == "OrderPlaced"));
    let checked = nexus(&["policy", "check", "--input", graph.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("no violations"));
}

#[test]
fn the_policy_unit_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");
    let output = nexus(&["policy", "test", dir]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(" passed, 0 failed"));
}

#[test]
fn each_rule_catches_its_violation_with_its_message() {
    let cases = [
        (
            r#"{"type": "service_call", "source": "command", "target": "query", "protocol": "http"}"#,
            "Use Event Bus",
        ),
        (r#"{"type": "database_operation", "table": "EventStore", "operation": "DELETE"}"#, "Only INSERT"),
        (
            r#"{"type": "event_publish", "eventType": "Unknown", "schemaRegistered": false}"#,
            "no registered schema",
        ),
        (
            r#"{"type": "api_endpoint", "method": "GET", "path": "/api/queries/temporal/{aggregateId}", "rateLimitPerMinute": null}"#,
            "rate limit of 10 requests/minute",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (fact, message) in cases {
        let file = dir.path().join("fact.json");
        std::fs::write(&file, fact).unwrap();
        let output = nexus(&["policy", "check", "--input", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{fact}: {}", text(&output));
        assert!(text(&output).contains(message), "{fact}: expected '{message}' in {}", text(&output));
    }
}

#[test]
fn serve_refuses_to_start_when_time_range_queries_lose_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    for temporal in ["0", "20"] {
        let config = dir.path().join("nexus.toml");
        std::fs::write(&config, format!("[rate-limits]\ntemporal = {temporal}\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nexus"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap(), "--data-dir"])
            .arg(dir.path().join("data"))
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "serve did not refuse to start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = child.wait_with_output().unwrap();
        assert!(!status.success(), "temporal = {temporal} must refuse to start");
        assert!(text(&output).contains("rate limit of 10 requests/minute"), "{}", text(&output));
        assert!(!dir.path().join("data").exists(), "refused before touching the data dir");
    }
}
