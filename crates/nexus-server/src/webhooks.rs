//! Webhooks (contract §9): consumers on the queue path that POST each event they subscribed to,
//! in CloudEvents 1.0 binary mode, signed with HMAC-SHA256 when the webhook has a secret.
//!
//! Registrations are kept in the read store as documents of the internal resource `_webhooks`
//! (not served by `/api/queries`, which serves only the domain's projections): they then live
//! wherever the read models live, embedded or PostgreSQL, with no new storage. A deleted webhook
//! is a document with status `DELETED` at a higher version, so the version guard orders create and
//! delete. Every process of the router role runs one consumer task per active webhook; the
//! supervisor re-reads the registrations every second (and at once after a change made here).
//!
//! A webhook may subscribe to core event types too. The router copies a core event to the queue
//! path only while some webhook wants its type ([`Webhooks::wants_core`], an in-memory set loaded
//! before the router starts, widened at once by a registration made here and re-read by the
//! supervisor), so core events cost the queue path nothing while no webhook asks for them.
//!
//! Per-aggregate order: a webhook's consumer delivers one event at a time. When a delivery fails
//! and is put back for a later retry, the aggregate's later events that arrive meanwhile are held
//! (received, not acknowledged) until that event is settled, delivered or dead-lettered; other
//! aggregates go on. See [`Sequencer`] for the limits of that guarantee.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use nexus_core::ports::{Delivery, EventQueue, Filter, ListQuery};
use nexus_core::{DomainEvent, FailureKind, ReadDocument, ReadStore, StoreError};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The read-store resource (and checkpoint name) holding webhook registrations.
const RESOURCE: &str = "_webhooks";

/// The `eventTypes` entry that subscribes to every event type of the domain.
pub(crate) const ALL_EVENT_TYPES: &str = "*";

/// One registration.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Webhook {
    pub(crate) id: String,
    pub(crate) url: String,
    /// Event types delivered; `"*"` among them means every type; empty (accepted by older
    /// versions) means every type on the queue path.
    pub(crate) event_types: Vec<String>,
    pub(crate) secret: Option<String>,
    pub(crate) created_at: String,
}

impl Webhook {
    /// The queue-path consumer this webhook reads from.
    pub(crate) fn consumer(&self) -> String {
        format!("webhook-{}", self.id)
    }

    fn wants_all(&self) -> bool {
        self.event_types.iter().any(|t| t == ALL_EVENT_TYPES)
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

/// The event types one webhook's consumer delivers; it acknowledges the others, which reach its
/// queue because another webhook wants them.
#[derive(Clone, Debug)]
enum Selection {
    All,
    Types(HashSet<String>),
}

impl Selection {
    fn of(hook: &Webhook, queue_path: &HashSet<String>) -> Self {
        if hook.wants_all() {
            Selection::All
        } else if hook.event_types.is_empty() {
            Selection::Types(queue_path.clone())
        } else {
            Selection::Types(hook.event_types.iter().cloned().collect())
        }
    }

    fn wants(&self, event_type: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Types(types) => types.contains(event_type),
        }
    }
}

/// The event types some active webhook wants, for the router (see [`Webhooks::wants_core`]).
#[derive(Debug, Default)]
struct Interest {
    all: bool,
    types: HashSet<String>,
}

impl Interest {
    fn add(&mut self, hook: &Webhook) {
        self.all |= hook.wants_all();
        self.types.extend(hook.event_types.iter().cloned());
    }
}

/// The registrations and the consumers that deliver them.
pub(crate) struct Webhooks {
    read: Arc<dyn ReadStore>,
    queue: Arc<dyn EventQueue>,
    /// The event types on the queue path: what a registration with no event types receives.
    queue_path: HashSet<String>,
    interest: RwLock<Interest>,
    /// Bumped by every change made here, so the supervisor never replaces the interest with a
    /// list read before the change.
    generation: AtomicU64,
    changed: Notify,
}

impl Webhooks {
    pub(crate) fn new(
        read: Arc<dyn ReadStore>,
        queue: Arc<dyn EventQueue>,
        queue_path: impl IntoIterator<Item = String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            read,
            queue,
            queue_path: queue_path.into_iter().collect(),
            interest: RwLock::default(),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
        })
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

    /// Whether some active webhook wants core events of `event_type`: the router then copies
    /// them to the queue path. An in-memory lookup, asked once per routed core event.
    pub(crate) fn wants_core(&self, event_type: &str) -> bool {
        let interest = self.interest.read().expect("webhook interest poisoned");
        interest.all || interest.types.contains(event_type)
    }

    /// Reads the registrations into the router's interest. Called before the router starts, so
    /// that after a restart the router copies what the registered webhooks want from its first
    /// batch on.
    pub(crate) async fn load(&self) -> Result<(), StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let hooks = self.list().await?;
        self.set_interest(generation, &hooks);
        Ok(())
    }

    /// Replaces the interest with the one of `hooks`, unless a change was made here since
    /// `generation` was read (`hooks` may predate it; the next read will not).
    fn set_interest(&self, generation: u64, hooks: &[Webhook]) {
        let mut fresh = Interest::default();
        for hook in hooks {
            fresh.add(hook);
        }
        let mut interest = self.interest.write().expect("webhook interest poisoned");
        if self.generation.load(Ordering::Acquire) == generation {
            *interest = fresh;
        }
    }

    /// Registers a webhook. Its queue exists, and the router copies the core events it wants,
    /// before this returns, so every event routed after the `201` reaches it.
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
        {
            let mut interest = self.interest.write().expect("webhook interest poisoned");
            self.generation.fetch_add(1, Ordering::AcqRel);
            interest.add(&hook);
        }
        self.changed.notify_waiters();
        Ok(hook)
    }

    /// Removes a webhook and its queue; `false` when there is no such active webhook. The
    /// router's interest narrows at the supervisor's next read (until then, core events of the
    /// types only it wanted are still copied to the queue path, to no queue of its own).
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let Some(doc) = self.read.get(RESOURCE, id).await? else { return Ok(false) };
        let Some(hook) = Webhook::from_document(&doc).filter(|_| doc.status == "ACTIVE") else {
            return Ok(false);
        };
        self.read.commit(RESOURCE, RESOURCE, vec![hook.to_document(doc.version + 1, "DELETED")], 0).await?;
        self.queue.unsubscribe(&hook.consumer()).await?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        Ok(true)
    }

    /// Keeps one delivering task per active webhook, and the router's interest up to date with
    /// the registrations (made here or by another process), until `shutdown`.
    pub(crate) async fn supervise(
        self: Arc<Self>,
        settings: Delivering,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut running: HashMap<String, (Webhook, JoinHandle<()>)> = HashMap::new();
        while !*shutdown.borrow() {
            let changed = self.changed.notified();
            let generation = self.generation.load(Ordering::Acquire);
            match self.list().await {
                Ok(hooks) => {
                    self.set_interest(generation, &hooks);
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
                            let sequencer = Sequencer::new(
                                hook.clone(),
                                Selection::of(&hook, &self.queue_path),
                                self.queue.clone(),
                                settings.clone(),
                            );
                            let task = tokio::spawn(sequencer.run(shutdown.clone()));
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
/// and then dead-lettered like any other non-`2xx` answer. `https://` targets are verified
/// against the platform's trust roots plus the PEM bundle `extra_roots` (`SSL_CERT_FILE`).
pub(crate) fn http_client(
    timeout: Duration,
    extra_roots: Option<&std::path::Path>,
) -> Result<reqwest::Client, crate::tls::TlsError> {
    let builder =
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).timeout(timeout);
    crate::tls::https_client(builder, extra_roots)?
        .build()
        .map_err(|e| crate::tls::TlsError::Client(e.to_string()))
}

/// How deliveries are made.
#[derive(Clone)]
pub(crate) struct Delivering {
    pub(crate) http: reqwest::Client,
    pub(crate) retry_base: Duration,
    /// Whether targets may resolve to non-public addresses (see [`private_targets_allowed`]);
    /// when not, each delivery resolves its target again first, so a name that came to point
    /// inside after its registration is refused.
    pub(crate) private_targets: bool,
}

/// How long a webhook waits, beyond a failed delivery's retry delay, for that delivery to come
/// back before it lets the aggregate's later events go anyway: the retry may have gone to another
/// process consuming the same queue, and must not hold the aggregate for ever.
const HOLD_GRACE: Duration = Duration::from_secs(60);

/// How long an unsettled delivery (its ack or nack failed) takes to come back: the embedded
/// queue's visibility timeout. Its aggregate waits for it as for a retry.
const UNSETTLED_RETURN: Duration = Duration::from_secs(30);

/// Later events one webhook holds back behind failed deliveries, all aggregates together. Held
/// deliveries stay unacknowledged, so this stays well below the RabbitMQ prefetch (256) minus a
/// batch: the retries being waited for must still be able to arrive.
const MAX_HELD: usize = 128;

/// What became of one attempt.
enum Attempt {
    /// Delivered and acknowledged, or dead-lettered: the aggregate's next event may go.
    Settled,
    /// Back on the queue for a retry after about this long: the aggregate's next events wait.
    Pending(Duration),
}

/// An aggregate whose delivery failed and waits for its retry.
struct Blocked {
    /// The event id of the failed delivery.
    awaiting: String,
    /// When to stop waiting for it (see [`HOLD_GRACE`]).
    until: Instant,
    /// The aggregate's later deliveries, in the order they arrived.
    held: VecDeque<Delivery>,
}

/// One webhook's consumer: receives its queue and delivers what it subscribed to, one event at a
/// time and in order per aggregate; acknowledges the rest.
///
/// Order holds when the webhook's queue is read by this one consumer (one process of the router
/// role) and it holds at most [`MAX_HELD`] events back. It is not kept:
/// - across processes: each router process consumes every webhook's queue, and two processes
///   may take two events of one aggregate at once;
/// - beyond [`MAX_HELD`], or when a failed delivery does not come back within its retry delay
///   plus [`HOLD_GRACE`]: the later events then go without waiting (logged);
/// - for an event retried from the dead-letter queue by an operator: it is delivered after the
///   aggregate's later events.
///
/// A held delivery stays unacknowledged: the embedded queue hands it out again every 30 s (its
/// visibility timeout), and each time counts as one of its attempts (the port has no way to
/// extend a lease). With the default delays an event behind one that fails quickly waits about
/// 15 s and loses none; behind deliveries that keep timing out, or with long retry delays, a held
/// event may be dead-lettered (`TRANSIENT:`) having been tried fewer times. RabbitMQ keeps a held
/// delivery with its consumer until it is settled.
struct Sequencer {
    hook: Webhook,
    selection: Selection,
    queue: Arc<dyn EventQueue>,
    settings: Delivering,
    blocked: HashMap<String, Blocked>,
    held: usize,
}

impl Sequencer {
    fn new(hook: Webhook, selection: Selection, queue: Arc<dyn EventQueue>, settings: Delivering) -> Self {
        Self { hook, selection, queue, settings, blocked: HashMap::new(), held: 0 }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let consumer = self.hook.consumer();
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let batch = tokio::select! {
                batch = self.queue.receive(&consumer, 32, Duration::from_secs(1)) => batch,
                _ = shutdown.changed() => break,
            };
            match batch {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(100);
                    for delivery in deliveries {
                        self.take(delivery).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(webhook = %self.hook.id, %error, "queue unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(nexus_runtime::MAX_BACKOFF);
                }
            }
            self.give_up_waiting().await;
        }
    }

    async fn take(&mut self, delivery: Delivery) {
        if !self.selection.wants(&delivery.event.event_type) {
            if let Err(error) = self.queue.ack(&delivery).await {
                // Unacknowledged, it comes back and is acknowledged then.
                tracing::warn!(webhook = %self.hook.id, %error, "cannot acknowledge a delivery");
            }
            return;
        }
        let aggregate = delivery.event.aggregate_id.clone();
        if let Some(blocked) = self.blocked.get_mut(&aggregate)
            && blocked.awaiting != delivery.event.event_id
        {
            let same = blocked.held.iter_mut().find(|h| h.event.event_id == delivery.event.event_id);
            if let Some(slot) = same {
                // Handed out again (a visibility timeout, a lost channel) or published twice:
                // keep the newer handle; an older copy with its own handle is let go.
                let older = std::mem::replace(slot, delivery);
                if older.tag != slot.tag {
                    let _ = self.queue.ack(&older).await;
                }
                return;
            }
            if self.held < MAX_HELD {
                blocked.held.push_back(delivery);
                self.held += 1;
                return;
            }
            tracing::warn!(
                webhook = %self.hook.id, aggregate_id = %aggregate, event_id = %delivery.event.event_id,
                "too many events held behind failed deliveries: delivering this one out of order"
            );
            // Its outcome does not change what the aggregate waits for.
            self.attempt(&delivery).await;
            return;
        }
        let event_id = delivery.event.event_id.clone();
        match self.attempt(&delivery).await {
            Attempt::Pending(delay) => self.block(&aggregate, event_id, delay),
            Attempt::Settled => {
                if self.blocked.get(&aggregate).is_some_and(|b| b.awaiting == event_id) {
                    self.release(&aggregate).await;
                }
            }
        }
    }

    /// `aggregate`'s later events wait for `event_id`, back after about `delay`.
    fn block(&mut self, aggregate: &str, event_id: String, delay: Duration) {
        let until = Instant::now() + delay + HOLD_GRACE;
        let blocked = self.blocked.entry(aggregate.to_owned()).or_insert_with(|| Blocked {
            awaiting: String::new(),
            until,
            held: VecDeque::new(),
        });
        blocked.awaiting = event_id;
        blocked.until = until;
    }

    /// The event `aggregate` waited for is settled: delivers the held ones in order, until one
    /// fails (the aggregate then waits for that one) or none is left.
    async fn release(&mut self, aggregate: &str) {
        loop {
            let next = match self.blocked.get_mut(aggregate) {
                Some(blocked) => blocked.held.pop_front(),
                None => return,
            };
            let Some(next) = next else {
                self.blocked.remove(aggregate);
                return;
            };
            self.held -= 1;
            if let Attempt::Pending(delay) = self.attempt(&next).await {
                self.block(aggregate, next.event.event_id.clone(), delay);
                return;
            }
        }
    }

    /// Lets go of aggregates whose failed delivery did not come back in time.
    async fn give_up_waiting(&mut self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .blocked
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(aggregate, _)| aggregate.clone())
            .collect();
        for aggregate in late {
            if let Some(blocked) = self.blocked.get(&aggregate) {
                tracing::warn!(
                    webhook = %self.hook.id, aggregate_id = %aggregate, event_id = %blocked.awaiting,
                    held = blocked.held.len(),
                    "a failed delivery did not come back in time: the aggregate's later events go on"
                );
            }
            self.release(&aggregate).await;
        }
    }

    /// One POST, then the delivery is acknowledged, or put back with the backoff's delay
    /// (dead-lettered after the last attempt).
    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let (hook, queue, settings) = (&self.hook, &self.queue, &self.settings);
        metrics::counter!("nexus_delivery_attempts_total", "consumer" => "webhook").increment(1);
        let settled = match post(settings, hook, &delivery.event).await {
            Ok(()) => {
                metrics::counter!("nexus_deliveries_total", "consumer" => "webhook", "outcome" => "delivered")
                    .increment(1);
                queue.ack(delivery).await.map(|()| Attempt::Settled)
            }
            Err(reason) => {
                let last = delivery.attempt >= nexus_core::ports::MAX_DELIVERIES;
                let outcome = if last { "dead_lettered" } else { "retried" };
                metrics::counter!("nexus_deliveries_total", "consumer" => "webhook", "outcome" => outcome)
                    .increment(1);
                tracing::info!(webhook = %hook.id, event_id = %delivery.event.event_id, attempt = delivery.attempt, %reason, "webhook delivery failed");
                let delay = nexus_runtime::retry_delay(settings.retry_base, delivery.attempt);
                let settled = if last { Attempt::Settled } else { Attempt::Pending(delay) };
                queue.nack(delivery, &reason, delay).await.map(|()| settled)
            }
        };
        settled.unwrap_or_else(|error| {
            // The delivery stays unacknowledged: the visibility timeout (or a new channel) brings
            // it back, and its aggregate waits for it.
            tracing::warn!(webhook = %hook.id, %error, "cannot settle a delivery");
            Attempt::Pending(UNSETTLED_RETURN)
        })
    }
}

/// Whether webhook targets may be loopback, private, link-local or other non-public addresses:
/// always when the server listens on loopback only (nothing outside can register one), otherwise
/// only with `[webhooks] allow-private-targets = true`.
pub(crate) fn private_targets_allowed(config: &crate::Config) -> bool {
    config.listen.ip().is_loopback() || config.webhooks.allow_private_targets
}

/// Why a webhook target is refused.
#[derive(Debug, PartialEq)]
pub(crate) enum TargetError {
    /// Not an absolute http(s) URL with a host and without credentials.
    Malformed(String),
    /// The host does not resolve (now).
    Unresolved(String),
    /// The host resolves to a non-public address.
    NotPublic { host: String, address: IpAddr },
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetError::Malformed(why) | TargetError::Unresolved(why) => f.write_str(why),
            TargetError::NotPublic { host, address } => write!(
                f,
                "'{host}' resolves to {address}, a loopback, private, link-local or otherwise non-public \
                 address; such targets are refused while the server listens beyond loopback ([webhooks] \
                 allow-private-targets = true accepts them)"
            ),
        }
    }
}

/// Parses a webhook URL: `http` or `https`, a host, no user name or password (they would travel
/// with every delivery and show in listings).
pub(crate) fn parse_target(url: &str) -> Result<reqwest::Url, TargetError> {
    let malformed = |why: &str| TargetError::Malformed(why.to_owned());
    let parsed = reqwest::Url::parse(url).map_err(|e| TargetError::Malformed(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(malformed("must be an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(malformed("must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(malformed("must not carry a user name or password; use the webhook's secret"));
    }
    Ok(parsed)
}

/// Resolves `url`'s host and refuses it when ANY of its addresses is not public: a name with one
/// public and one private address could be delivered to either.
pub(crate) async fn check_public(url: &reqwest::Url) -> Result<(), TargetError> {
    let host = url.host_str().unwrap_or_default();
    // An IPv6 literal comes bracketed; the resolver wants it bare.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let unresolved = |why: String| TargetError::Unresolved(format!("cannot resolve '{host}': {why}"));
    let addresses = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((bare, port)))
        .await
        .map_err(|_| unresolved("no answer within 5 s".into()))?
        .map_err(|e| unresolved(e.to_string()))?;
    let mut any = false;
    for address in addresses {
        any = true;
        if !is_public(address.ip()) {
            return Err(TargetError::NotPublic { host: host.to_owned(), address: address.ip() });
        }
    }
    if !any {
        return Err(unresolved("no address".into()));
    }
    Ok(())
}

/// Whether `ip` is a public unicast address: not loopback, private (RFC 1918, fc00::/7), shared
/// (100.64/10), link-local (169.254/16, fe80::/10), unspecified, multicast, broadcast,
/// documentation, benchmarking or reserved. (`IpAddr::is_global` is not stable yet.) An IPv6
/// address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that IPv4 address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0 included
        || a == 10
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGN)
        || a == 127
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7])); // NAT64
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2])); // 6to4
    }
    !(s[..6] == [0, 0, 0, 0, 0, 0] // unspecified, loopback, IPv4-compatible
        || (s[0] == 0x64 && s[1] == 0xff9b) // local-use NAT64 (64:ff9b:1::/48)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x2001 && s[1] < 0x200) // IETF protocol assignments, Teredo
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation (3fff::/20)
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
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
async fn post(settings: &Delivering, hook: &Webhook, event: &DomainEvent) -> Result<(), String> {
    if !settings.private_targets {
        // Checked at registration too; names can be pointed elsewhere since.
        match parse_target(&hook.url) {
            Err(error) => return Err(FailureKind::Permanent.reason(format_args!("{}: {error}", hook.url))),
            Ok(url) => match check_public(&url).await {
                Ok(()) => {}
                Err(error @ TargetError::Unresolved(_)) => {
                    return Err(FailureKind::Transient.reason(format_args!("{}: {error}", hook.url)));
                }
                Err(error) => return Err(FailureKind::Rejected.reason(format_args!("{}: {error}", hook.url))),
            },
        }
    }
    let body = serde_json::to_vec(event)
        .map_err(|e| FailureKind::Permanent.reason(format_args!("cannot serialize the event: {e}")))?;
    let mut request = settings
        .http
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        let public =
            ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        let inside = [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::1",
            "3fff::1",
        ];
        for ip in inside {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
    }

    #[test]
    fn targets_are_http_urls_with_a_host_and_no_credentials() {
        assert!(parse_target("https://hooks.example.com/x").is_ok());
        assert!(parse_target("http://10.0.0.1:8080/").is_ok(), "checked for being public separately");
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "https://user:pw@example.com/",
            "http://user@example.com/",
        ] {
            assert!(matches!(parse_target(bad), Err(TargetError::Malformed(_))), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_literal_inside_address_is_refused_however_it_is_written() {
        for url in [
            "http://10.1.2.3/hook",
            "http://169.254.169.254/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            let parsed = parse_target(url).unwrap();
            assert!(matches!(check_public(&parsed).await, Err(TargetError::NotPublic { .. })), "{url}");
        }
        let public = parse_target("http://93.184.216.34/").unwrap();
        assert_eq!(check_public(&public).await, Ok(()));
    }
}
