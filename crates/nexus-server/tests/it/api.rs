//! The external contract (§2–§5, §8, §10 of the API contract), checked over real HTTP
//! and WebSocket against real servers on port 0 with the reference domain.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{Reply, TestServer, is_iso_millis};
use serde_json::{Value, json};

fn place_body(id: &str, customer: &str, unit_price: f64) -> Value {
    json!({
        "aggregateId": id,
        "customerId": customer,
        "items": [{"productId": "p-1", "quantity": 1, "unitPrice": unit_price}]
    })
}

fn string_of(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

/// §3, §5: 202 body, WebSocket push after the projection, read-your-writes with `minVersion`,
/// and `unsubscribe` really stopping the pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_notified_and_reads_its_writes() {
    let server = TestServer::start().await;
    let (id, sentinel) = ("o-ws-1", "o-ws-sentinel");
    let mut ws = server.websocket().await;
    ws.request("subscribe", &[id, sentinel]).await;

    let items = json!([
        {"productId": "p-1", "quantity": 2, "unitPrice": 10.5},
        {"productId": "p-2", "quantity": 1, "unitPrice": 4.25}
    ]);
    let placed =
        server.command("PlaceOrder", json!({"aggregateId": id, "customerId": "c-ws", "items": items})).await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    let body = &placed.body;
    assert_eq!(body["success"], true);
    assert!(body["commandId"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    assert_eq!(body["aggregateId"], id);
    assert_eq!(body["version"], 1);
    let event_ids = body["eventIds"].as_array().expect("eventIds");
    assert_eq!(event_ids.len(), 1, "{body}");

    let note = ws.next().await;
    assert_eq!(note["type"], "projection_updated", "{note}");
    assert_eq!(note["aggregateId"], id);
    assert_eq!(note["version"], 1);
    assert_eq!(note["eventId"], event_ids[0]);
    assert!(is_iso_millis(&string_of(&note["timestamp"])), "{note}");

    let doc = server.document_at("orders", id, 1).await;
    assert_eq!(doc["id"], id);
    assert_eq!(doc["aggregateId"], id);
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["status"], "PLACED");
    assert_eq!(doc["customerId"], "c-ws");
    assert_eq!(doc["items"], items);
    assert_eq!(doc["total"].as_f64(), Some(25.25), "{doc}");
    let last_updated = string_of(&doc["lastUpdated"]);
    assert!(is_iso_millis(&last_updated), "lastUpdated {last_updated}");
    assert_eq!(doc["lastUpdated"], note["timestamp"], "the document is the event's state");

    let confirmed = server.accepted("ConfirmOrder", json!({"aggregateId": id})).await;
    assert_eq!(confirmed["version"], 2);
    assert_eq!(confirmed["aggregateId"], id);
    let note = ws.next().await;
    assert_eq!((note["type"].clone(), note["aggregateId"].clone()), (json!("projection_updated"), json!(id)));
    assert_eq!(note["version"], 2);
    assert_eq!(note["eventId"], confirmed["eventIds"][0]);
    let doc = server.document_at("orders", id, 2).await;
    assert_eq!(doc["status"], "CONFIRMED");
    assert_eq!(doc["version"], 2);

    ws.request("unsubscribe", &[id]).await;
    assert_eq!(server.accepted("ShipOrder", json!({"aggregateId": id})).await["version"], 3);
    assert_eq!(server.document_at("orders", id, 3).await["status"], "SHIPPED");
    // The sentinel's update is published after the shipment's: if the shipment had been pushed,
    // it would arrive first.
    server.accepted("PlaceOrder", place_body(sentinel, "c-ws", 1.0)).await;
    let note = ws.next().await;
    assert_eq!(note["aggregateId"], sentinel, "a notification for an unsubscribed id: {note}");
    assert_eq!(note["version"], 1);
    let extra = ws.next_within(Duration::from_millis(200)).await;
    assert_eq!(extra, None, "nothing else was subscribed to");
}

/// §2: every bad field is named with a JSON-pointer-like path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_each_field() {
    let server = TestServer::start().await;

    let reply = server
        .command("PlaceOrder", json!({"items": [{"productId": "p", "quantity": 0}, {"quantity": "x"}]}))
        .await;
    let fields = reply.error_fields();
    for expected in ["customerId", "items[0].quantity", "items[1].productId", "items[1].quantity"] {
        assert!(fields.iter().any(|f| f == expected), "{expected} missing from {}", reply.body);
    }

    let reply = server.command("ConfirmOrder", json!({})).await;
    assert!(reply.error_fields().contains(&"aggregateId".to_owned()), "{}", reply.body);

    let reply = server.command("ConfirmOrder", json!({"aggregateId": "has space"})).await;
    assert!(reply.error_fields().contains(&"aggregateId".to_owned()), "{}", reply.body);
    let reply = server.command("PlaceOrder", place_body("has space", "c-1", 1.0)).await;
    assert!(reply.error_fields().contains(&"aggregateId".to_owned()), "{}", reply.body);
    let long = "x".repeat(129);
    let reply = server.command("PlaceOrder", place_body(&long, "c-1", 1.0)).await;
    assert!(reply.error_fields().contains(&"aggregateId".to_owned()), "{}", reply.body);

    let mut body = place_body("o-val", "c-1", 1.0);
    body["expectedVersion"] = json!("abc");
    let reply = server.command("PlaceOrder", body).await;
    assert!(reply.error_fields().contains(&"expectedVersion".to_owned()), "{}", reply.body);

    // None of them appended anything.
    let reply = server.get("/api/events/o-val").await;
    assert!(reply.status == 404 || reply.body["events"] == json!([]), "o-val has events: {}", reply.body);
}

/// §2, §3: a stale `expectedVersion` is a 409 that names both versions and appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_expected_version_is_a_conflict() {
    let server = TestServer::start().await;
    let id = "o-cc";
    assert_eq!(server.accepted("PlaceOrder", place_body(id, "c-1", 5.0)).await["version"], 1);
    let confirmed = server.accepted("ConfirmOrder", json!({"aggregateId": id, "expectedVersion": 1})).await;
    assert_eq!(confirmed["version"], 2);

    let reply = server.command("CancelOrder", json!({"aggregateId": id, "expectedVersion": 1})).await;
    reply.assert_error(409, "CONCURRENCY_CONFLICT");
    assert_eq!(reply.body["expectedVersion"], 1);
    assert_eq!(reply.body["actualVersion"], 2);

    let events = server.events_of(id).await;
    let versions: Vec<_> = events.iter().map(|e| e["aggregateVersion"].clone()).collect();
    assert_eq!(versions, [json!(1), json!(2)]);

    // A creating command with expectedVersion 0 on an existing aggregate is a conflict too.
    let mut again = place_body(id, "c-1", 5.0);
    again["expectedVersion"] = json!(0);
    let reply = server.command("PlaceOrder", again).await;
    reply.assert_error(409, "CONCURRENCY_CONFLICT");
    assert_eq!(reply.body["actualVersion"], 2);
}

/// §3: a replayed `commandId` (body or `Idempotency-Key`) answers the same and appends nothing;
/// reused for another command it is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_command_id_returns_the_first_result() {
    let server = TestServer::start().await;

    let mut body = place_body("o-idem", "c-1", 3.0);
    body["commandId"] = json!("cmd-idem-1");
    let first = server.accepted("PlaceOrder", body.clone()).await;
    assert_eq!(first["commandId"], "cmd-idem-1");
    let second = server.accepted("PlaceOrder", body.clone()).await;
    assert_eq!(first, second);
    assert_eq!(server.events_of("o-idem").await.len(), 1);

    // The same command with its keys in another order is the same command.
    let reordered = r#"{"items": [{"unitPrice": 3.0, "quantity": 1, "productId": "p-1"}],
        "customerId": "c-1", "commandId": "cmd-idem-1", "aggregateId": "o-idem"}"#;
    let response = server
        .http
        .post(server.url("/api/commands/PlaceOrder"))
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .expect("POST");
    let third = Reply::read(response).await;
    assert_eq!(third.status, 202, "{}", third.body);
    assert_eq!(third.body, first);

    let keyed = place_body("o-idem-h", "c-1", 3.0);
    let headers = [("Idempotency-Key", "key-idem-1")];
    let first = server.command_with("PlaceOrder", keyed.clone(), &headers).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.body["commandId"], "key-idem-1");
    let second = server.command_with("PlaceOrder", keyed, &headers).await;
    assert_eq!(second.status, 202, "{}", second.body);
    assert_eq!(first.body, second.body);
    assert_eq!(server.events_of("o-idem-h").await.len(), 1);

    // The same non-creating command replayed after the aggregate moved on still answers the same.
    let confirm = json!({"aggregateId": "o-idem", "commandId": "cmd-idem-2"});
    let first = server.accepted("ConfirmOrder", confirm.clone()).await;
    server.accepted("ShipOrder", json!({"aggregateId": "o-idem"})).await;
    assert_eq!(server.accepted("ConfirmOrder", confirm).await, first);
    assert_eq!(server.events_of("o-idem").await.len(), 3);

    let mut different = body;
    different["customerId"] = json!("someone-else");
    server.command("PlaceOrder", different).await.assert_error(409, "IDEMPOTENCY_CONFLICT");
    let reply =
        server.command("ConfirmOrder", json!({"aggregateId": "o-idem-h", "commandId": "cmd-idem-1"})).await;
    reply.assert_error(409, "IDEMPOTENCY_CONFLICT");
    assert_eq!(server.events_of("o-idem-h").await.len(), 1);
}

/// §3: a client that lets the server pick the aggregate id and retries with the same `commandId`
/// (the usual retry after a lost response) must get the first answer back, not a conflict, and
/// must not create a second order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_creating_command_without_aggregate_id_returns_the_first_result() {
    let server = TestServer::start().await;
    let body = json!({
        "commandId": "cmd-gen-1",
        "customerId": "c-1",
        "items": [{"productId": "p-1", "quantity": 1}]
    });
    let first = server.accepted("PlaceOrder", body.clone()).await;
    let second = server.command("PlaceOrder", body).await;
    assert_eq!(second.status, 202, "retrying the same commandId was refused: {}", second.body);
    assert_eq!(second.body, first);

    let payload = json!({"customerId": "c-2", "items": [{"productId": "p-1", "quantity": 1}]});
    let headers = [("Idempotency-Key", "key-gen-1")];
    let first = server.command_with("PlaceOrder", payload.clone(), &headers).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let second = server.command_with("PlaceOrder", payload, &headers).await;
    assert_eq!(second.status, 202, "retrying the same Idempotency-Key was refused: {}", second.body);
    assert_eq!(second.body, first.body);

    // Two orders in all, one per distinct command.
    let placed = server.get("/api/events?eventType=OrderPlaced").await;
    assert_eq!(placed.body["events"].as_array().map(Vec::len), Some(2), "{}", placed.body);
}

/// §3: retries of one command that race each other (a client timed out and retried while its
/// first attempt was still running) all get the first answer, and the command runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_of_one_command_all_get_the_first_result() {
    let server = TestServer::start().await;
    let mut body = place_body("o-race", "c-1", 1.0);
    body["commandId"] = json!("cmd-race-1");
    let replies = send_concurrently(&server, "PlaceOrder", &body, 10).await;
    for reply in &replies {
        assert_eq!(reply.status, 202, "a retry of an accepted command was refused: {}", reply.body);
        assert_eq!(reply.body, replies[0].body);
    }
    assert_eq!(server.events_of("o-race").await.len(), 1);
}

/// Sends the same command `count` times at once.
async fn send_concurrently(
    server: &TestServer,
    command_type: &str,
    body: &Value,
    count: usize,
) -> Vec<Reply> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (http, url) = (server.http.clone(), server.url(&format!("/api/commands/{command_type}")));
        let body = body.clone();
        tasks.spawn(async move { Reply::read(http.post(url).json(&body).send().await.expect("POST")).await });
    }
    tasks.join_all().await
}

/// §3: concurrent commands on one aggregate are serialized, none is lost, versions are gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_aggregate_are_all_applied_in_order() {
    let server = TestServer::start().await;
    let id = "p-conc";
    let replies =
        send_concurrently(&server, "AddStock", &json!({"aggregateId": id, "quantity": 1}), 30).await;
    let mut versions = BTreeSet::new();
    let mut event_ids = BTreeSet::new();
    for reply in replies {
        assert_eq!(reply.status, 202, "{}", reply.body);
        versions.insert(reply.body["version"].as_u64().expect("version"));
        event_ids.insert(string_of(&reply.body["eventIds"][0]));
    }
    assert_eq!(versions, (1..=30).collect::<BTreeSet<u64>>());
    assert_eq!(event_ids.len(), 30);

    let events = server.events_of(id).await;
    let stored: Vec<u64> = events.iter().map(|e| e["aggregateVersion"].as_u64().unwrap()).collect();
    assert_eq!(stored, (1..=30).collect::<Vec<u64>>());
    let positions: Vec<u64> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions {positions:?}");
    assert!(events.iter().all(|e| e["eventType"] == "StockAdded" && e["payload"]["quantity"] == 1));
    let stored_ids: BTreeSet<String> = events.iter().map(|e| string_of(&e["eventId"])).collect();
    assert_eq!(stored_ids, event_ids);

    // All 30 units are really there: 30 can be reserved, then not one more.
    server.accepted("ReserveStock", json!({"aggregateId": id, "orderId": "o-1", "quantity": 30})).await;
    let reply =
        server.command("ReserveStock", json!({"aggregateId": id, "orderId": "o-2", "quantity": 1})).await;
    reply.assert_error(400, "BUSINESS_RULE_VIOLATION");
}

/// §2, §8: well-formed commands the aggregate refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_enforce_their_business_rules() {
    let server = TestServer::start().await;
    let id = "o-br";
    server.accepted("PlaceOrder", place_body(id, "c-1", 2.0)).await;
    server.accepted("CancelOrder", json!({"aggregateId": id, "reason": "changed my mind"})).await;
    server
        .command("ShipOrder", json!({"aggregateId": id}))
        .await
        .assert_error(400, "BUSINESS_RULE_VIOLATION");
    server
        .command("CancelOrder", json!({"aggregateId": id}))
        .await
        .assert_error(400, "BUSINESS_RULE_VIOLATION");
    server
        .command("PlaceOrder", place_body(id, "c-1", 2.0))
        .await
        .assert_error(400, "BUSINESS_RULE_VIOLATION");
    assert_eq!(server.events_of(id).await.len(), 2);
    let doc = server.document_at("orders", id, 2).await;
    assert_eq!(doc["status"], "CANCELLED");
    assert_eq!(doc["cancelReason"], "changed my mind");

    let product = "p-br";
    server.accepted("AddStock", json!({"aggregateId": product, "quantity": 5})).await;
    let reply = server
        .command("ReserveStock", json!({"aggregateId": product, "orderId": "o-1", "quantity": 6}))
        .await;
    reply.assert_error(400, "BUSINESS_RULE_VIOLATION");
    let reserved = server
        .accepted("ReserveStock", json!({"aggregateId": product, "orderId": "o-1", "quantity": 5}))
        .await;
    assert_eq!(reserved["version"], 2);
    assert_eq!(server.events_of(product).await.len(), 2);
}

/// §2: failures before any handler runs still answer in the contract's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_use_the_contract_shape() {
    let server = TestServer::start().await;
    let post = |path: &str, content_type: &str, body: String| {
        server.http.post(server.url(path)).header("content-type", content_type).body(body).send()
    };

    let reply = Reply::read(
        post("/api/commands/PlaceOrder", "application/json", r#"{"customerId": "#.into()).await.unwrap(),
    )
    .await;
    reply.assert_error(400, "VALIDATION_ERROR");

    let huge = format!(r#"{{"customerId": "{}", "items": []}}"#, "x".repeat(1024 * 1024));
    let reply = Reply::read(post("/api/commands/PlaceOrder", "application/json", huge).await.unwrap()).await;
    reply.assert_error(413, "PAYLOAD_TOO_LARGE");

    let body = place_body("o-text", "c-1", 1.0).to_string();
    let reply = Reply::read(post("/api/commands/PlaceOrder", "text/plain", body).await.unwrap()).await;
    reply.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");

    server.command("LaunchRocket", json!({"aggregateId": "r-1"})).await.assert_error(404, "UNKNOWN_COMMAND");
    server.get("/api/no-such-route").await.assert_error(404, "NOT_FOUND");
    server.get("/api/queries/orders/nope").await.assert_error(404, "NOT_FOUND");
    server.get("/api/queries/nothing").await.assert_error(404, "NOT_FOUND");
    server.get("/api/queries/nothing/some-id").await.assert_error(404, "NOT_FOUND");

    // Not in the table of §2, but still an error body of the contract's shape.
    let reply = server.get("/api/commands/PlaceOrder").await;
    assert!(reply.status >= 400, "{}", reply.status);
    assert!(reply.body["code"].is_string() && reply.body["message"].is_string(), "{}", reply.body);

    server.accepted("PlaceOrder", place_body("o-wait", "c-1", 1.0)).await;
    server.document_at("orders", "o-wait", 1).await;
    let started = Instant::now();
    let reply = server.get("/api/queries/orders/o-wait?minVersion=2&timeoutMs=200").await;
    reply.assert_error(504, "PROJECTION_TIMEOUT");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(3), "waited {waited:?}");
    let reply = server.get("/api/queries/orders/o-never?minVersion=1&timeoutMs=200").await;
    reply.assert_error(504, "PROJECTION_TIMEOUT");
}

/// §5: filtered, sorted, paged lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_and_page() {
    let server = TestServer::start().await;
    let mine = [
        ("o-list-1", 10.0),
        ("o-list-2", 20.0),
        ("o-list-3", 30.0),
        ("o-list-4", 40.0),
        ("o-list-5", 1500.0),
    ];
    let others = [("o-other-1", 2000.0), ("o-other-2", 25.0)];
    for (id, price) in mine {
        server.accepted("PlaceOrder", place_body(id, "c-list", price)).await;
    }
    for (id, price) in others {
        server.accepted("PlaceOrder", place_body(id, "c-other", price)).await;
    }
    for (id, _) in mine.iter().chain(&others) {
        server.document_at("orders", id, 1).await;
    }

    let first = server.get("/api/queries/orders?customerId=c-list&limit=2&sort=total:desc").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("cache-control"), Some("max-age=60"));
    assert_eq!(first.body["total"], 5);
    let totals: Vec<f64> =
        first.body["items"].as_array().unwrap().iter().map(|d| d["total"].as_f64().unwrap()).collect();
    assert_eq!(totals, [1500.0, 40.0]);

    let mut seen = Vec::new();
    let mut page = first.body;
    for _ in 0..10 {
        for item in page["items"].as_array().expect("items") {
            assert_eq!(item["customerId"], "c-list");
            seen.push((string_of(&item["id"]), item["total"].as_f64().unwrap()));
        }
        let Some(token) = page["nextToken"].as_str() else { break };
        let reply = server
            .get(&format!("/api/queries/orders?customerId=c-list&limit=2&sort=total:desc&nextToken={token}"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["total"], 5);
        page = reply.body;
    }
    let expected: Vec<(String, f64)> = [
        ("o-list-5", 1500.0),
        ("o-list-4", 40.0),
        ("o-list-3", 30.0),
        ("o-list-2", 20.0),
        ("o-list-1", 10.0),
    ]
    .iter()
    .map(|(id, total)| (id.to_string(), *total))
    .collect();
    assert_eq!(seen, expected, "every order exactly once, by total descending");

    let reply = server.get("/api/queries/orders?limit=0").await;
    assert!(reply.error_fields().contains(&"limit".to_owned()), "{}", reply.body);
    let reply = server.get("/api/queries/orders?customerId=c-list&nextToken=garbage!!").await;
    assert!(reply.error_fields().contains(&"nextToken".to_owned()), "{}", reply.body);
    // A token belongs to the query that made it.
    let token =
        server.get("/api/queries/orders?customerId=c-list&limit=2&sort=total:desc").await.body["nextToken"]
            .as_str()
            .expect("nextToken")
            .to_owned();
    let reply =
        server.get(&format!("/api/queries/orders?customerId=c-other&limit=2&nextToken={token}")).await;
    assert!(reply.error_fields().contains(&"nextToken".to_owned()), "{}", reply.body);

    server.accepted("CancelOrder", json!({"aggregateId": "o-list-2"})).await;
    server.document_at("orders", "o-list-2", 2).await;
    let reply = server.get("/api/queries/orders?status=CANCELLED").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["total"], 1);
    assert_eq!(reply.body["items"][0]["id"], "o-list-2");
    assert_eq!(reply.body["nextToken"], Value::Null);
    let reply = server.get("/api/queries/orders?customerId=c-list&status=PLACED").await;
    assert_eq!(reply.body["total"], 4, "{}", reply.body);

    // Orders of at least 1000 are tagged high-value (orders.rs HIGH_VALUE_TOTAL).
    let reply = server.get("/api/queries/orders?tags=high-value&sort=total:asc").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["total"], 2);
    let ids: Vec<_> = reply.body["items"].as_array().unwrap().iter().map(|d| string_of(&d["id"])).collect();
    assert_eq!(ids, ["o-list-5", "o-other-1"]);
    assert_eq!(reply.body["items"][0]["tags"], json!(["high-value"]));
    let reply = server.get("/api/queries/orders?tags=high-value&customerId=c-list").await;
    assert_eq!(reply.body["total"], 1, "{}", reply.body);
}

/// §4: the audit store over HTTP, and §7's current schema version in the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_served_in_the_contract_shape() {
    let server = TestServer::start().await;
    let id = "o-ev";
    let placed = server
        .command_with("PlaceOrder", place_body(id, "c-ev", 7.5), &[("X-Correlation-Id", "corr-ev")])
        .await;
    assert_eq!(placed.status, 202, "{}", placed.body);
    let confirmed = server.accepted("ConfirmOrder", json!({"aggregateId": id})).await;
    server.accepted("ShipOrder", json!({"aggregateId": id})).await;

    let reply = server.get(&format!("/api/events/{id}?fromVersion=2&toVersion=2")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["aggregateId"], id);
    let only = reply.body["events"].as_array().expect("events");
    assert_eq!(only.len(), 1, "{}", reply.body);
    assert_eq!(only[0]["aggregateVersion"], 2);
    assert_eq!(only[0]["eventType"], "OrderConfirmed");
    assert_eq!(only[0]["eventId"], confirmed["eventIds"][0]);

    let events = server.events_of(id).await;
    let types: Vec<_> = events.iter().map(|e| string_of(&e["eventType"])).collect();
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed", "OrderShipped"]);
    let event = &events[0];
    let keys: BTreeSet<_> = event.as_object().unwrap().keys().map(String::as_str).collect();
    let expected_keys = BTreeSet::from([
        "eventId",
        "eventType",
        "aggregateId",
        "aggregateVersion",
        "position",
        "timestamp",
        "payload",
        "metadata",
    ]);
    assert_eq!(keys, expected_keys, "{event}");
    assert_eq!(event["eventId"], placed.body["eventIds"][0]);
    assert_eq!(event["aggregateId"], id);
    assert_eq!(event["aggregateVersion"], 1);
    assert!(event["position"].as_u64().is_some_and(|p| p >= 1), "{event}");
    assert!(is_iso_millis(&string_of(&event["timestamp"])), "{event}");
    assert_eq!(event["payload"]["customerId"], "c-ev");
    assert_eq!(event["payload"]["total"].as_f64(), Some(7.5));
    let metadata = event["metadata"].as_object().expect("metadata");
    let keys: BTreeSet<_> = metadata.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["correlationId", "causationId", "userId", "schemaVersion"]));
    assert_eq!(metadata["correlationId"], "corr-ev");
    assert!(metadata["causationId"].is_string() && metadata["userId"].is_string(), "{event}");
    assert_eq!(metadata["schemaVersion"], "1");

    server.accepted("PlaceOrder", place_body("o-ev-2", "c-ev", 1.0)).await;
    server.accepted("PlaceOrder", place_body("o-ev-3", "c-ev", 1.0)).await;
    let reply = server.get("/api/events?eventType=OrderPlaced&limit=2").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let listed = reply.body["events"].as_array().expect("events");
    assert_eq!(listed.len(), 2, "{}", reply.body);
    assert!(listed.iter().all(|e| e["eventType"] == "OrderPlaced"), "{}", reply.body);
    let times: Vec<_> = listed.iter().map(|e| string_of(&e["timestamp"])).collect();
    assert!(times[0] <= times[1], "not in time order: {times:?}");
    let reply = server.get("/api/events?eventType=OrderShipped").await;
    assert_eq!(reply.body["events"].as_array().map(Vec::len), Some(1), "{}", reply.body);

    let reply = server.get("/api/events?limit=2").await;
    assert!(reply.error_fields().contains(&"eventType".to_owned()), "{}", reply.body);

    let user =
        json!({"aggregateId": "u-1", "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"});
    server.accepted("RegisterUser", user).await;
    let events = server.events_of("u-1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["eventType"], "UserRegistered");
    assert_eq!(events[0]["metadata"]["schemaVersion"], "2");
    assert_eq!(
        events[0]["payload"],
        json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"})
    );
    let doc = server.document_at("users", "u-1", 1).await;
    assert_eq!(doc["firstName"], "Ada");
    assert_eq!(doc["lastName"], "Lovelace");
    assert_eq!(doc["email"], "ada@example.com");
    assert_eq!(doc["status"], "ACTIVE");
}

/// §3: a body with a `payload` object is the seed's full `Command` envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_command_envelope_is_accepted() {
    let server = TestServer::start().await;
    let body = json!({
        "commandId": "cmd-env-1",
        "commandType": "PlaceOrder",
        "aggregateId": "o-env",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "payload": {"customerId": "c-env", "items": [{"productId": "p-1", "quantity": 3, "unitPrice": 2.5}]},
        "metadata": {"userId": "u1", "correlationId": "corr-1", "causationId": "cause-1"}
    });
    let result = server.accepted("PlaceOrder", body).await;
    assert_eq!(result["commandId"], "cmd-env-1");
    assert_eq!(result["aggregateId"], "o-env");
    assert_eq!(result["version"], 1);

    let events = server.events_of("o-env").await;
    assert_eq!(events.len(), 1);
    let metadata = &events[0]["metadata"];
    assert_eq!(metadata["userId"], "u1");
    assert_eq!(metadata["correlationId"], "corr-1");
    assert_eq!(metadata["causationId"], "cause-1");
    assert_eq!(events[0]["payload"]["customerId"], "c-env");
    assert_eq!(events[0]["payload"]["total"].as_f64(), Some(7.5));

    // The envelope's type must agree with the path.
    let mismatched = json!({
        "commandType": "ShipOrder",
        "aggregateId": "o-env-2",
        "payload": {"customerId": "c-env", "items": [{"productId": "p-1", "quantity": 1}]}
    });
    let reply = server.command("PlaceOrder", mismatched).await;
    assert!(reply.error_fields().contains(&"commandType".to_owned()), "{}", reply.body);
}

/// §10: health and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/health/live").await.status, 200);
    assert_eq!(server.get("/health/ready").await.status, 200);
    server.accepted("PlaceOrder", place_body("o-metrics", "c-1", 1.0)).await;
    // Once the order is in its read model, its projection has timed a commit.
    assert_eq!(server.get("/api/queries/orders/o-metrics?minVersion=1").await.status, 200);
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, 200);
    let text = reply.body.as_str().expect("Prometheus text, not JSON");
    assert!(text.contains("nexus_command_duration_seconds"), "{text}");
    assert!(text.contains("nexus_projection_commit_seconds_count{projection=\"orders\"}"), "{text}");
}

/// §1: a clean stop, then a restart on the same data directory that lost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_its_events_documents_and_command_ids() {
    let server = TestServer::start().await;
    let id = "o-persist";
    let mut body = place_body(id, "c-persist", 12.0);
    body["commandId"] = json!("cmd-persist-1");
    let placed = server.accepted("PlaceOrder", body.clone()).await;
    server.document_at("orders", id, 1).await;
    // An open subscription must not hold the shutdown up.
    let mut ws = server.websocket().await;
    ws.request("subscribe", &[id]).await;

    let dir = server.stop().await;
    assert!(ws.closes_within(Duration::from_secs(5)).await, "the subscription outlived the server");

    let server = TestServer::start_in(dir).await;
    let events = server.events_of(id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["eventId"], placed["eventIds"][0]);
    let reply = server.get(&format!("/api/queries/orders/{id}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "PLACED");
    assert_eq!(reply.body["version"], 1);

    assert_eq!(server.accepted("PlaceOrder", body).await, placed, "the commandId survived the restart");
    assert_eq!(server.accepted("ConfirmOrder", json!({"aggregateId": id})).await["version"], 2);
    assert_eq!(server.document_at("orders", id, 2).await["status"], "CONFIRMED");
    let events = server.events_of(id).await;
    assert!(events[1]["position"].as_u64() > events[0]["position"].as_u64());
    server.stop().await;
}
