//! The real `ticketing` binary: `ticketing serve` in a child process on a free loopback port and a
//! fresh data directory, driven over HTTP the way a client would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the server may take to answer `/health/ready` after it was spawned.
const STARTUP: Duration = Duration::from_secs(20);

/// A running `ticketing serve`; dropping it (at the end, or when an assertion panics) kills it.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Spawns the binary on a free port and waits until it is ready. A port picked free can be
    /// taken by someone else before the child binds it: then the child exits, and we try again.
    async fn start() -> Self {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(15)).build().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let data = tempfile::tempdir().unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_ticketing"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(data.path())
                .env("NEXUS_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the ticketing binary starts");
            let mut server =
                Server { child, base: format!("http://127.0.0.1:{port}"), http: http.clone(), _data: data };
            if server.ready().await {
                return server;
            }
        }
        panic!("ticketing serve did not start listening in 5 attempts");
    }

    /// Polls `/health/ready` until it answers 200 (true) or the child exits (false); fails the
    /// test after the startup deadline.
    async fn ready(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if let Ok(response) = self.http.get(self.url("/health/ready")).send().await
                && response.status().is_success()
            {
                return true;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!("ticketing serve exited before it was ready ({status}); trying another port");
                return false;
            }
            assert!(started.elapsed() < STARTUP, "ticketing serve was not ready within {STARTUP:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/commands/{command_type}`: the status and the JSON body.
    async fn command(&self, command_type: &str, body: Value) -> (u16, Value) {
        let url = self.url(&format!("/api/commands/{command_type}"));
        let response = self.http.post(url).json(&body).send().await.expect("POST command");
        (response.status().as_u16(), response.json().await.expect("a JSON body"))
    }

    /// A command that must be accepted: its `202` body.
    async fn accepted(&self, command_type: &str, body: Value) -> Value {
        let (status, reply) = self.command(command_type, body.clone()).await;
        assert_eq!(status, 202, "{command_type} {body}: {reply}");
        reply
    }

    /// `GET path`, which must answer 200: the JSON body.
    async fn query(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

#[tokio::test]
async fn the_binary_serves_the_ticketing_flow() {
    let server = Server::start().await;

    let opened = server
        .accepted("OpenTicket", json!({"title": "Printer on fire", "customerId": "c-1", "priority": "high"}))
        .await;
    let ticket = opened["aggregateId"].as_str().expect("a generated ticket id").to_owned();
    server.accepted("AssignTicket", json!({"aggregateId": ticket, "agentId": "agent-7"})).await;
    let resolved =
        server.accepted("ResolveTicket", json!({"aggregateId": ticket, "resolution": "unplugged it"})).await;
    assert_eq!(resolved["version"], 3);
    let position = resolved["position"].as_u64().expect("the 202 carries the store position");

    // Read-your-writes on the read model keyed by agent: wait for the resolution's position.
    let agent = server.query(&format!("/api/queries/agents/agent-7?minPosition={position}")).await;
    assert_eq!((&agent["openTickets"], &agent["resolvedTickets"]), (&json!(0), &json!(1)), "{agent}");

    // A second ticket, assigned and still open, counts as open.
    let second = server
        .accepted("OpenTicket", json!({"title": "VPN down", "customerId": "c-2", "priority": "normal"}))
        .await;
    let second = second["aggregateId"].as_str().unwrap().to_owned();
    let assigned =
        server.accepted("AssignTicket", json!({"aggregateId": second, "agentId": "agent-7"})).await;
    let position = assigned["position"].as_u64().unwrap();
    let agent = server.query(&format!("/api/queries/agents/agent-7?minPosition={position}")).await;
    assert_eq!((&agent["openTickets"], &agent["resolvedTickets"]), (&json!(1), &json!(1)), "{agent}");

    // The process manager requests the survey of the resolved ticket, asynchronously.
    let survey =
        server.query(&format!("/api/queries/surveys/survey-{ticket}?minVersion=1&timeoutMs=10000")).await;
    assert_eq!((&survey["status"], &survey["ticketId"]), (&json!("REQUESTED"), &json!(ticket)), "{survey}");
    assert_eq!(survey["customerId"], "c-1");

    // Resolving a ticket nobody was assigned is a business-rule violation.
    let unassigned = server
        .accepted("OpenTicket", json!({"title": "Mouse", "customerId": "c-3", "priority": "low"}))
        .await;
    let unassigned = unassigned["aggregateId"].as_str().unwrap();
    let (status, error) =
        server.command("ResolveTicket", json!({"aggregateId": unassigned, "resolution": "?"})).await;
    assert_eq!((status, &error["code"]), (400, &json!("BUSINESS_RULE_VIOLATION")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("ticket is OPEN"), "{error}");

    let mut server = server;
    assert!(server.child.try_wait().unwrap().is_none(), "the server kept running throughout");
    drop(server); // kills it (as a panic above would have)
}
