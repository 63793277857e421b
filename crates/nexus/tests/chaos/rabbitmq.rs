//! RabbitMQ cut off for 30 s under load, through a TCP proxy between `nexus serve` and the shared
//! broker (`NEXUS_TEST_AMQP_URL`). The contract: the outage is answered, never crashed through;
//! commands keep being accepted (the event store is not the broker); when the broker is back the
//! router and the webhook consumer resume by themselves, and every event of an accepted command
//! reaches the webhook at least once. The endpoint always answers 200, so nothing may end in the
//! dead-letter queue: a delivery the broker could not make is not a failed webhook attempt.
//!
//! The namespace is fresh per run (a config file); at the end the webhook is deleted, which
//! deletes its queues, and then the namespace's exchanges and dead-letter queues.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::Nexus;
use crate::proxy::Proxy;

/// How long the broker is unreachable.
const CUT: Duration = Duration::from_secs(30);
/// Load before the cut, so the outage meets deliveries in flight.
const BEFORE_CUT: Duration = Duration::from_secs(5);
/// Load after the broker is back, so recovery happens under load too.
const AFTER_RESTORE: Duration = Duration::from_secs(3);
/// Concurrent command senders, each pausing between commands: a bounded load.
const SENDERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(100);
/// The whole test, server start included.
const TEST_BOUND: Duration = Duration::from_secs(90);

fn amqp_url() -> String {
    std::env::var("NEXUS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A webhook endpoint on `127.0.0.1:0`: answers 200 to every POST once it has recorded the
/// request's `ce-id`. Plain HTTP/1.1 with keep-alive, all this test needs.
struct Receiver {
    url: String,
    ids: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let ids = Arc::new(Mutex::new(Vec::new()));
        let recorded = ids.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(Self::serve(connection, recorded.clone()));
            }
        });
        Receiver { url, ids }
    }

    /// Answers requests on `connection` until the client closes it.
    async fn serve(connection: TcpStream, ids: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
        let mut connection = BufReader::new(connection);
        let mut line = String::new();
        loop {
            line.clear();
            if connection.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let (mut length, mut ce_id) = (0, None);
            loop {
                line.clear();
                connection.read_line(&mut line).await?;
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "ce-id" => ce_id = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            connection.read_exact(&mut body).await?;
            ids.lock().unwrap().push(ce_id.unwrap_or_default());
            connection.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
        }
    }

    fn deliveries(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

/// What the command senders saw.
#[derive(Default)]
struct Sent {
    /// Event ids of the commands answered 202.
    accepted: Vec<String>,
    /// Of those, the commands sent while the broker was cut off.
    accepted_during_cut: usize,
    /// Statuses (or transport errors) other than 202.
    refused: Vec<String>,
}

/// Sends `RegisterUser` commands from [`SENDERS`] tasks until `stop`.
async fn send_commands(base: String, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Sent {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let senders = (0..SENDERS).map(|sender| {
        let (client, base, cut, stop) = (client.clone(), base.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Sent::default();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let during_cut = cut.load(Ordering::Acquire);
                let user = json!({"firstName": "Ada", "lastName": "Chaos", "email": format!("ada-{sender}-{n}@example.com")});
                let reply = client.post(format!("{base}/api/commands/RegisterUser")).json(&user).send().await;
                match reply {
                    Ok(reply) if reply.status() == 202 => {
                        let body: Value = reply.json().await.unwrap();
                        let ids = body["eventIds"].as_array().expect("a 202 names its events");
                        sent.accepted.extend(ids.iter().map(|id| id.as_str().unwrap().to_owned()));
                        sent.accepted_during_cut += usize::from(during_cut);
                    }
                    Ok(reply) => sent.refused.push(format!("{}: {}", reply.status(), reply.text().await.unwrap_or_default())),
                    Err(error) => sent.refused.push(error.to_string()),
                }
                tokio::time::sleep(PAUSE).await;
            }
            sent
        })
    });
    let mut all = Sent::default();
    for sender in futures_util::future::join_all(senders).await {
        let sent = sender.unwrap();
        all.accepted.extend(sent.accepted);
        all.accepted_during_cut += sent.accepted_during_cut;
        all.refused.extend(sent.refused);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_outage_under_load_loses_no_accepted_event() {
    let started = Instant::now();
    let (proxy, queue_url) = Proxy::in_front_of(&amqp_url(), 5672).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    let namespace = format!("nexus-test-chaos-{}", uuid::Uuid::new_v4().simple());
    // No automatic DLQ retries: an empty DLQ at the end then means nothing was dead-lettered.
    std::fs::write(&config, format!("[queue]\nnamespace = \"{namespace}\"\ndlq-process-interval-secs = 0\n"))
        .unwrap();
    // The contract's retry base (1 s): the endpoint never refuses, so no webhook retry is due;
    // the broker's outage is retried by the consumers' own backoff, not counted as attempts.
    let server = Nexus::serve(|command| {
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env("NEXUS_QUEUE_URL", &queue_url);
    })
    .await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let hook = json!({"url": receiver.url, "eventTypes": ["UserRegistered"]});
    let created = client.post(server.url("/api/admin/webhooks")).json(&hook).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let hook_id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let load = tokio::spawn(send_commands(server.base.clone(), cut.clone(), stop.clone()));
    tokio::time::sleep(BEFORE_CUT).await;
    let delivered_before_cut = receiver.deliveries().len();
    proxy.cut();
    cut.store(true, Ordering::Release);
    tokio::time::sleep(CUT).await;
    proxy.restore();
    cut.store(false, Ordering::Release);
    tokio::time::sleep(AFTER_RESTORE).await;
    stop.store(true, Ordering::Release);
    let sent = load.await.unwrap();

    // Every accepted event reaches the endpoint, within what is left of the test's bound.
    let accepted: BTreeSet<String> = sent.accepted.iter().cloned().collect();
    let missing = loop {
        let delivered: BTreeSet<String> = receiver.deliveries().into_iter().collect();
        let missing: Vec<&String> = accepted.difference(&delivered).collect();
        if missing.is_empty() || started.elapsed() > TEST_BOUND - Duration::from_secs(5) {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recovered_after = started.elapsed();
    let letters = client.get(server.url("/api/admin/dlq")).send().await.unwrap();
    assert_eq!(letters.status(), 200);
    let letters = letters.json::<Value>().await.unwrap()["items"].as_array().unwrap().clone();
    let ready = client.get(server.url("/health/ready")).send().await.unwrap().status();
    let deliveries = receiver.deliveries();
    let distinct: BTreeSet<&String> = deliveries.iter().collect();
    eprintln!(
        "rabbitmq outage ({CUT:?}): commands sent {}, 202 {} ({} during the cut), non-202 {}, deliveries {} \
         ({delivered_before_cut} before the cut), distinct events delivered {}, missing {}, DLQ {}, \
         all delivered {recovered_after:.1?} after the start",
        sent.accepted.len() + sent.refused.len(),
        sent.accepted.len(),
        sent.accepted_during_cut,
        sent.refused.len(),
        deliveries.len(),
        distinct.len(),
        missing.len(),
        letters.len(),
    );
    let deleted = client.delete(server.url(&format!("/api/admin/webhooks/{hook_id}"))).send().await.unwrap();
    // The namespace's exchanges and dead-letter queues go too: the broker is left as it was.
    server.kill();
    nexus_rabbitmq::RabbitEventQueue::connect(&amqp_url(), &namespace)
        .await
        .unwrap()
        .destroy()
        .await
        .unwrap();

    assert!(sent.refused.is_empty(), "commands are accepted while the broker is away: {:?}", sent.refused);
    assert!(sent.accepted_during_cut > 0, "the load ran during the cut");
    assert!(missing.is_empty(), "accepted events never delivered: {missing:?}");
    assert!(letters.is_empty(), "nothing failed 5 times: {letters:?}");
    assert_eq!(ready, 200, "/health/ready answers again");
    assert_eq!(deleted.status(), 204, "the webhook and its queues are deleted");
    assert!(started.elapsed() < TEST_BOUND, "bounded: {:?}", started.elapsed());
}
