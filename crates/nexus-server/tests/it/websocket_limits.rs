//! WebSocket limits (contract §5): connections per client, notifications per second per client,
//! and a slow client that never holds up other clients or the projection.

use std::time::Duration;

use crate::support::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_are_limited() {
    let server = TestServer::start_with(|config| config.limits.ws_connections_per_client = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.websocket().await);
    }
    let url = format!("{}/api/subscriptions", server.base.replacen("http://", "ws://", 1));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("a fourth connection must be refused with 429, got {:?}", other.map(|_| ())),
    }
    // Another client is counted on its own; a closed connection frees its slot.
    let _other = server.websocket_from("127.0.0.2").await;
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _again = server.websocket().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_told_what_it_missed_and_holds_up_no_one() {
    let server = TestServer::start_with(|config| config.limits.ws_notifications_per_second = 20).await;
    let ids: Vec<String> = (0..120).map(|n| format!("ws-{n}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut slow = server.websocket().await;
    slow.request("subscribe", &id_refs).await;
    let mut fast = server.websocket_from("127.0.0.2").await;
    fast.request("subscribe", &[ids.last().unwrap().as_str()]).await;

    // The slow client reads nothing while 120 orders are placed.
    for id in &ids {
        server
            .accepted(
                "PlaceOrder",
                json!({"aggregateId": id, "customerId": "c", "items": [{"productId": "p", "quantity": 1}]}),
            )
            .await;
    }
    let note = fast.next().await;
    assert_eq!(
        (note["type"].as_str(), note["aggregateId"].as_str()),
        (Some("projection_updated"), Some("ws-119"))
    );
    let projections = server.get("/api/admin/projections").await;
    let orders =
        projections.body["items"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap().clone();
    assert_eq!(orders["lag"], 0, "the projection kept up: {orders}");

    // Now it reads: some notifications, and a report of how many it missed; nothing is lost
    // silently.
    let (mut delivered, mut missed) = (0u64, 0u64);
    while let Some(message) = slow.next_within(Duration::from_secs(3)).await {
        match message["type"].as_str() {
            Some("projection_updated") => delivered += 1,
            Some("lagged") => missed += message["missed"].as_u64().unwrap(),
            other => panic!("unexpected {other:?}: {message}"),
        }
        if delivered + missed == 120 {
            break;
        }
    }
    assert!(missed > 0, "120 notifications at 20/s cannot all be delivered at once");
    assert_eq!(delivered + missed, 120, "every notification was delivered or counted as missed");
    server.stop().await;
}
