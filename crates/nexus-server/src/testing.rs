//! A test server for a service's own domain (feature `testing`): `nexus_server::run` on
//! 127.0.0.1:0 in a fresh temporary data directory, with the embedded backends, and a thin HTTP
//! client that speaks to it.
//!
//! ```no_run
//! # async fn demo(domain: nexus_core::Domain) {
//! use nexus_server::testing::TestServer;
//! use serde_json::json;
//!
//! let server = TestServer::start(domain).await;
//! let accepted = server.accepted("OpenTicket", json!({"title": "Printer", "customerId": "c-1", "priority": "high"})).await;
//! let id = accepted["aggregateId"].as_str().unwrap();
//! let doc = server.document_at("tickets", id, 1).await;
//! assert_eq!(doc["status"], "OPEN");
//! server.stop().await;
//! # }
//! ```

use std::time::Duration;

use nexus_core::Domain;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, ServeError};

/// How long any single wait of a test may take before the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A `nexus_server::run` on 127.0.0.1:0 with a domain and the embedded backends; HTTPS when the
/// configuration names a certificate and key (`config.tls.listener`). Dropping it stops the
/// server.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Starts a server for `domain` in a fresh temporary data directory.
    pub async fn start(domain: Domain) -> Self {
        Self::start_in(domain, tempfile::tempdir().expect("temporary data directory")).await
    }

    /// Starts a server on an existing data directory (a restart keeps its state).
    pub async fn start_in(domain: Domain, dir: TempDir) -> Self {
        Self::start_configured(domain, dir, |_| {}).await
    }

    /// Starts a server in a fresh directory with `configure` applied to the default config.
    pub async fn start_with(domain: Domain, configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_configured(domain, tempfile::tempdir().expect("temporary data directory"), configure)
            .await
    }

    /// Starts a server on `dir` with `configure` applied to the default config.
    pub async fn start_configured(domain: Domain, dir: TempDir, configure: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        // A dropped sender also stops the server: a failing test does not leak a running one.
        let shutdown = async move {
            let _ = stopped.await;
        };
        let mut config = Config::embedded(dir.path());
        configure(&mut config);
        let builder = reqwest::Client::builder().no_proxy().timeout(DEADLINE);
        // With `config.tls.listener` set the server speaks HTTPS only, and the client trusts what
        // the server's webhook deliveries trust: the platform's roots and `config.tls.extra_roots`
        // (a test's own CA).
        let (scheme, builder) = match &config.tls.listener {
            None => ("http", builder),
            Some(_) => {
                let extra = config.tls.extra_roots.as_deref();
                ("https", crate::tls::https_client(builder, extra).expect("the test's trust roots"))
            }
        };
        let http = builder.build().expect("HTTP client");
        let task = tokio::spawn(crate::run(config, domain, listener, shutdown));
        // The listener is already bound, so requests sent before `run` has opened its stores wait
        // in the accept backlog: no readiness polling needed.
        Self { base: format!("{scheme}://{addr}"), http, dir: Some(dir), stop: Some(stop), task: Some(task) }
    }

    /// Triggers the shutdown signal, asserts that `run` returns `Ok` within a few seconds and
    /// hands back the data directory.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.stop.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        let outcome = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run() did not return within 5 s of the shutdown signal")
            .expect("the server task panicked");
        if let Err(error) = outcome {
            panic!("run() returned an error on shutdown: {error}");
        }
        self.dir.take().expect("data directory")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::read(self.http.get(self.url(path)).send().await.expect("GET")).await
    }

    /// `POST /api/commands/{command_type}` with `body` as JSON.
    pub async fn command(&self, command_type: &str, body: Value) -> Reply {
        self.command_with(command_type, body, &[]).await
    }

    pub async fn command_with(&self, command_type: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.post(self.url(&format!("/api/commands/{command_type}"))).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("POST command")).await
    }

    /// A command that must be accepted; returns its 202 body.
    pub async fn accepted(&self, command_type: &str, body: Value) -> Value {
        let reply = self.command(command_type, body.clone()).await;
        assert_eq!(reply.status, 202, "{command_type} {body} was not accepted: {}", reply.body);
        reply.body
    }

    /// The `resource` document `id` once its projection reached `version` (read-your-writes).
    pub async fn document_at(&self, resource: &str, id: &str, version: u64) -> Value {
        let reply = self.get(&format!("/api/queries/{resource}/{id}?minVersion={version}")).await;
        assert_eq!(reply.status, 200, "{resource}/{id} at version {version}: {}", reply.body);
        reply.body
    }

    /// The events of one aggregate, in version order.
    pub async fn events_of(&self, aggregate_id: &str) -> Vec<Value> {
        let reply = self.get(&format!("/api/events/{aggregate_id}")).await;
        assert_eq!(reply.status, 200, "events of {aggregate_id}: {}", reply.body);
        assert_eq!(reply.body["aggregateId"], aggregate_id);
        reply.body["events"].as_array().expect("events array").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response, its body parsed as JSON (or kept as a JSON string when it is not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self { status, headers, body }
    }

    /// Asserts the contract's error shape: `status`, `code`, and a string `message`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}, got body {}", self.body);
        assert_eq!(self.body["code"], code, "body {}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()), "message: {}", self.body);
    }

    /// The `field` names of a `VALIDATION_ERROR`, each checked to carry a string `error`.
    pub fn error_fields(&self) -> Vec<String> {
        self.assert_error(400, "VALIDATION_ERROR");
        let fields = self.body["fields"].as_array().unwrap_or_else(|| panic!("no fields: {}", self.body));
        fields
            .iter()
            .map(|f| {
                assert!(f["error"].is_string(), "field error without a message: {f}");
                f["field"].as_str().unwrap_or_else(|| panic!("field without a name: {f}")).to_owned()
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
