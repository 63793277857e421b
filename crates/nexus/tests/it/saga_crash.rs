//! Kill -9 the real `nexus` process in the middle of a saga, twice: between two steps, and after
//! a step's command committed but before the saga recorded it. After each restart the saga
//! resumes from its events, and in the end every step was applied exactly once.
//!
//! `[sagas] step-delay-ms` opens a window before each step's command and before recording its
//! outcome; the test watches the store over HTTP and kills inside those windows.

use std::time::{Duration, Instant};

use crate::common::{Nexus, free_port};
use serde_json::{Value, json};

const STEP_DELAY_MS: u64 = 1500;

async fn start(data_dir: &std::path::Path, config: &std::path::Path, port: u16) -> Nexus {
    Nexus::serve_on(port, |command| {
        command.arg("--data-dir").arg(data_dir).arg("--config").arg(config);
    })
    .await
}

async fn events(client: &reqwest::Client, base: &str, aggregate_id: &str) -> Vec<Value> {
    let body: Value =
        client.get(format!("{base}/api/events/{aggregate_id}")).send().await.unwrap().json().await.unwrap();
    body["events"].as_array().cloned().unwrap_or_default()
}

fn completed_steps(saga_events: &[Value]) -> Vec<String> {
    saga_events
        .iter()
        .filter(|e| e["eventType"] == "SagaStepCompleted")
        .map(|e| e["payload"]["stepId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_killed_mid_way_resumes_and_applies_every_step_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(&config, format!("[sagas]\nstep-delay-ms = {STEP_DELAY_MS}\nretry-base-ms = 10\n"))
        .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let client = reqwest::Client::new();

    let server = start(&data, &config, port).await;
    let steps: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|s| json!({"stepId": s, "command": {"commandType": "AddStock", "aggregateId": format!("k-{s}"), "payload": {"quantity": 1}}}))
        .collect();
    let response = client
        .post(format!("{}/api/sagas", server.base))
        .json(&json!({"sagaId": "crash-saga", "sagaType": "Restock", "steps": steps}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);

    // Kill 1: step a recorded, step b not started (the saga waits before b's command).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let saga = events(&client, &server.base, "crash-saga").await;
        if completed_steps(&saga) == ["a"] {
            assert!(events(&client, &server.base, "k-b").await.is_empty(), "killed too late: b already ran");
            break;
        }
        assert!(completed_steps(&saga).len() <= 1, "missed the window between a and b");
        assert!(Instant::now() < deadline, "step a did not complete");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    // Kill 2: step b's command committed, the saga has not recorded it yet.
    let server = start(&data, &config, port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !events(&client, &server.base, "k-b").await.is_empty() {
            let saga = events(&client, &server.base, "crash-saga").await;
            assert_eq!(completed_steps(&saga), ["a"], "killed too late: b already recorded");
            break;
        }
        assert!(Instant::now() < deadline, "step b did not run after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    // The saga finishes; b runs again under its command id and is replayed, not re-applied.
    let server = start(&data, &config, port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: Value = client
            .get(format!("{}/api/sagas/crash-saga/status", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "COMPLETED" {
            break status;
        }
        assert!(Instant::now() < deadline, "saga did not complete: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["completedSteps"], json!(["a", "b", "c"]));
    for s in ["a", "b", "c"] {
        let applied = events(&client, &server.base, &format!("k-{s}")).await;
        assert_eq!(applied.len(), 1, "step {s} applied {} times", applied.len());
        assert_eq!(applied[0]["eventType"], "StockAdded");
    }
    let saga = events(&client, &server.base, "crash-saga").await;
    assert_eq!(completed_steps(&saga), ["a", "b", "c"], "each step recorded once");
    assert_eq!(saga.last().unwrap()["eventType"], "SagaCompleted");
    server.kill();
}
