//! Two services on one set of engines, every setting but the PostgreSQL schema at its default:
//! this service and the reference domain, each with its own store (a fresh schema each on one
//! PostgreSQL server), on one NATS server and one RabbitMQ broker. Each names its stream,
//! consumers, exchanges and queues by its identity (its name and its store's id), so under load
//! each read model holds exactly its own events and each webhook receives only its own service's
//! events. (The framework's isolation test; it lives here because it needs a second service.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use nexus_server::config::StoreBackend;
use nexus_server::testing::TestServer;
use serde_json::{Value, json};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn postgres_url() -> String {
    env_or("NEXUS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

fn nats_url() -> String {
    env_or("NEXUS_TEST_NATS_URL", "nats://127.0.0.1:4222")
}

fn amqp_url() -> String {
    env_or("NEXUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// What a webhook endpoint received: each delivery's CloudEvents type and body.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook endpoint on 127.0.0.1:0 that records the event types it receives.
async fn endpoint() -> (Received, String) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(received): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let kind = headers.get("ce-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    received
                        .lock()
                        .unwrap()
                        .push((kind, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (received, url)
}

async fn start(domain: nexus_core::Domain, schema: &str) -> TestServer {
    let (url, stream, queue, schema) = (postgres_url(), nats_url(), amqp_url(), schema.to_owned());
    TestServer::start_with(domain, move |config| {
        config.store = StoreBackend::Postgres { url, schema: Some(schema) };
        config.stream.url = Some(stream);
        config.queue.url = Some(queue);
        config.queue.retry_base_ms = 50;
    })
    .await
}

async fn webhook(server: &TestServer, url: &str, event_type: &str) -> String {
    let reply = server
        .http
        .post(server.url("/api/admin/webhooks"))
        .json(&json!({"url": url, "eventTypes": [event_type]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201, "webhook for {event_type}");
    reply.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// Waits until `count` documents of `resource` are listed (`status` filter when given).
async fn listed(server: &TestServer, resource: &str, filter: &str, count: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = server.get(&format!("/api/queries/{resource}?limit=1000{filter}")).await;
        assert_eq!(page.status, 200, "{resource}: {}", page.body);
        if page.body["total"] == count {
            return page.body;
        }
        assert!(
            Instant::now() < deadline,
            "{resource}{filter}: {} documents, expected {count}",
            page.body["total"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store id of the store in `schema`.
async fn store_id(pg: &tokio_postgres::Client, schema: &str) -> String {
    let row = pg
        .query_one(&format!("SELECT value FROM {schema}.store_meta WHERE key = 'store_id'"), &[])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_shared_engines_see_only_their_own_events() {
    let run = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    );
    let (shop_schema, desk_schema) = (format!("shop_{run}"), format!("desk_{run}"));
    let shop = start(nexus_domain::domain(), &shop_schema).await;
    let desk = start(ticketing::domain(), &desk_schema).await;
    let (shop_hooks, shop_url) = endpoint().await;
    let (desk_hooks, desk_url) = endpoint().await;
    let shop_hook = webhook(&shop, &shop_url, "UserRegistered").await;
    let desk_hook = webhook(&desk, &desk_url, "SurveyRequested").await;

    // Both under load at once.
    const ORDERS: usize = 40;
    const USERS: usize = 8;
    const TICKETS: usize = 12;
    let shop_load = {
        let (http, base) = (shop.http.clone(), shop.base.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..ORDERS {
                let body = json!({"aggregateId": format!("o-{i}"), "customerId": format!("c-{}", i % 4), "items": [{"productId": "p", "quantity": 1, "unitPrice": 2.5}]});
                sent.push(http.post(format!("{base}/api/commands/PlaceOrder")).json(&body).send());
            }
            for i in 0..USERS {
                let body = json!({"aggregateId": format!("u-{i}"), "firstName": "Ada", "lastName": "L", "email": format!("u{i}@example.com")});
                sent.push(http.post(format!("{base}/api/commands/RegisterUser")).json(&body).send());
            }
            for reply in futures_util::future::join_all(sent).await {
                assert_eq!(reply.unwrap().status().as_u16(), 202);
            }
        })
    };
    for i in 0..TICKETS {
        let id = format!("t-{i}");
        let open = json!({"aggregateId": id, "title": "Printer", "customerId": format!("k-{i}"), "priority": "high"});
        desk.accepted("OpenTicket", open).await;
        desk.accepted("AssignTicket", json!({"aggregateId": id, "agentId": format!("agent-{}", i % 3)}))
            .await;
        desk.accepted("ResolveTicket", json!({"aggregateId": id, "resolution": "rebooted"})).await;
    }
    shop_load.await.unwrap();

    // Each read model holds exactly its own store's events.
    let orders = listed(&shop, "orders", "", ORDERS as u64).await;
    assert!(orders["items"].as_array().unwrap().iter().all(|o| o["id"].as_str().unwrap().starts_with("o-")));
    listed(&shop, "users", "", USERS as u64).await;
    let tickets = listed(&desk, "tickets", "&status=RESOLVED", TICKETS as u64).await;
    assert!(tickets["items"].as_array().unwrap().iter().all(|t| t["id"].as_str().unwrap().starts_with("t-")));
    listed(&desk, "surveys", "", TICKETS as u64).await;
    let agents = listed(&desk, "agents", "", 3).await;
    let resolved: u64 =
        agents["items"].as_array().unwrap().iter().map(|a| a["resolvedTickets"].as_u64().unwrap()).sum();
    assert_eq!(resolved, TICKETS as u64);
    for (server, event_type) in [(&shop, "TicketOpened"), (&desk, "OrderPlaced")] {
        let reply = server.get(&format!("/api/events?eventType={event_type}&limit=10")).await;
        let none = reply.body["events"].as_array().is_none_or(|events| events.is_empty());
        assert!(none, "{event_type} in the other service: {}", reply.body);
    }

    // Each webhook receives its own service's events, each once, and nothing else.
    let deadline = Instant::now() + Duration::from_secs(20);
    while shop_hooks.lock().unwrap().len() < USERS || desk_hooks.lock().unwrap().len() < TICKETS {
        assert!(
            Instant::now() < deadline,
            "webhooks: {} and {}",
            shop_hooks.lock().unwrap().len(),
            desk_hooks.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shop_received = shop_hooks.lock().unwrap().clone();
    let desk_received = desk_hooks.lock().unwrap().clone();
    assert_eq!(shop_received.len(), USERS, "{shop_received:?}");
    assert_eq!(desk_received.len(), TICKETS, "{desk_received:?}");
    assert!(shop_received.iter().all(|(kind, _)| kind.ends_with("UserRegistered")), "{shop_received:?}");
    assert!(desk_received.iter().all(|(kind, _)| kind.ends_with("SurveyRequested")), "{desk_received:?}");
    let metrics = shop.get("/metrics").await;
    assert!(
        !metrics.body.as_str().unwrap_or("").contains("nexus_foreign_events_total"),
        "an event was refused"
    );

    // Clean up what the run created on the shared engines.
    for (server, hook) in [(&shop, &shop_hook), (&desk, &desk_hook)] {
        let deleted =
            server.http.delete(server.url(&format!("/api/admin/webhooks/{hook}"))).send().await.unwrap();
        assert_eq!(deleted.status().as_u16(), 204);
    }
    let (pg, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let stores =
        [("nexus", store_id(&pg, &shop_schema).await), ("ticketing", store_id(&pg, &desk_schema).await)];
    assert_ne!(stores[0].1, stores[1].1);
    shop.stop().await;
    desk.stop().await;
    for (service, id) in &stores {
        let identity = format!("{service}-{}", &id[..8]);
        nexus_nats::NatsEventStream::connect(&nats_url(), &identity, 4)
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
        nexus_rabbitmq::RabbitEventQueue::connect_for_store(&amqp_url(), &identity, id)
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
    }
    for schema in [&shop_schema, &desk_schema] {
        pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }
}
