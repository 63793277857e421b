//! `nexus dlq list|retry|skip` against a running `nexus serve`: a webhook whose endpoint refuses
//! connections dead-letters its event after 5 attempts (NEXUS_RETRY_BASE_MS=10), the CLI lists it,
//! retries it (it fails again into the DLQ) and skips it.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::Nexus;
use serde_json::{Value, json};

fn cli(base: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexus")).arg("dlq").args(args).arg("--url").arg(base).output().unwrap()
}

async fn one_dead_letter(client: &reqwest::Client, base: &str) -> Value {
    let started = Instant::now();
    loop {
        let body: Value =
            client.get(format!("{base}/api/admin/dlq")).send().await.unwrap().json().await.unwrap();
        if let Some(item) = body["items"].as_array().and_then(|items| items.first()) {
            return item.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no dead letter appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_retry_and_skip_through_the_cli() {
    // A port nobody listens on: every delivery fails with UNAVAILABLE.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data_dir = tempfile::tempdir().unwrap();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(data_dir.path()).env("NEXUS_RETRY_BASE_MS", "10");
    })
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let hook = json!({"url": format!("http://127.0.0.1:{dead}/hook"), "eventTypes": ["UserRegistered"]});
    let created = client.post(format!("{base}/api/admin/webhooks")).json(&hook).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let user = json!({"firstName": "Ada", "lastName": "L", "email": "ada@example.com"});
    let accepted = client.post(format!("{base}/api/commands/RegisterUser")).json(&user).send().await.unwrap();
    assert_eq!(accepted.status().as_u16(), 202);

    let letter = one_dead_letter(&client, &base).await;
    assert!(letter["failureReason"].as_str().unwrap().starts_with("TRANSIENT: cannot reach"), "{letter}");
    let id = letter["id"].as_str().unwrap().to_owned();
    let listed = cli(&base, &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    assert!(text.contains("UserRegistered") && text.contains("1 dead letter(s) waiting"), "{text}");

    let retried = cli(&base, &["retry", &id]);
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let again = one_dead_letter(&client, &base).await; // fails 5 more times, back in the DLQ
    let again_id = again["id"].as_str().unwrap().to_owned();
    assert_eq!(again["retryCount"], 5);

    let skipped = cli(&base, &["skip", &again_id]);
    assert!(skipped.status.success(), "{}", String::from_utf8_lossy(&skipped.stderr));
    let listed = cli(&base, &["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("0 dead letter(s) waiting"));
    let missing = cli(&base, &["skip", &again_id]);
    assert!(!missing.status.success(), "skipping twice is refused");
}
