//! Per-client rate limits (contract §5): 429 with `Retry-After` at the limit, allowed again after
//! the window, each endpoint class counted on its own.

use std::time::Duration;

use crate::support::TestServer;

async fn limited_server() -> TestServer {
    // A 6 s window keeps the test short; time-range queries stay at 1 per 6 s = 10/min, or the
    // architecture policy (rightly) refuses to start the server.
    TestServer::start_with(|config| {
        config.rate_limits.window_secs = 6;
        config.rate_limits.list_per_window = 5;
        config.rate_limits.temporal_per_window = 1;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_limited_then_allowed_again_after_the_window() {
    let server = limited_server().await;
    for n in 0..5u32 {
        let reply = server.get("/api/queries/orders").await;
        assert_eq!(reply.status, 200, "request {n} is within the limit");
        assert_eq!(reply.header("ratelimit-limit"), Some("5"));
        assert_eq!(reply.header("ratelimit-remaining"), Some((4 - n).to_string().as_str()));
    }
    let limited = server.get("/api/queries/orders").await;
    limited.assert_error(429, "RATE_LIMITED");
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));

    // Other classes and unlimited endpoints are not affected by the list limit.
    assert_eq!(server.get("/api/events?eventType=OrderPlaced").await.status, 200);
    assert_eq!(server.get("/health/live").await.status, 200);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(server.get("/api/queries/orders").await.status, 200, "allowed again after Retry-After");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_range_queries_have_their_own_lower_limit() {
    let server = limited_server().await;
    assert_eq!(server.get("/api/events?eventType=OrderPlaced").await.status, 200);
    server.get("/api/events?eventType=OrderPlaced").await.assert_error(429, "RATE_LIMITED");
    // One aggregate's events count as list reads, not time-range reads.
    assert_eq!(server.get("/api/events/nobody").await.status, 404);
    server.stop().await;
}

/// Every endpoint but health and the OpenAPI document is in a class whose limit can be set:
/// commands, reads, the registry and the admin API are open by default and limited when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reads_registry_and_admin_can_be_limited_too() {
    let open = TestServer::start().await;
    for n in 0..30 {
        let body = serde_json::json!({"customerId": "c", "items": [{"productId": "p", "quantity": 1}]});
        assert_eq!(open.command("PlaceOrder", body).await.status, 202, "command {n}: open by default");
    }
    open.stop().await;

    let server = TestServer::start_with(|config| {
        config.rate_limits.commands_per_window = 2;
        config.rate_limits.reads_per_window = 1;
        config.rate_limits.registry_per_window = 1;
        config.rate_limits.admin_per_window = 1;
    })
    .await;
    let body = serde_json::json!({"aggregateId": "o-1", "customerId": "c", "items": [{"productId": "p", "quantity": 1}]});
    assert_eq!(server.command("PlaceOrder", body.clone()).await.status, 202);
    assert_eq!(server.command("ConfirmOrder", serde_json::json!({"aggregateId": "o-1"})).await.status, 202);
    server
        .command("ShipOrder", serde_json::json!({"aggregateId": "o-1"}))
        .await
        .assert_error(429, "RATE_LIMITED");
    for path in ["/api/queries/orders/o-1", "/api/schema-registry/subjects", "/api/admin/projections"] {
        assert_eq!(server.get(path).await.status, 200, "{path}: the first is allowed");
        server.get(path).await.assert_error(429, "RATE_LIMITED");
    }
    // Lists are their own class, and health is never limited.
    assert_eq!(server.get("/api/queries/orders").await.status, 200);
    assert_eq!(server.get("/health/live").await.status, 200);
    server.stop().await;
}
