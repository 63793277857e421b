//! Limits on what a client may store: schema-registry subject names (and what a failure they
//! used to cause did to the dead-letter queue), duplicate JSON keys, metadata lengths, and how
//! far back an event time-range query reaches.

use crate::support::{Reply, TestServer};
use chrono::{SecondsFormat, Utc};
use nexus_server::testing::TestServer as Server;
use serde_json::{Value, json};

async fn send(server: &Server, method: reqwest::Method, path: &str, body: String) -> Reply {
    let request = server.http.request(method, server.url(path)).header("content-type", "application/json");
    Reply::read(request.body(body).send().await.unwrap()).await
}

fn assert_confluent(reply: &Reply, status: u16, error_code: u64) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error_code"], error_code, "{}", reply.body);
    assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", reply.body);
    assert!(reply.body.get("code").is_none(), "Confluent's shape only: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_subjects_are_names_not_arbitrary_text() {
    let server = TestServer::start().await;
    let schema = json!({"schema": r#"{"type":"object"}"#}).to_string();
    let long = "x".repeat(10 * 1024);
    // Percent-encoded as a client sends them: CR LF, NUL, a slash, a space, 10 KB, 256 bytes.
    let too_long = "x".repeat(256);
    for subject in ["%0D%0AInjected", "a%00b", "a%2Fb", "a%20b", long.as_str(), too_long.as_str()] {
        let path = format!("/api/schema-registry/subjects/{subject}/versions");
        let reply = send(&server, reqwest::Method::POST, &path, schema.clone()).await;
        assert_confluent(&reply, 422, 42208);
        let path = format!("/api/schema-registry/config/{subject}");
        let reply =
            send(&server, reqwest::Method::PUT, &path, json!({"compatibility": "NONE"}).to_string()).await;
        assert_confluent(&reply, 422, 42208);
    }
    // The names the server ships, and any of `[A-Za-z0-9._-]{1,255}`, still register.
    for subject in ["Custom.Event-v_1".to_owned(), "y".repeat(255)] {
        let path = format!("/api/schema-registry/subjects/{subject}/versions");
        let reply = send(&server, reqwest::Method::POST, &path, schema.clone()).await;
        assert_eq!(reply.status, 200, "{subject}: {}", reply.body);
    }
    let subjects = server.get("/api/schema-registry/subjects").await.body;
    let subjects: Vec<&str> = subjects.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(
        subjects.contains(&"Custom.Event-v_1") && subjects.contains(&"commands.PlaceOrder"),
        "{subjects:?}"
    );
    assert!(
        subjects
            .iter()
            .all(|s| s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))),
        "{subjects:?}"
    );
    server.stop().await;
}

async fn register_user(server: &Server, email: &str) -> String {
    let body = json!({"firstName": "Ada", "lastName": "Lovelace", "email": email});
    server.accepted("RegisterUser", body).await["aggregateId"].as_str().unwrap().to_owned()
}

/// A target no request can ever be built for (a space in its host) is refused when the webhook is
/// registered, naming the field, rather than failing every delivery. (What the dead-letter
/// processor does with a failure of each kind is tested with the runtime's router.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_can_never_be_delivered_is_refused_at_registration() {
    let server = TestServer::start().await;
    let created = send(
        &server,
        reqwest::Method::POST,
        "/api/admin/webhooks",
        json!({"url": "http://exa mple.invalid/hook", "eventTypes": ["UserRegistered"]}).to_string(),
    )
    .await;
    created.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(created.error_fields(), ["url"], "{}", created.body);
    assert_eq!(server.get("/api/admin/webhooks").await.body["items"], json!([]));
    server.stop().await;
}

async fn raw_command(server: &TestServer, command_type: &str, body: &str) -> Reply {
    send(server, reqwest::Method::POST, &format!("/api/commands/{command_type}"), body.to_owned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_twice_is_refused_naming_its_path() {
    let server = TestServer::start().await;
    let cases = [
        (
            r#"{"firstName":"Ada","lastName":"Lovelace","email":"a@example.com","email":"b@example.com"}"#,
            "email",
        ),
        (
            r#"{"firstName":"Ada","lastName":"Lovelace","email":"a@example.com",
                "metadata":{"correlationId":"c-1","correlationId":"c-2"}}"#,
            "metadata.correlationId",
        ),
        (
            r#"{"payload":{"firstName":"Ada","lastName":"Lovelace","email":"a@example.com",
                "extra":[{"k":1},{"k":1,"k":2}]}}"#,
            "payload.extra[1].k",
        ),
    ];
    for (body, path) in cases {
        let reply = raw_command(&server, "RegisterUser", body).await;
        assert_eq!(reply.error_fields(), [path], "{body}: {}", reply.body);
    }
    // The same keys once each are fine.
    let reply = raw_command(
        &server,
        "RegisterUser",
        r#"{"firstName":"Ada","lastName":"Lovelace","email":"a@example.com","metadata":{"correlationId":"c-1"}}"#,
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_values_are_bounded() {
    let server = TestServer::start().await;
    let user = |metadata: Value| json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "metadata": metadata});
    let huge = "c".repeat(900 * 1024);
    let reply = server.command("RegisterUser", user(json!({"correlationId": huge}))).await;
    assert_eq!(reply.error_fields(), ["metadata.correlationId"], "{}", reply.body);
    let over = "u".repeat(257);
    let reply = server.command("RegisterUser", user(json!({"userId": over, "causationId": over}))).await;
    assert_eq!(reply.error_fields(), ["metadata.userId", "metadata.causationId"]);
    let body = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"});
    let reply = server.command_with("RegisterUser", body, &[("x-correlation-id", &"h".repeat(300))]).await;
    assert_eq!(reply.error_fields(), ["X-Correlation-Id"]);

    // 256 bytes, the default bound, are stored as given.
    let at_bound = "k".repeat(256);
    let accepted = server.accepted("RegisterUser", user(json!({"correlationId": at_bound}))).await;
    let events = server.events_of(accepted["aggregateId"].as_str().unwrap()).await;
    assert_eq!(events[0]["metadata"]["correlationId"], at_bound.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_ranges_reach_back_at_most_temporal_max_days() {
    let server = TestServer::start().await;
    let days_ago =
        |days: i64| (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let recent = register_user(&server, "ada@example.com").await;
    let imported = send(
        &server,
        reqwest::Method::POST,
        "/api/events/user-imported-2021",
        json!({"expectedVersion": 0, "events": [{
            "eventType": "UserRegistered",
            "payload": {"fullName": "Grace Hopper", "email": "grace@example.com"},
            "metadata": {"schemaVersion": "1"},
            "timestamp": "2021-03-01T10:00:00Z"}]})
        .to_string(),
    )
    .await;
    assert_eq!(imported.status, 201, "{}", imported.body);

    let path = format!("/api/events?eventType=UserRegistered&startTime={}", days_ago(91));
    server.get(&path).await.assert_error(400, "TIME_RANGE_EXCEEDED");
    server
        .get("/api/events?eventType=UserRegistered&startTime=2021-01-01T00:00:00Z&endTime=2021-12-31T00:00:00Z")
        .await
        .assert_error(400, "TIME_RANGE_EXCEEDED");

    let ids = |reply: &Reply| -> Vec<String> {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let events = reply.body["events"].as_array().unwrap();
        events.iter().map(|e| e["aggregateId"].as_str().unwrap().to_owned()).collect()
    };
    let within =
        server.get(&format!("/api/events?eventType=UserRegistered&startTime={}", days_ago(89))).await;
    assert_eq!(ids(&within), std::slice::from_ref(&recent));
    // Left out, the range starts `temporal-max-days` back: the 2021 import is not in it.
    let open = server.get("/api/events?eventType=UserRegistered").await;
    assert_eq!(ids(&open), [recent]);
    server.stop().await;
}

/// The metadata bound holds on every way in: a saga's metadata and an import's events too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_and_import_metadata_are_bounded_like_a_commands() {
    let server = TestServer::start().await;
    let long = "c".repeat(300);
    let saga = serde_json::json!({
        "sagaType": "Bounded",
        "steps": [{"stepId": "a", "command": {"commandType": "AddStock", "aggregateId": "p-1", "payload": {"quantity": 1}}}],
        "metadata": {"correlationId": long}
    });
    let reply = crate::support::Reply::read(
        server.http.post(server.url("/api/sagas")).json(&saga).send().await.unwrap(),
    )
    .await;
    reply.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(reply.body["fields"][0]["field"], "metadata.correlationId", "{}", reply.body);
    let import = serde_json::json!({"events": [{
        "eventType": "StockAdded", "payload": {"quantity": 1},
        "metadata": {"schemaVersion": "1", "userId": long}
    }]});
    let reply = crate::support::Reply::read(
        server.http.post(server.url("/api/events/p-9")).json(&import).send().await.unwrap(),
    )
    .await;
    reply.assert_error(400, "VALIDATION_ERROR");
    let fields: Vec<&str> =
        reply.body["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"events[0].metadata.userId"), "{}", reply.body);
}
