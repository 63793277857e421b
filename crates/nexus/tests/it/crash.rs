//! Kill -9 the real `nexus` process under load: no acknowledged event is lost, and the
//! projection catches up after restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Nexus, free_port};
use serde_json::{Value, json};

async fn start(data_dir: &std::path::Path, port: u16) -> Nexus {
    Nexus::serve_on(port, |command| {
        command.arg("--data-dir").arg(data_dir);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_and_projection_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(dir.path(), port).await;
    let client = reqwest::Client::new();

    // Load from 16 clients; every 202 is recorded as acknowledged.
    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..16 {
        let (client, base, acknowledged) = (client.clone(), server.base.clone(), acknowledged.clone());
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({
                    "customerId": format!("crash-{worker}"),
                    "items": [{"productId": format!("p{i}"), "quantity": 1, "unitPrice": 3}]
                });
                let Ok(response) =
                    client.post(format!("{base}/api/commands/PlaceOrder")).json(&body).send().await
                else {
                    break; // the server is gone
                };
                if response.status().as_u16() != 202 {
                    break;
                }
                let Ok(result) = response.json::<Value>().await else { break };
                let id = result["aggregateId"].as_str().unwrap().to_owned();
                acknowledged.lock().unwrap().push((id, result["version"].as_u64().unwrap()));
            }
        }));
    }
    // Let a few hundred commands land, then kill without any chance to shut down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    for task in load {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let server = start(dir.path(), port).await;
    for (id, version) in &acknowledged {
        let events: Value = client
            .get(format!("{}/api/events/{id}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = events["events"].as_array().unwrap_or_else(|| panic!("events of {id} lost: {events}"));
        assert_eq!(events.len() as u64, *version, "acknowledged events of {id} lost");
        let doc = client
            .get(format!("{}/api/queries/orders/{id}?minVersion={version}&timeoutMs=10000", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(doc.status().as_u16(), 200, "projection did not catch up on {id}");
    }
    // The read model holds no document that the store does not (exactly-once effect).
    let page: Value = client
        .get(format!("{}/api/queries/orders?limit=1", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let head: Value = client
        .get(format!("{}/api/admin/projections", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let store_head = head["items"][0]["head"].as_u64().unwrap();
    assert!(page["total"].as_u64().unwrap() <= store_head);
    assert!(page["total"].as_u64().unwrap() >= acknowledged.len() as u64);
    server.kill();
}
