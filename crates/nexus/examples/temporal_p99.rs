//! Temporal query latency on a 10,000-event aggregate with snapshots every 1,000 events, through
//! the real HTTP API of an embedded server. The 10/min/client limit is honoured by asking from a
//! different loopback address each time (every 127.x.y.z is this machine).
//!
//! `cargo run --release -p nexus --example temporal_p99`

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = nexus_server::Config::embedded(dir.path());
    tokio::spawn(nexus_server::run(config, nexus_domain::domain(), listener, std::future::pending()));
    let client = reqwest::Client::new();
    while client.get(format!("{base}/health/ready")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    for _ in 0..10_000 {
        let response = client
            .post(format!("{base}/api/commands/AddStock"))
            .json(&json!({"aggregateId": "p-10k", "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    println!("10,000 events on one aggregate in {:.1} s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(500)).await; // the last snapshots land
    let history: Value = client
        .get(format!("{base}/api/events/p-10k?fromVersion=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stamps: Vec<String> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().to_owned())
        .collect();
    let mut latencies = Vec::new();
    for n in 0..200u32 {
        let local = std::net::IpAddr::from([127, 1, (n / 250) as u8, (n % 250 + 2) as u8]);
        let client = reqwest::Client::builder().local_address(local).build().unwrap();
        let at = &stamps[(n as usize * 7919) % stamps.len()];
        let started = Instant::now();
        let response =
            client.get(format!("{base}/api/queries/temporal/p-10k?asOf={at}")).send().await.unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(response.status().as_u16(), 200);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "temporal query on a 10,000-event aggregate (snapshots every 1,000): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies[100], latencies[197], latencies[199]
    );
}
