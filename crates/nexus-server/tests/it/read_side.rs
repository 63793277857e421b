//! The read side beyond get and list: temporal queries and full-text search.

use crate::support::TestServer;
use serde_json::json;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_ranks_filters_counts_facets_and_pages() {
    let server = TestServer::start().await;
    let mut last = Vec::new();
    for (id, customer, product, quantity) in [
        ("s-1", "alice", "widget", 1),
        ("s-2", "bob", "widget", 2),
        ("s-3", "alice", "gadget", 3),
        ("s-4", "carol", "widget", 200),
    ] {
        let body = json!({"aggregateId": id, "customerId": customer, "items": [{"productId": product, "quantity": quantity, "unitPrice": 10}]});
        last.push((id, server.accepted("PlaceOrder", body).await["version"].as_u64().unwrap()));
    }
    server.accepted("ShipOrder", json!({"aggregateId": "s-2"})).await;
    last.push(("s-2", 2));
    for (id, version) in &last {
        server.document_at("orders", id, *version).await;
    }
    let widget = server.get("/api/queries/orders/search?q=widget&facets=status,tags").await;
    assert_eq!(widget.status, 200, "{}", widget.body);
    assert_eq!(widget.body["total"], 3);
    assert_eq!(widget.body["facets"]["status"], json!({"PLACED": 2, "SHIPPED": 1}));
    assert_eq!(widget.body["facets"]["tags"], json!({"high-value": 1}), "the 2000 order is high-value");
    assert!(widget.body["took"].is_u64());

    let alice_widget = server.get("/api/queries/orders/search?q=alice%20widget").await;
    assert_eq!(alice_widget.body["total"], 1, "every word must match");
    assert_eq!(alice_widget.body["results"][0]["id"], "s-1");

    let placed = server.get("/api/queries/orders/search?q=widget&status=PLACED").await;
    assert_eq!(placed.body["total"], 2, "filters apply to search");

    let page = server.get("/api/queries/orders/search?q=widget&limit=2").await;
    assert_eq!(page.body["results"].as_array().unwrap().len(), 2);
    let token = page.body["nextToken"].as_str().expect("a next page").to_owned();
    let rest = server.get(&format!("/api/queries/orders/search?q=widget&limit=2&nextToken={token}")).await;
    assert_eq!(rest.body["results"].as_array().unwrap().len(), 1);
    assert!(rest.body["nextToken"].is_null());
    server.get("/api/queries/orders/search?q=widget&limit=0").await.assert_error(400, "VALIDATION_ERROR");
    server.get("/api/queries/nothing/search?q=x").await.assert_error(404, "NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_while_queries_keep_answering() {
    let server = TestServer::start().await;
    let mut last = (String::new(), 0);
    let mut last_placed = String::new();
    for n in 0..150 {
        let body = json!({"customerId": format!("c-{}", n % 7), "items": [{"productId": format!("p-{n}"), "quantity": 1 + n % 4, "unitPrice": 3}]});
        let placed = server.accepted("PlaceOrder", body).await;
        last_placed = placed["aggregateId"].as_str().unwrap().to_owned();
        if n % 3 == 0 {
            let id = placed["aggregateId"].as_str().unwrap().to_owned();
            server.accepted("CancelOrder", json!({"aggregateId": id, "reason": "test"})).await;
            last = (id, 2);
        }
    }
    // Projections apply in order: once the last event is in, all are.
    server.document_at("orders", &last_placed, 1).await;
    server.document_at("orders", &last.0, last.1).await;
    let before = server.get("/api/queries/orders?limit=1000&sort=id:asc").await;
    assert_eq!(before.body["total"], 150);
    let search_before = server.get("/api/queries/orders/search?q=p-42").await.body["results"].clone();

    // Readers hammer the live model during the whole rebuild.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (http, base, stop) = (server.http.clone(), server.base.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for path in
                        ["/api/queries/orders?limit=5&status=CANCELLED", "/api/queries/orders/search?q=p-7"]
                    {
                        let response = http.get(format!("{base}{path}")).send().await.unwrap();
                        if response.status().is_success() {
                            ok += 1
                        } else {
                            failed.push(response.status().as_u16())
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let started = server.http.post(server.url("/api/admin/projections/orders/rebuild")).send().await.unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = server.get("/api/admin/projections").await;
        let orders =
            status.body["items"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap().clone();
        if orders["state"] == "RUNNING" && orders["rebuildsCompleted"] == 1 {
            assert_eq!(orders["lag"], 0, "{orders}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish: {orders}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        let (ok, failed) = reader.await.unwrap();
        assert!(failed.is_empty(), "queries failed during the rebuild: {failed:?}");
        assert!(ok > 0);
    }
    let after = server.get("/api/queries/orders?limit=1000&sort=id:asc").await;
    assert_eq!(after.body, before.body, "the rebuilt model is identical");
    assert_eq!(server.get("/api/queries/orders/search?q=p-42").await.body["results"], search_before);
    server.get("/api/admin/projections/nothing/rebuild").await.assert_error(405, "METHOD_NOT_ALLOWED");
    let missing =
        server.http.post(server.url("/api/admin/projections/nothing/rebuild")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_queries_from_snapshots_match_the_full_history() {
    let server = TestServer::start_with(|config| config.snapshots.every_events = 10).await;
    for _ in 0..35 {
        server.accepted("AddStock", json!({"aggregateId": "p-snap", "quantity": 1})).await;
    }
    // Snapshots at 10, 20 and 30 are saved in the background; give them a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events = server.events_of("p-snap").await;
    for n in [5usize, 10, 15, 25, 31, 35] {
        let at = events[n - 1]["timestamp"].as_str().unwrap();
        // The state at `at` holds every event stamped at or before it (several may share a ms).
        let expected = events.iter().filter(|e| e["timestamp"].as_str().unwrap() <= at).count();
        let then = server.get(&format!("/api/queries/temporal/p-snap?asOf={at}")).await;
        assert_eq!(then.status, 200, "{}", then.body);
        assert_eq!(then.body["state"]["available"], expected, "as of event {n}");
        assert_eq!(then.body["version"], expected);
    }
    server.stop().await;
}
