//! Webhooks (contract §9): consumers on the queue path that POST each event they subscribed to,
//! in CloudEvents 1.0 binary mode, signed with HMAC-SHA256 when the webhook has a secret.
//!
//! Registrations are kept in the read store as documents of the internal resource `_webhooks`
//! (not served by `/api/queries`, which serves only the domain's projections): they then live
//! wherever the read models live, embedded or PostgreSQL, with no new storage. A deleted webhook
//! is a document with status `DELETED` at a higher version, so the version guard orders create and
//! delete. Every process of the router role runs one consumer task per active webhook; the
//! supervisor re-reads the registrations every second (and at once after a change made here).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use nexus_core::ports::{Delivery, EventQueue, Filter, ListQuery};
use nexus_core::{DomainEvent, FailureKind, ReadDocument, ReadStore, StoreError};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The read-store resource (and checkpoint name) holding webhook registrations.
const RESOURCE: &str = "_webhooks";

/// One registration.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Webhook {
    pub(crate) id: String,
    pub(crate) url: String,
    /// Event types delivered; empty means every type on the queue path.
    pub(crate) event_types: Vec<String>,
    pub(crate) secret: Option<String>,
    pub(crate) created_at: String,
}

impl Webhook {
    /// The queue-path consumer this webhook reads from.
    pub(crate) fn consumer(&self) -> String {
        format!("webhook-{}", self.id)
    }

    fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }

    /// What `GET /api/admin/webhooks` shows: never the secret.
    pub(crate) fn view(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "eventTypes": self.event_types,
            "signed": self.secret.is_some(),
            "createdAt": self.created_at,
        })
    }

    fn to_document(&self, version: u64, status: &str) -> ReadDocument {
        let mut doc = ReadDocument::empty(&self.id, &self.id);
        doc.version = version;
        doc.last_updated = nexus_core::format_timestamp(chrono::Utc::now());
        doc.status = status.to_owned();
        doc.set("url", self.url.clone());
        doc.set("eventTypes", self.event_types.clone());
        doc.set("secret", self.secret.clone());
        doc.set("createdAt", self.created_at.clone());
        doc
    }

    fn from_document(doc: &ReadDocument) -> Option<Self> {
        Some(Self {
            id: doc.id.clone(),
            url: doc.fields.get("url")?.as_str()?.to_owned(),
            event_types: serde_json::from_value(doc.fields.get("eventTypes")?.clone()).ok()?,
            secret: doc.fields.get("secret").and_then(|s| s.as_str()).map(str::to_owned),
            created_at: doc.fields.get("createdAt").and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
        })
    }
}

/// The registrations and the consumers that deliver them.
pub(crate) struct Webhooks {
    read: Arc<dyn ReadStore>,
    queue: Arc<dyn EventQueue>,
    changed: Notify,
}

impl Webhooks {
    pub(crate) fn new(read: Arc<dyn ReadStore>, queue: Arc<dyn EventQueue>) -> Arc<Self> {
        Arc::new(Self { read, queue, changed: Notify::new() })
    }

    pub(crate) async fn list(&self) -> Result<Vec<Webhook>, StoreError> {
        let query = ListQuery {
            filters: vec![Filter { field: "status".into(), value: "ACTIVE".into() }],
            sort: None,
            limit: 10_000,
            offset: 0,
        };
        let page = self.read.list(RESOURCE, &query).await?;
        let mut hooks: Vec<Webhook> = page.items.iter().filter_map(Webhook::from_document).collect();
        hooks.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(hooks)
    }

    /// Registers a webhook. Its queue exists before this returns, so every event routed after
    /// the `201` reaches it.
    pub(crate) async fn create(
        &self,
        url: String,
        event_types: Vec<String>,
        secret: Option<String>,
    ) -> Result<Webhook, StoreError> {
        let hook = Webhook {
            id: uuid::Uuid::now_v7().to_string(),
            url,
            event_types,
            secret,
            created_at: nexus_core::format_timestamp(chrono::Utc::now()),
        };
        self.queue.subscribe(&hook.consumer()).await?;
        self.read.commit(RESOURCE, RESOURCE, vec![hook.to_document(1, "ACTIVE")], 0).await?;
        self.changed.notify_waiters();
        Ok(hook)
    }

    /// Removes a webhook and its queue; `false` when there is no such active webhook.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let Some(doc) = self.read.get(RESOURCE, id).await? else { return Ok(false) };
        let Some(hook) = Webhook::from_document(&doc).filter(|_| doc.status == "ACTIVE") else {
            return Ok(false);
        };
        self.read.commit(RESOURCE, RESOURCE, vec![hook.to_document(doc.version + 1, "DELETED")], 0).await?;
        self.queue.unsubscribe(&hook.consumer()).await?;
        self.changed.notify_waiters();
        Ok(true)
    }

    /// Keeps one delivering task per active webhook until `shutdown`.
    pub(crate) async fn supervise(
        self: Arc<Self>,
        settings: Delivering,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut running: HashMap<String, (Webhook, JoinHandle<()>)> = HashMap::new();
        while !*shutdown.borrow() {
            let changed = self.changed.notified();
            match self.list().await {
                Ok(hooks) => {
                    let wanted: HashMap<String, Webhook> =
                        hooks.into_iter().map(|h| (h.id.clone(), h)).collect();
                    running.retain(|id, (hook, task)| {
                        let keep = wanted.get(id) == Some(hook);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (id, hook) in wanted {
                        if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(id) {
                            let task = tokio::spawn(deliver_loop(
                                hook.clone(),
                                self.queue.clone(),
                                settings.clone(),
                                shutdown.clone(),
                            ));
                            slot.insert((hook, task));
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read webhook registrations; retrying"),
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
        for (_, (_, task)) in running {
            let _ = task.await;
        }
    }
}

/// The HTTP client that delivers webhooks: no proxy, `timeout` per request, and no redirects
/// followed. A webhook's URL is the one an operator registered; a `3xx` would send the event
/// (and its signature) wherever the endpoint points, so it is a failed delivery instead, retried
/// and then dead-lettered like any other non-`2xx` answer.
pub(crate) fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).timeout(timeout).build()
}

/// How deliveries are made.
#[derive(Clone)]
pub(crate) struct Delivering {
    pub(crate) http: reqwest::Client,
    pub(crate) retry_base: Duration,
}

/// Receives the webhook's queue and delivers what it subscribed to; acks the rest.
async fn deliver_loop(
    hook: Webhook,
    queue: Arc<dyn EventQueue>,
    settings: Delivering,
    mut shutdown: watch::Receiver<bool>,
) {
    let consumer = hook.consumer();
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let batch = tokio::select! {
            batch = queue.receive(&consumer, 32, Duration::from_secs(1)) => batch,
            _ = shutdown.changed() => break,
        };
        let deliveries = match batch {
            Ok(deliveries) => {
                backoff = Duration::from_millis(100);
                deliveries
            }
            Err(error) => {
                tracing::warn!(webhook = %hook.id, %error, "queue unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(nexus_runtime::MAX_BACKOFF);
                continue;
            }
        };
        for delivery in deliveries {
            if let Err(error) = handle(&hook, &queue, &settings, &delivery).await {
                // The delivery stays unacknowledged: the visibility timeout brings it back.
                tracing::warn!(webhook = %hook.id, %error, "cannot settle a delivery");
            }
        }
    }
}

async fn handle(
    hook: &Webhook,
    queue: &Arc<dyn EventQueue>,
    settings: &Delivering,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    if !hook.wants(&delivery.event.event_type) {
        return queue.ack(delivery).await;
    }
    metrics::counter!("nexus_delivery_attempts_total", "consumer" => "webhook").increment(1);
    match post(&settings.http, hook, &delivery.event).await {
        Ok(()) => {
            metrics::counter!("nexus_deliveries_total", "consumer" => "webhook", "outcome" => "delivered")
                .increment(1);
            queue.ack(delivery).await
        }
        Err(reason) => {
            let outcome = if delivery.attempt >= nexus_core::ports::MAX_DELIVERIES {
                "dead_lettered"
            } else {
                "retried"
            };
            metrics::counter!("nexus_deliveries_total", "consumer" => "webhook", "outcome" => outcome)
                .increment(1);
            tracing::info!(webhook = %hook.id, event_id = %delivery.event.event_id, attempt = delivery.attempt, %reason, "webhook delivery failed");
            let delay = nexus_runtime::retry_delay(settings.retry_base, delivery.attempt);
            queue.nack(delivery, &reason, delay).await
        }
    }
}

/// HMAC-SHA256 of `body` with `secret`, hex: the `X-Nexus-Signature` header.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// One POST in CloudEvents 1.0 binary mode: the attributes in `ce-` headers, the event's data
/// (its `DomainEvent` JSON) as the body. A failure comes back as the reason the dead-letter
/// processor reads the kind of (see [`FailureKind`]): no answer, or an answer that says "later"
/// (`429`, `502`, `503`, `504`), is transient; any other non-`2xx` answer is the endpoint refusing
/// the event; a request that cannot even be built (an event type or aggregate id that is not a
/// valid header value) is permanent, so it is archived rather than republished forever.
async fn post(http: &reqwest::Client, hook: &Webhook, event: &DomainEvent) -> Result<(), String> {
    let body = serde_json::to_vec(event)
        .map_err(|e| FailureKind::Permanent.reason(format_args!("cannot serialize the event: {e}")))?;
    let mut request = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", &event.event_id)
        .header("ce-type", &event.event_type)
        .header("ce-source", "nexus")
        .header("ce-subject", &event.aggregate_id)
        .header("ce-time", &event.timestamp);
    if let Some(secret) = &hook.secret {
        request = request.header("x-nexus-signature", signature(secret, &body));
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) if response.status().is_redirection() => {
            let location = response.headers().get(reqwest::header::LOCATION);
            let to = location.and_then(|l| l.to_str().ok()).map(|l| format!(" (to {l})")).unwrap_or_default();
            Err(FailureKind::Rejected.reason(format_args!(
                "HTTP {} from {}: redirects are not followed{to}; register the URL that answers 2xx itself",
                response.status(),
                hook.url
            )))
        }
        Ok(response) => {
            let status = response.status();
            let later = [429, 502, 503, 504].contains(&status.as_u16());
            let kind = if later { FailureKind::Transient } else { FailureKind::Rejected };
            Err(kind.reason(format_args!("HTTP {status} from {}", hook.url)))
        }
        Err(error) if error.is_builder() => {
            let cause = std::error::Error::source(&error).map(|c| format!(" ({c})")).unwrap_or_default();
            Err(FailureKind::Permanent
                .reason(format_args!("cannot build the request to {}: {error}{cause}", hook.url)))
        }
        Err(error) if error.is_timeout() => {
            Err(FailureKind::Transient.reason(format_args!("{} did not answer in time", hook.url)))
        }
        Err(error) => Err(FailureKind::Transient.reason(format_args!("cannot reach {}: {error}", hook.url))),
    }
}
