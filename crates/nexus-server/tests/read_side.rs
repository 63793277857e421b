//! The read side beyond get and list: temporal queries and full-text search.

mod support;

use serde_json::json;
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_queries_show_the_read_model_as_it_was() {
    let server = TestServer::start().await;
    let placed = server
        .accepted(
            "PlaceOrder",
            json!({"aggregateId": "o-time", "customerId": "c-1", "items": [{"productId": "p", "quantity": 2, "unitPrice": 5}]}),
        )
        .await;
    assert_eq!(placed["version"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    server.accepted("ConfirmOrder", json!({"aggregateId": "o-time"})).await;
    let events = server.events_of("o-time").await;
    let placed_at = events[0]["timestamp"].as_str().unwrap().to_owned();
    assert!(events[1]["timestamp"].as_str().unwrap() > placed_at.as_str(), "distinct timestamps");

    let then = server.get(&format!("/api/queries/temporal/o-time?asOf={placed_at}")).await;
    assert_eq!(then.status, 200, "{}", then.body);
    assert_eq!(then.body["version"], 1);
    assert_eq!(then.body["asOf"], placed_at);
    assert_eq!(then.body["state"]["status"], "PLACED");
    assert_eq!(then.body["state"]["total"], 10.0);
    assert_eq!(then.body["state"]["items"][0]["productId"], "p");

    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let latest = server.get(&format!("/api/queries/temporal/o-time?asOf={now}")).await;
    assert_eq!(
        (latest.body["version"].as_u64(), latest.body["state"]["status"].as_str()),
        (Some(2), Some("CONFIRMED"))
    );

    let placed_time = chrono::DateTime::parse_from_rfc3339(&placed_at).unwrap();
    let just_before = (placed_time - chrono::Duration::milliseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let before =
        server.get(&format!("/api/queries/temporal/o-time?asOf={}", just_before.replace('+', "%2B"))).await;
    before.assert_error(404, "NOT_FOUND");
    let too_old = (chrono::Utc::now() - chrono::Duration::days(91))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    server
        .get(&format!("/api/queries/temporal/o-time?asOf={too_old}"))
        .await
        .assert_error(400, "TIME_RANGE_EXCEEDED");
    server.get("/api/queries/temporal/o-time").await.assert_error(400, "VALIDATION_ERROR");
    server.get("/api/queries/temporal/o-time?asOf=yesterday").await.assert_error(400, "VALIDATION_ERROR");

    // An aggregate without a read model is shown in its own state form.
    server.accepted("AddStock", json!({"aggregateId": "p-time", "quantity": 7})).await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let stock = server.get(&format!("/api/queries/temporal/p-time?asOf={now}")).await;
    assert_eq!(stock.status, 200, "{}", stock.body);
    assert_eq!(stock.body["state"]["available"], 7);
    server.stop().await;
}
