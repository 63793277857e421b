//! The alert rules in `deploy/prometheus/nexus-alerts.yml` only reference metrics Nexus emits:
//! each family is named by the code, and the ones every running server has are on `/metrics` of
//! the real binary. (promtool checks the rules' syntax and behaviour in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::Nexus;
use serde_json::json;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Metric families the rules use (`_bucket`, `_count`, `_sum` belong to their histogram).
fn referenced_families() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/nexus-alerts.yml")).unwrap();
    let mut families = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(start) = rest.find("nexus_") {
            let name: String =
                rest[start..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            rest = &rest[start + name.len()..];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, suffix| n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n));
            families.insert(family);
        }
    }
    families
}

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_metric_the_rules_use_is_emitted_by_the_code() {
    let families = referenced_families();
    assert!(families.len() >= 8, "the rules reference {families:?}");
    let mut code = String::new();
    for krate in std::fs::read_dir(format!("{ROOT}/crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut code);
        }
    }
    let missing: Vec<&String> = families.iter().filter(|f| !code.contains(&format!("\"{f}\""))).collect();
    assert!(missing.is_empty(), "alert rules use metrics no code emits: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_exports_the_families_its_alerts_watch() {
    let dir = tempfile::tempdir().unwrap();
    let server = Nexus::serve(|command| {
        command.arg("--data-dir").arg(dir.path());
    })
    .await;
    let client = reqwest::Client::new();
    let order =
        json!({"aggregateId": "o-1", "customerId": "c", "items": [{"productId": "p", "quantity": 1}]});
    let placed = client.post(server.url("/api/commands/PlaceOrder")).json(&order).send().await.unwrap();
    assert_eq!(placed.status().as_u16(), 202);
    let read = client.get(server.url("/api/queries/orders/o-1?minVersion=1")).send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200);

    // Gauges are refreshed by background tasks every few seconds.
    let always = [
        "nexus_command_duration_seconds",
        "nexus_projection_lag_seconds",
        "nexus_projection_events_total",
        "nexus_projection_lag_events",
        "nexus_router_lag_events",
        "nexus_dlq_depth",
    ];
    assert!(
        always.iter().all(|f| referenced_families().contains(*f)),
        "the rules moved on: update this list"
    );
    let started = Instant::now();
    loop {
        let text = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let missing: Vec<&str> =
            always.iter().copied().filter(|f| !text.lines().any(|l| l.starts_with(f))).collect();
        if missing.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "not on /metrics: {missing:?}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
