//! The schema registry over HTTP (Confluent's API and error codes), the shipped schemas
//! registered at start, validation of imported events, and upcasting of v1 fixtures stored on
//! disk through the events API and a projection.

use crate::support::TestServer;
use serde_json::{Value, json};

async fn registry_get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.http.get(server.url(&format!("/api/schema-registry{path}"))).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn registry_send(server: &TestServer, method: &str, path: &str, body: Value) -> (u16, Value) {
    let url = server.url(&format!("/api/schema-registry{path}"));
    let request = if method == "PUT" { server.http.put(url) } else { server.http.post(url) };
    let response = request
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_schemas_are_registered_at_start() {
    let server = TestServer::start().await;
    let (status, subjects) = registry_get(&server, "/subjects").await;
    assert_eq!(status, 200);
    for subject in ["OrderPlaced", "UserRegistered", "StockReserved", "commands.PlaceOrder"] {
        assert!(subjects.as_array().unwrap().contains(&json!(subject)), "{subject} in {subjects}");
    }
    assert_eq!(registry_get(&server, "/subjects/UserRegistered/versions").await.1, json!([1, 2]));
    let (_, level) = registry_get(&server, "/config/UserRegistered").await;
    assert_eq!(level["compatibilityLevel"], "NONE", "the v1→v2 break is bridged by an upcaster");
    let (_, v2) = registry_get(&server, "/subjects/UserRegistered/versions/latest").await;
    assert_eq!(v2["version"], 2);
    let schema: Value = serde_json::from_str(v2["schema"].as_str().unwrap()).unwrap();
    assert!(schema["properties"]["firstName"].is_object());

    // A restart registers nothing new: the same schemas are found, not added.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir).await;
    assert_eq!(registry_get(&server, "/subjects/UserRegistered/versions").await.1, json!([1, 2]));
    assert_eq!(registry_get(&server, "/subjects/OrderPlaced/versions").await.1, json!([1]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confluent_api_registers_checks_and_answers_with_its_error_codes() {
    let server = TestServer::start().await;
    let v1 = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]});
    let (status, registered) = registry_send(
        &server,
        "POST",
        "/subjects/Custom/versions",
        json!({"schema": v1.to_string(), "schemaType": "JSON"}),
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    let id = registered["id"].as_u64().unwrap();
    let (_, by_id) = registry_get(&server, &format!("/schemas/ids/{id}")).await;
    assert_eq!(serde_json::from_str::<Value>(by_id["schema"].as_str().unwrap()).unwrap(), v1);
    let (_, found) =
        registry_send(&server, "POST", "/subjects/Custom", json!({"schema": v1.to_string()})).await;
    assert_eq!((found["version"].as_u64(), found["id"].as_u64()), (Some(1), Some(id)));

    let breaking = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    let (status, check) = registry_send(
        &server,
        "POST",
        "/compatibility/subjects/Custom/versions/latest?verbose=true",
        json!({"schema": breaking.to_string()}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(check["is_compatible"], false);
    assert!(check["messages"].as_array().unwrap().len() >= 2, "type change and removed field: {check}");
    let (status, refused) =
        registry_send(&server, "POST", "/subjects/Custom/versions", json!({"schema": breaking.to_string()}))
            .await;
    assert_eq!(status, 409);
    assert_eq!(refused["error_code"], 409);
    assert!(refused["message"].as_str().unwrap().contains("$.b"), "{refused}");

    assert_eq!(registry_get(&server, "/subjects/Nope/versions").await.1["error_code"], 40401);
    assert_eq!(registry_get(&server, "/subjects/Custom/versions/7").await.1["error_code"], 40402);
    assert_eq!(registry_get(&server, "/schemas/ids/999999").await.1["error_code"], 40403);
    assert_eq!(registry_get(&server, "/subjects/Custom/versions/abc").await.1["error_code"], 42202);
    let (status, bad) = registry_send(&server, "PUT", "/config", json!({"compatibility": "SIDEWAYS"})).await;
    assert_eq!((status, bad["error_code"].as_u64()), (422, Some(42203)));
    let (status, invalid) =
        registry_send(&server, "POST", "/subjects/Custom/versions", json!({"schema": "{not json"})).await;
    assert_eq!((status, invalid["error_code"].as_u64()), (422, Some(42201)));

    // NONE lets the breaking version in; the global level is untouched.
    let (status, set) =
        registry_send(&server, "PUT", "/config/Custom", json!({"compatibility": "NONE"})).await;
    assert_eq!((status, set["compatibility"].as_str()), (200, Some("NONE")));
    assert_eq!(
        registry_send(&server, "POST", "/subjects/Custom/versions", json!({"schema": breaking.to_string()}))
            .await
            .0,
        200
    );
    assert_eq!(registry_get(&server, "/config").await.1["compatibilityLevel"], "BACKWARD");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_fixtures_are_upcast_through_the_events_api_and_the_projection() {
    let server = TestServer::start().await;
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/user_registered_v1.json")).expect("fixture is JSON");
    let response = server.http.post(server.url("/api/events/user-ada")).json(&fixture).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["version"], 1);

    let events = server.events_of("user-ada").await;
    assert_eq!(
        events[0]["payload"],
        json!({"firstName": "Ada", "lastName": "King Lovelace", "email": "ada@example.com"})
    );
    assert_eq!(events[0]["metadata"]["schemaVersion"], "2", "read at the current version");
    assert_eq!(events[0]["timestamp"], "2025-06-01T10:00:00.000Z");

    let user = server.document_at("users", "user-ada", 1).await;
    assert_eq!((user["firstName"].as_str(), user["lastName"].as_str()), (Some("Ada"), Some("King Lovelace")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_validated_against_their_registered_schema() {
    let server = TestServer::start().await;
    let post = |body: Value| {
        let request = server.http.post(server.url("/api/events/imp-1")).json(&body);
        async move { crate::support::Reply::read(request.send().await.unwrap()).await }
    };
    let invalid = post(json!({"events": [
        {"eventType": "UserRegistered", "payload": {"fullName": 7}, "metadata": {"schemaVersion": "1"}}
    ]}))
    .await;
    invalid.assert_error(400, "VALIDATION_ERROR");
    let fields = invalid.error_fields();
    assert!(fields.iter().any(|f| f.starts_with("events[0].payload")), "{fields:?}");

    let unregistered = post(json!({"events": [
        {"eventType": "Mystery", "payload": {}, "metadata": {"schemaVersion": "1"}}
    ]}))
    .await;
    unregistered.assert_error(400, "VALIDATION_ERROR");
    assert_eq!(unregistered.error_fields(), ["events[0].eventType"]);

    let wrong_version = post(json!({"events": [
        {"eventType": "OrderShipped", "payload": {}, "metadata": {"schemaVersion": "9"}}
    ]}))
    .await;
    wrong_version.assert_error(400, "VALIDATION_ERROR");
    assert!(server.get("/api/events/imp-1").await.status == 404, "nothing was appended");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_when_a_shipped_schema_contradicts_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A registry that already holds a different OrderPlaced v1: the shipped one requires
        // fields (`customerId`, ...) that its events lack, which BACKWARD refuses.
        let store = nexus_sqlite::SqliteSchemaStore::open(dir.path()).unwrap();
        let legacy = r#"{"type":"object","properties":{"legacy":{"type":"string"}},"required":["legacy"]}"#;
        nexus_core::SchemaStore::register(&store, "OrderPlaced", legacy, "JSON").await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = nexus_server::Config::embedded(dir.path());
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        nexus_server::run(config, nexus_domain::domain(), listener, std::future::pending()),
    )
    .await
    .expect("start-up must fail, not serve");
    let error = outcome.expect_err("an incompatible shipped schema stops start-up").to_string();
    assert!(error.contains("OrderPlaced") && error.contains("customerId"), "{error}");
}
