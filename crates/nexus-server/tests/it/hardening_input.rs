//! Hostile input, checked over real HTTP: numbers the stores cannot hold, bytes that do not
//! decode, field names the read stores refuse, bodies over the limit. Each is refused up front, in
//! the contract's error shape (Confluent's under `/api/schema-registry`), naming what is wrong.

use crate::support::{DEADLINE, Reply, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 2^64 - 1 and 2^63: both parse as u64, neither fits the stores' signed 64-bit integers.
const HUGE: [&str; 2] = ["18446744073709551615", "9223372036854775808"];

async fn place(server: &TestServer, id: &str) {
    let items = json!([{"productId": "p-1", "quantity": 1, "unitPrice": 5.0}]);
    server.accepted("PlaceOrder", json!({"aggregateId": id, "customerId": "c-1", "items": items})).await;
    server.document_at("orders", id, 1).await;
}

/// The one field a `VALIDATION_ERROR` names, and its error text.
fn one_field(reply: &Reply) -> (String, String) {
    let fields = reply.error_fields();
    assert_eq!(fields.len(), 1, "{}", reply.body);
    (fields[0].clone(), reply.body["fields"][0]["error"].as_str().unwrap().to_owned())
}

fn assert_names(reply: &Reply, field: &str, context: &str) {
    assert_eq!(reply.error_fields(), [field], "{context}: {}", reply.body);
    assert!(reply.header("retry-after").is_none(), "{context}: bad input is not worth retrying");
}

/// Finding 1: `?fromVersion=18446744073709551615` was `503 UNAVAILABLE` (the store could not
/// convert it); every numeric query parameter beyond 2^63 - 1 is now a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_the_stores_cannot_hold_are_validation_errors_naming_the_parameter() {
    let server = TestServer::start().await;
    place(&server, "o-num").await;
    for huge in HUGE {
        for (path, parameter) in [
            (format!("/api/events/o-num?fromVersion={huge}"), "fromVersion"),
            (format!("/api/events/o-num?toVersion={huge}"), "toVersion"),
            (format!("/api/events?eventType=OrderPlaced&limit={huge}"), "limit"),
            (format!("/api/queries/orders/o-num?minVersion={huge}"), "minVersion"),
            (format!("/api/queries/orders/o-num?minPosition={huge}"), "minPosition"),
            (format!("/api/queries/orders/o-num?timeoutMs={huge}"), "timeoutMs"),
            (format!("/api/queries/orders?minPosition={huge}"), "minPosition"),
            (format!("/api/queries/orders?minPosition=1&timeoutMs={huge}"), "timeoutMs"),
            (format!("/api/queries/orders/search?minPosition={huge}"), "minPosition"),
            (format!("/api/queries/orders?limit={huge}"), "limit"),
            (
                format!("/api/queries/temporal/o-num?asOf=2030-01-01T00:00:00Z&minPosition={huge}"),
                "minPosition",
            ),
            (format!("/api/admin/sagas?limit={huge}"), "limit"),
        ] {
            let reply = server.get(&path).await;
            assert_names(&reply, parameter, &path);
        }
    }
    for (path, parameter) in [
        ("/api/events/o-num?fromVersion=-1", "fromVersion"),
        ("/api/events/o-num?toVersion=1.5", "toVersion"),
        ("/api/events/o-num?fromVersion=", "fromVersion"),
        ("/api/queries/orders/o-num?minVersion=two", "minVersion"),
        ("/api/queries/orders?minPosition=x", "minPosition"),
    ] {
        let reply = server.get(path).await;
        assert_names(&reply, parameter, path);
        let (_, error) = one_field(&reply);
        assert!(error.starts_with("must be an integer from 0 to 9223372036854775807"), "{path}: {error}");
    }

    // The largest value the stores hold is still a question they answer.
    let top = server.get("/api/events/o-num?fromVersion=9223372036854775807").await;
    assert_eq!((top.status, &top.body["events"]), (200, &json!([])), "{}", top.body);
    let top = server.get("/api/events/o-num?toVersion=9223372036854775807").await;
    assert_eq!(top.status, 200, "{}", top.body);
    assert_eq!(top.body["events"].as_array().map(Vec::len), Some(1), "{}", top.body);

    // A page token carrying an offset the stores cannot take is no token of this query.
    use base64::Engine;
    let first = server.get("/api/queries/orders?limit=1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let forged = json!({"o": u64::MAX, "q": "anything"}).to_string();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let reply = server.get(&format!("/api/queries/orders?limit=1&nextToken={forged}")).await;
    assert_names(&reply, "nextToken", "a forged token");
}

/// Finding 2: failures of axum's extractors (and of anything else that answered in text) were
/// `text/plain`; now each is JSON in the contract's shape, and in Confluent's under the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_outside_the_handlers_use_the_contract_shape() {
    let server = TestServer::start_with(|config| config.limits.max_body_bytes = 4096).await;

    // Percent-encoded bytes that are not UTF-8, where a handler names the parameter itself ...
    let reply = server.get("/api/events/%ff%fe").await;
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_names(&reply, "aggregateId", "/api/events/%ff%fe");
    let import = server
        .http
        .post(server.url("/api/events/%ff"))
        .json(&json!({"events": []}))
        .send()
        .await
        .expect("POST");
    let reply = Reply::read(import).await;
    assert!(reply.error_fields().contains(&"aggregateId".to_owned()), "{}", reply.body);
    // ... and everywhere else, in the contract's shape all the same.
    for path in ["/api/sagas/%ff/status", "/api/queries/orders/%ff", "/api/queries/temporal/%ff?asOf=x"] {
        let reply = server.get(path).await;
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
        reply.assert_error(400, "VALIDATION_ERROR");
    }
    // A WebSocket upgrade without its headers.
    let reply = server.get("/api/subscriptions").await;
    reply.assert_error(400, "VALIDATION_ERROR");

    // Query strings: an unknown parameter is named, in plain words.
    let reply = server.get("/api/events/o-1?bogus=1").await;
    let (field, error) = one_field(&reply);
    assert_eq!(field, "bogus");
    assert!(!error.contains("unknown field") && !error.contains("deserialize"), "{error}");

    // Bodies: not declared JSON, not JSON, over the limit.
    let post = |path: &str, content_type: Option<&str>, body: String| {
        let mut request = server.http.post(server.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        async move { Reply::read(request.send().await.expect("POST")).await }
    };
    post("/api/sagas", None, "{}".into()).await.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    let reply = post("/api/sagas", Some("application/json"), "{\"sagaType\": ".into()).await;
    assert_eq!(reply.error_fields(), ["body"]);
    let big = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(8192));
    post("/api/events/o-1", Some("application/json"), big.clone())
        .await
        .assert_error(413, "PAYLOAD_TOO_LARGE");

    // The schema registry answers in Confluent's shape: a body over the limit, a subject that
    // does not decode, a path it does not serve, a method it does not take.
    let confluent = |reply: &Reply, status: u16| {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.body["error_code"], status, "{}", reply.body);
        assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", reply.body);
        assert!(reply.body.get("code").is_none(), "{}", reply.body);
    };
    let schema_request = json!({"schema": big}).to_string();
    confluent(&post("/api/schema-registry/subjects/Big/versions", None, schema_request).await, 413);
    confluent(&server.get("/api/schema-registry/subjects/%ff/versions").await, 400);
    confluent(&server.get("/api/schema-registry/no-such-thing").await, 404);
    let delete = server.http.delete(server.url("/api/schema-registry/config")).send().await.expect("DELETE");
    confluent(&Reply::read(delete).await, 405);
    // Outside the registry, the same are in the contract's shape.
    server.get("/api/no-such-thing").await.assert_error(404, "NOT_FOUND");
    let delete = server.http.delete(server.url("/api/sagas")).send().await.expect("DELETE");
    Reply::read(delete).await.assert_error(405, "METHOD_NOT_ALLOWED");
}

/// Sends `request` over a fresh connection and reads what comes back until the server closes it.
async fn raw_exchange(server: &TestServer, request: &[u8]) -> String {
    let address = server.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(address).await.expect("connect");
    // hyper may answer and close before reading all of an oversized request.
    let _ = tcp.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, tcp.read(&mut chunk)).await.expect("no answer") {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Finding 2, below axum: hyper refuses what it cannot parse (a URI over 64 KiB, 500 headers,
/// two different `Content-Length`s) with a bare status line before any service runs, so no layer
/// can shape it (see `routes::errors_as_json`). This pins down what it answers, and that the
/// server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_cannot_parse_get_a_bare_status_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let long = format!("GET /api/events/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100 * 1024));
    let headers: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /health/live HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
    let twice = "POST /api/commands/PlaceOrder HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: 2\r\ncontent-length: 3\r\n\r\n{}"
        .to_owned();
    for (request, status) in [(long, "414"), (many, "431"), (twice, "400")] {
        let answer = raw_exchange(&server, request.as_bytes()).await;
        let status_line = answer.lines().next().unwrap_or_default();
        assert!(status_line.starts_with(&format!("HTTP/1.1 {status}")), "{status}: {answer:?}");
    }
    let live = server.get("/health/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
}

/// Finding 3: a bad `sort`, filter or facet field was a `VALIDATION_ERROR` with `"fields": []`
/// (the read store's refusal); the route now checks field names first, by the store's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sort_filter_and_facet_fields_are_named() {
    let server = TestServer::start().await;
    place(&server, "o-fields").await;
    for (path, field) in [
        ("/api/queries/orders?sort=a-b:desc", "sort"),
        ("/api/queries/orders?sort=:asc", "sort"),
        ("/api/queries/orders?sort=total..x", "sort"),
        ("/api/queries/orders?a-b=1", "a-b"),
        ("/api/queries/orders?items%5B0%5D=1", "items[0]"),
        ("/api/queries/orders/search?facets=status,a%20b", "facets"),
        ("/api/queries/orders/search?q=x&drop%3Btable=1", "drop;table"),
    ] {
        let reply = server.get(path).await;
        assert_names(&reply, field, path);
    }
    // Every bad one at once.
    let reply = server.get("/api/queries/orders?sort=$x&a-b=1&limit=0").await;
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(fields, ["a-b", "limit", "sort"], "{}", reply.body);
    // Good names still work, nested ones included.
    for path in [
        "/api/queries/orders?sort=total:desc&customerId=c-1",
        "/api/queries/orders?metadata.source=x",
        "/api/queries/orders/search?facets=status,tags&status=PLACED",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
}

/// Finding 4: `"quantity": 1.0` and `"expectedVersion": 2.0` were refused (`field: "payload"`,
/// "expected u64") though JSON Schema counts 1.0 as an integer. A JSON body's integral numbers
/// are now integers, and an import's fields are named by their paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integral_floats_are_integers_and_fields_are_named_by_path() {
    let server = TestServer::start().await;
    let stocked = server.command("AddStock", json!({"aggregateId": "p-float", "quantity": 3.0})).await;
    assert_eq!(stocked.status, 202, "{}", stocked.body);
    let reserved = server
        .command(
            "ReserveStock",
            json!({"aggregateId": "p-float", "orderId": "o-9", "quantity": 2.0, "expectedVersion": 1.0}),
        )
        .await;
    assert_eq!((reserved.status, &reserved.body["version"]), (202, &json!(2)), "{}", reserved.body);
    // The full envelope too; a stale integral float is a conflict like any stale version.
    let stale = server
        .command(
            "ReserveStock",
            json!({"aggregateId": "p-float", "expectedVersion": 1.0, "payload": {"orderId": "o-10", "quantity": 1}}),
        )
        .await;
    stale.assert_error(409, "CONCURRENCY_CONFLICT");
    assert_eq!((&stale.body["expectedVersion"], &stale.body["actualVersion"]), (&json!(1), &json!(2)));
    // A fractional one is still refused, and named.
    let reply = server.command("ConfirmOrder", json!({"aggregateId": "o-x", "expectedVersion": 1.5})).await;
    assert_eq!(reply.error_fields(), ["expectedVersion"]);
    let reply = server.command("AddStock", json!({"aggregateId": "p-frac", "quantity": 1.5})).await;
    assert_eq!(reply.error_fields(), ["quantity"], "the schema names it");

    // Imports: `expectedVersion: 0.0` is 0; every bad field is named by its path.
    let import = |id: &str, body: Value| {
        let request = server.http.post(server.url(&format!("/api/events/{id}"))).json(&body);
        async move { Reply::read(request.send().await.expect("POST")).await }
    };
    let event = json!({"eventType": "UserRegistered", "payload": {"fullName": "Ada Lovelace", "email": "ada@example.com"},
                       "metadata": {"schemaVersion": "1"}});
    let reply = import("u-float", json!({"expectedVersion": 0.0, "events": [event]})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = import(
        "u-bad",
        json!({"expectedVersion": 9223372036854775808u64, "extra": 1,
               "events": [{"eventType": 7, "payload": {}, "metadata": {"userId": "x", "schemaversion": "1"}}, 3]}),
    )
    .await;
    let mut fields = reply.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "events[0].eventType",
            "events[0].metadata.schemaVersion",
            "events[0].metadata.schemaversion",
            "events[1]",
            "expectedVersion",
            "extra"
        ],
        "{}",
        reply.body
    );
}

/// Finding 5: messages said what the server's libraries think (`unknown variant …, expected one
/// of …`). An import can no longer put an event of one aggregate kind into another's stream (what
/// made every later command on it fail with that text), and the refusal says so plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_another_aggregate_kind_is_refused_in_plain_words() {
    let server = TestServer::start().await;
    place(&server, "o-kind").await;
    let user_event = json!({"eventType": "UserRegistered",
                            "payload": {"fullName": "Ada Lovelace", "email": "ada@example.com"},
                            "metadata": {"schemaVersion": "1"}});
    let reply = Reply::read(
        server
            .http
            .post(server.url("/api/events/o-kind"))
            .json(&json!({"events": [user_event]}))
            .send()
            .await
            .expect("POST"),
    )
    .await;
    let (field, error) = one_field(&reply);
    assert_eq!(field, "events[0].eventType");
    assert!(error.contains("User") && error.contains("Order") && !error.contains("variant"), "{error}");
    // The order still takes commands.
    let confirmed = server.command("ConfirmOrder", json!({"aggregateId": "o-kind"})).await;
    assert_eq!(confirmed.status, 202, "{}", confirmed.body);
}

/// A command sent to an aggregate of another kind (`ConfirmOrder` to a user) says which kind the
/// aggregate is, not what the deserializer thought of its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_an_aggregate_of_another_kind_says_so_plainly() {
    let server = TestServer::start().await;
    let user = json!({"aggregateId": "u-kind", "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"});
    assert_eq!(server.command("RegisterUser", user).await.status, 202);
    let reply = server.command("ConfirmOrder", json!({"aggregateId": "u-kind"})).await;
    reply.assert_error(400, "BUSINESS_RULE_VIOLATION");
    let message = reply.body["message"].as_str().unwrap();
    assert!(message.contains("is not of kind Order") && message.contains("UserRegistered"), "{message}");
    assert!(!message.contains("variant"), "{message}");
}

/// Found by the API fuzzer: `minVersion=0` on a document that does not exist took the server's
/// "the document exists" for granted and dropped the connection. It is a plain 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_zero_on_a_missing_document_is_not_found() {
    let server = TestServer::start().await;
    for path in
        ["/api/queries/orders/nope?minVersion=0", "/api/queries/customers/0?minVersion=0&timeoutMs=200"]
    {
        server.get(path).await.assert_error(404, "NOT_FOUND");
    }
    assert_eq!(server.get("/health/live").await.status, 200);
}
