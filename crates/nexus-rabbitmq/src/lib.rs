//! The queue path on RabbitMQ (`NEXUS_QUEUE_URL=amqp://…`), behind the `EventQueue` port.
//!
//! Topology, every name under one namespace `{ns}` (so runs and tenants never meet):
//! - `{ns}.events`: a durable fanout exchange; `publish` sends each event there once, with
//!   publisher confirms awaited per batch (one round trip for the batch, not per event).
//! - `{ns}.q.{consumer}`: one durable **quorum** queue per consumer, bound to the fanout, with
//!   `x-delivery-limit` 4 (= 5 deliveries) and `x-dead-letter-exchange` `{ns}.dlx`: a message redelivered five times
//!   without an ack (a consumer that crashes on it) is dead-lettered by the broker itself.
//! - `{ns}.retry.{consumer}.{ms}`: a delayed retry is a copy published to a TTL queue whose
//!   messages dead-letter back to the consumer's queue after `ms` (there is no delayed-message
//!   plugin on RabbitMQ 3.10); one queue per delay, because a TTL only expires messages at the
//!   head of a queue. The copy carries the attempts so far in `x-nexus-attempts`.
//! - `{ns}.dlx` → `{ns}.dlq`: the dead-letter queue (durable, classic so a requeue keeps the
//!   order); the last failed delivery is published there with its reason and counts in headers.
//!   `dead_letters`, `retry` and `skip` browse it with `basic.get` and requeue what they do not
//!   take; a skipped letter moves to `{ns}.dlq.archive`.
//!
//! Every publish is persistent (delivery mode 2) and confirmed; quorum queues confirm after the
//! Raft log is synced, so `Ok` means durable.
//!
//! Owned by one event store ([`RabbitEventQueue::connect_for_store`]): the exchanges carry the
//! store's id as an argument, so attaching to a namespace another store declared fails at start
//! (the broker refuses an exchange declared again with other arguments); every message carries
//! the id (`x-nexus-store`), and a delivery of another store is refused: dead-lettered with a
//! `FOREIGN:` reason, logged and counted in `nexus_foreign_events_total{path="queue"}`, never
//! handed to a consumer.
//!
//! A lost connection is answered, not fatal: operations on it fail with
//! `StoreError::Unavailable` (the callers retry with backoff), and the next operation once the
//! broker is reachable again connects anew (one caller at a time), re-creates the confirming
//! publisher, declares the namespace again (the ownership check included) and re-opens each
//! subscriber's channel and consumer when that subscriber next receives. What a lost channel held
//! unacknowledged the broker gives back to its queue, so it is delivered again: at-least-once.
//!
//! TLS (`amqps://`) is rustls with *ring*: the server's certificate must be signed by one of the
//! platform's roots or of the roots the caller passes
//! ([`connect_for_store_with_roots`](RabbitEventQueue::connect_for_store_with_roots): the server
//! passes the platform's and `SSL_CERT_FILE`'s), and name the host of the URL.
//!
//! Architecture invariant: nothing here knows the domain or HTTP; errors collapse into
//! `StoreError::Unavailable` (a broker problem) or `Corrupt` (a message that is not an event).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use nexus_core::ports::{DeadLetter, Delivery, EventQueue, MAX_DELIVERIES};
use nexus_core::{DomainEvent, StoreError, format_timestamp};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;

/// Deliveries a consumer may hold unacknowledged (the broker's prefetch).
const PREFETCH: u16 = 256;

/// The consumer name of dead letters the router wrote; retrying one publishes to the fanout.
pub const FANOUT_CONSUMER: &str = "router";

/// How long connecting and declaring the namespace may take before the broker counts as
/// unreachable (a peer that accepts TCP and then says nothing must not hang every caller).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Delivery::tag`] is the broker's delivery tag on its subscriber's channel, with that
/// channel's epoch above this bit. Tags restart at 1 on every channel, so without the epoch an
/// ack of a delivery from a lost channel would settle whichever message the new channel numbered
/// alike.
const EPOCH_SHIFT: u32 = 40;

fn unavailable(error: lapin::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// A connection that failed, naming the broker (lapin's own error does not).
#[derive(Debug)]
struct ConnectError {
    server: String,
    source: lapin::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot connect to RabbitMQ at {}: {}", self.server, self.source)?;
        // The certificate's fault, in words an operator can act on.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&self.source);
        while let Some(mut error) = cause {
            // An `io::Error`'s `source` skips the error it wraps.
            if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                error = inner;
            }
            if let Some(rustls::Error::InvalidCertificate(why)) = error.downcast_ref::<rustls::Error>() {
                return f.write_str(match why {
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. } => {
                        " (the broker's certificate does not name the host of the URL)"
                    }
                    rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                        " (the broker's certificate is not signed by a trusted root)"
                    }
                    _ => " (the broker's certificate is refused)",
                });
            }
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `url` without its `user:password@` (errors are logged).
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Certificates as one PEM bundle.
fn pem(certs: &[CertificateDer<'static>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn now_iso() -> String {
    format_timestamp(chrono::Utc::now())
}

fn header_str(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_int(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The queue a broker dead-lettered message died in: the first `x-death` entry's `queue`.
fn death_queue(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    header_str(first, "queue")
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// One connection to the broker and its confirming publisher channel; replaced as a whole when
/// either is lost.
struct Link {
    connection: Connection,
    /// Publishes (fanout, retries, dead letters) and declarations go through this channel.
    publisher: Channel,
}

impl Link {
    async fn connect(url: &str, tls: &OwnedTLSConfig) -> Result<Self, StoreError> {
        let runtime = lapin::runtime::default_runtime().map_err(unavailable)?;
        let connection =
            Connection::connect_with_config(url, ConnectionProperties::default(), tls.clone(), runtime)
                .await
                .map_err(|source| {
                    StoreError::Unavailable(Box::new(ConnectError {
                        server: without_credentials(url),
                        source,
                    }))
                })?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        Ok(Self { connection, publisher })
    }

    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// A consumer's subscription in this process: its channel (acks go back on it) and its stream.
struct Subscriber {
    /// Tells this channel's deliveries from those of the consumer's earlier and later channels.
    epoch: u64,
    channel: Channel,
    stream: Mutex<Consumer>,
    /// First-failure times of deliveries being handled, by delivery tag.
    first_failures: std::sync::Mutex<HashMap<u64, Option<String>>>,
}

/// RabbitMQ queue path.
pub struct RabbitEventQueue {
    url: String,
    /// The extra trust roots of `amqps://` connections.
    tls: OwnedTLSConfig,
    namespace: String,
    /// The current connection; a std lock, held only to clone or swap the `Arc`.
    link: RwLock<Arc<Link>>,
    /// Held while connecting again, so concurrent callers wait for one reconnection.
    reconnecting: Mutex<()>,
    subscribers: Mutex<HashMap<String, Arc<Subscriber>>>,
    /// The next subscriber channel's epoch.
    epochs: AtomicU64,
    /// Retry queues declared by this process, per consumer (deleted with the consumer).
    retry_queues: std::sync::Mutex<HashMap<String, BTreeSet<u64>>>,
    /// Serializes browsing the dead-letter queue in this process.
    dlq: Mutex<()>,
    /// The store whose events this queue carries; `None`: not checked (tools, tests).
    store_id: Option<String>,
}

/// The header naming the store a message belongs to.
const STORE_HEADER: &str = "x-nexus-store";

impl RabbitEventQueue {
    /// Connects to `url` and declares the namespace's exchanges and dead-letter queues, owned by
    /// no store: nothing is checked (tools and tests).
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        Self::open(url, namespace, None, &[]).await
    }

    /// As [`connect`](Self::connect), for the events of store `store_id`: refuses a namespace
    /// another store declared, stamps every message and refuses deliveries of another store.
    pub async fn connect_for_store(url: &str, namespace: &str, store_id: &str) -> Result<Self, StoreError> {
        Self::open(url, namespace, Some(store_id.to_owned()), &[]).await
    }

    /// As [`connect_for_store`](Self::connect_for_store), trusting `roots` besides the
    /// platform's to sign the broker's certificate (`amqps://`).
    pub async fn connect_for_store_with_roots(
        url: &str,
        namespace: &str,
        store_id: &str,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, StoreError> {
        Self::open(url, namespace, Some(store_id.to_owned()), roots).await
    }

    async fn open(
        url: &str,
        namespace: &str,
        store_id: Option<String>,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, StoreError> {
        // lapin takes extra roots as PEM text.
        let tls = OwnedTLSConfig { identity: None, cert_chain: (!roots.is_empty()).then(|| pem(roots)) };
        let link = Self::within_timeout(Link::connect(url, &tls)).await?;
        let queue = Self {
            url: url.to_owned(),
            tls,
            namespace: namespace.to_owned(),
            link: RwLock::new(Arc::new(link)),
            reconnecting: Mutex::new(()),
            subscribers: Mutex::default(),
            epochs: AtomicU64::new(0),
            retry_queues: std::sync::Mutex::default(),
            dlq: Mutex::new(()),
            store_id,
        };
        let publisher = queue.current().publisher.clone();
        Self::within_timeout(queue.declare(&publisher)).await?;
        Ok(queue)
    }

    /// `step` (connecting, declaring), `Unavailable` when it takes longer than [`CONNECT_TIMEOUT`].
    async fn within_timeout<T>(step: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(CONNECT_TIMEOUT, step).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!("RabbitMQ did not answer within {CONNECT_TIMEOUT:?}").into()))
        })
    }

    /// Declares the namespace's exchanges (stamped with the owning store), dead-letter queue
    /// and archive: at start and again on every new connection.
    async fn declare(&self, publisher: &Channel) -> Result<(), StoreError> {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let mut owner = FieldTable::default();
        if let Some(store) = &self.store_id {
            owner.insert(STORE_HEADER.into(), text(store));
        }
        for exchange in [self.exchange(), self.dlx()] {
            publisher
                .exchange_declare(exchange.as_str().into(), ExchangeKind::Fanout, durable, owner.clone())
                .await
                .map_err(|error| match error.kind() {
                    // 406 PRECONDITION_FAILED: the exchange exists with other arguments.
                    lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => {
                        StoreError::InvalidRequest(format!(
                            "the RabbitMQ exchange '{exchange}' was declared by another store (or an older \
                         Nexus): two deployments must not share a namespace. Leave [queue] namespace unset \
                         (it then derives from the service and its store) or give each deployment one of its \
                         own ({error})"
                        ))
                    }
                    _ => unavailable(error),
                })?;
        }
        for name in [self.dlq_name(), self.archive_name()] {
            publisher
                .queue_declare(name.into(), QueueDeclareOptions::durable(), FieldTable::default())
                .await
                .map_err(unavailable)?;
        }
        publisher
            .queue_bind(
                self.dlq_name().into(),
                self.dlx().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }

    fn current(&self) -> Arc<Link> {
        self.link.read().expect("link poisoned").clone()
    }

    /// The live connection: the current one, or a new one when it is lost (declared like the
    /// first). `Unavailable` while the broker cannot be reached; the next call tries again.
    async fn link(&self) -> Result<Arc<Link>, StoreError> {
        let current = self.current();
        if current.is_up() {
            return Ok(current);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        let current = self.current();
        if current.is_up() {
            // Another caller reconnected while this one waited.
            return Ok(current);
        }
        let fresh = Self::within_timeout(async {
            let link = Link::connect(&self.url, &self.tls).await?;
            self.declare(&link.publisher).await?;
            Ok(link)
        })
        .await
        .inspect_err(|error| tracing::warn!(namespace = %self.namespace, %error, "RabbitMQ unreachable"))?;
        let fresh = Arc::new(fresh);
        // The old connection, if still open (only its publisher was lost), closes when its last
        // user drops it; its subscribers then find their channels closed and open new ones.
        *self.link.write().expect("link poisoned") = fresh.clone();
        tracing::info!(namespace = %self.namespace, "reconnected to RabbitMQ");
        Ok(fresh)
    }

    /// Closes the connection: what this process held unacknowledged goes back to its queues. A
    /// later operation would connect again.
    pub async fn close(&self) {
        let _ = self.current().connection.close(200, "closing".into()).await;
    }

    fn exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    fn dlx(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    fn dlq_name(&self) -> String {
        format!("{}.dlq", self.namespace)
    }

    fn archive_name(&self) -> String {
        format!("{}.dlq.archive", self.namespace)
    }

    fn queue_name(&self, consumer: &str) -> String {
        format!("{}.q.{consumer}", self.namespace)
    }

    fn retry_name(&self, consumer: &str, delay_ms: u64) -> String {
        format!("{}.retry.{consumer}.{delay_ms}", self.namespace)
    }

    /// Deletes the namespace's exchanges and dead-letter queues (consumers' queues go with
    /// `unsubscribe`). For tests and decommissioning.
    pub async fn destroy(&self) -> Result<(), StoreError> {
        let link = self.link().await?;
        for name in [self.dlq_name(), self.archive_name()] {
            link.publisher
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        for name in [self.exchange(), self.dlx()] {
            link.publisher
                .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Persistent JSON with `headers`, and the id of the store it belongs to.
    fn properties(&self, mut headers: FieldTable) -> BasicProperties {
        if let Some(store) = &self.store_id {
            headers.insert(STORE_HEADER.into(), text(store));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers)
    }

    /// Publishes and waits for the broker's confirm.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), StoreError> {
        let confirm = self
            .link()
            .await?
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the broker refused the message (nack)".into()))
        }
    }

    /// `consumer`'s subscriber, opened (channel, prefetch, consumer) when there is none or its
    /// channel or consumer was lost.
    async fn subscriber(&self, consumer: &str) -> Result<Arc<Subscriber>, StoreError> {
        let mut subscribers = self.subscribers.lock().await;
        if let Some(subscriber) = subscribers.get(consumer)
            && subscriber.channel.status().connected()
        {
            return Ok(subscriber.clone());
        }
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(unavailable)?;
        let stream = channel
            .basic_consume(
                self.queue_name(consumer).into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let subscriber = Arc::new(Subscriber {
            epoch: self.epochs.fetch_add(1, Ordering::Relaxed),
            channel,
            stream: Mutex::new(stream),
            first_failures: std::sync::Mutex::default(),
        });
        subscribers.insert(consumer.to_owned(), subscriber.clone());
        Ok(subscriber)
    }

    /// Forgets `subscriber` (its consumer ended or failed), unless it was replaced already; the
    /// next receive opens another.
    async fn drop_subscriber(&self, consumer: &str, subscriber: &Arc<Subscriber>) {
        let mut subscribers = self.subscribers.lock().await;
        if subscribers.get(consumer).is_some_and(|current| Arc::ptr_eq(current, subscriber)) {
            subscribers.remove(consumer);
        }
        let _ = subscriber.channel.close(200, "consumer lost".into()).await;
    }

    /// The subscriber whose channel `delivery` came on, and the broker's tag on that channel.
    /// `Unavailable` when that channel is gone: the broker put the message back in its queue,
    /// and it is delivered again.
    async fn holder(&self, delivery: &Delivery) -> Result<(Arc<Subscriber>, u64), StoreError> {
        let epoch = delivery.tag >> EPOCH_SHIFT;
        match self.subscribers.lock().await.get(&delivery.consumer) {
            Some(subscriber) if subscriber.epoch == epoch && subscriber.channel.status().connected() => {
                Ok((subscriber.clone(), delivery.tag & ((1 << EPOCH_SHIFT) - 1)))
            }
            _ => Err(StoreError::Unavailable(
                "the channel this delivery came on was lost; the broker delivers it again".into(),
            )),
        }
    }

    /// Up to `max` messages of `subscriber`'s consumer, waiting at most `wait` for the first.
    /// An error when the channel or the consumer is lost.
    async fn take(
        subscriber: &Subscriber,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<lapin::message::Delivery>, StoreError> {
        let mut stream = subscriber.stream.lock().await;
        let cancelled = || StoreError::Unavailable("the broker cancelled the consumer".into());
        let first = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(cancelled()),
            Ok(Some(message)) => message.map_err(unavailable)?,
        };
        let mut messages = vec![first];
        while messages.len() < max {
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(Some(message)) => messages.push(message.map_err(unavailable)?),
                Some(None) => return Err(cancelled()),
                None => break,
            }
        }
        Ok(messages)
    }

    fn to_delivery(
        consumer: &str,
        subscriber: &Subscriber,
        message: lapin::message::Delivery,
    ) -> Result<Delivery, StoreError> {
        let event: DomainEvent = serde_json::from_slice(&message.data)
            .map_err(|e| StoreError::Corrupt(format!("queued message is not an event: {e}")))?;
        let headers = message.properties.headers().clone().unwrap_or_default();
        let attempts = header_int(&headers, "x-nexus-attempts").unwrap_or(0).max(0) as u32;
        // A quorum queue counts redeliveries of unacknowledged messages in `x-delivery-count`.
        let redeliveries = header_int(&headers, "x-delivery-count").unwrap_or(0).max(0) as u32;
        subscriber
            .first_failures
            .lock()
            .expect("first failures poisoned")
            .insert(message.delivery_tag, header_str(&headers, "x-nexus-first-failure"));
        Ok(Delivery {
            tag: subscriber.epoch << EPOCH_SHIFT | message.delivery_tag,
            consumer: consumer.to_owned(),
            event,
            attempt: attempts + redeliveries + 1,
        })
    }

    /// The store a delivery belongs to, when that is not this queue's store.
    fn foreign(&self, message: &lapin::message::Delivery) -> Option<String> {
        let own = self.store_id.as_deref()?;
        let headers = message.properties.headers().clone().unwrap_or_default();
        let theirs = header_str(&headers, STORE_HEADER);
        (theirs.as_deref() != Some(own)).then(|| theirs.unwrap_or_else(|| "none".into()))
    }

    /// Refuses a delivery of another store: to the dead-letter queue with a `FOREIGN:` reason,
    /// then acknowledged; never handed to the consumer.
    async fn refuse(
        &self,
        consumer: &str,
        subscriber: &Subscriber,
        message: lapin::message::Delivery,
        theirs: &str,
    ) -> Result<(), StoreError> {
        let event: Option<DomainEvent> = serde_json::from_slice(&message.data).ok();
        let event_id = event.as_ref().map_or("?", |e| e.event_id.as_str()).to_owned();
        tracing::error!(
            consumer,
            event_id,
            from_store = theirs,
            "refused a queued event of another store; it is not delivered"
        );
        metrics::counter!("nexus_foreign_events_total", "path" => "queue").increment(1);
        if let Some(event) = &event {
            let own = self.store_id.as_deref().unwrap_or("none");
            let reason = format!("FOREIGN: published by store {theirs}, this queue belongs to store {own}");
            self.dead_letter(consumer, event, &reason).await?;
        }
        subscriber
            .channel
            .basic_ack(message.delivery_tag, BasicAckOptions::default())
            .await
            .map_err(unavailable)
    }

    /// Takes every message of the dead-letter queue without acknowledging it (until `settle`).
    async fn browse(&self, channel: &Channel) -> Result<Vec<(u64, DeadLetter, Vec<u8>)>, StoreError> {
        let mut found = Vec::new();
        while let Some(message) = channel
            .basic_get(self.dlq_name().into(), BasicGetOptions::default())
            .await
            .map_err(unavailable)?
        {
            let delivery = message.delivery;
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let event: DomainEvent = serde_json::from_slice(&delivery.data)
                .map_err(|e| StoreError::Corrupt(format!("dead letter is not an event: {e}")))?;
            // Dead-lettered by the broker (delivery limit reached): described by `x-death`.
            let broker_dead = header_str(&headers, "x-nexus-consumer").is_none();
            let consumer = header_str(&headers, "x-nexus-consumer").unwrap_or_else(|| {
                let queue = death_queue(&headers).unwrap_or_default();
                queue.rsplit_once(".q.").map_or(queue.clone(), |(_, c)| c.to_owned())
            });
            let id = header_str(&headers, "x-nexus-dlq-id").unwrap_or_else(|| {
                let message_id =
                    delivery.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
                format!("{message_id}.{consumer}")
            });
            let now = now_iso();
            let letter = DeadLetter {
                id,
                event,
                consumer,
                failure_reason: header_str(&headers, "x-nexus-reason").unwrap_or_else(|| {
                    if broker_dead {
                        "TRANSIENT: delivery limit reached without an acknowledgement".into()
                    } else {
                        "unknown".into()
                    }
                }),
                retry_count: header_int(&headers, "x-nexus-retry-count").map_or(MAX_DELIVERIES, |n| n as u32),
                first_failure_time: header_str(&headers, "x-nexus-first-failure")
                    .unwrap_or_else(|| now.clone()),
                last_failure_time: header_str(&headers, "x-nexus-last-failure").unwrap_or(now),
            };
            found.push((delivery.delivery_tag, letter, delivery.data));
        }
        Ok(found)
    }

    /// Applies `action` to dead letter `id` (publishing where it goes next), acks it, and puts
    /// every other browsed letter back.
    async fn settle_one(&self, id: &str, retry: bool) -> Result<bool, StoreError> {
        let _only_one = self.dlq.lock().await;
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let browsed = self.browse(&channel).await?;
        let mut outcome = Ok(false);
        if let Some((tag, letter, body)) = browsed.iter().find(|(_, l, _)| l.id == id) {
            let published = if !retry {
                let mut headers = FieldTable::default();
                headers.insert("x-nexus-dlq-id".into(), text(&letter.id));
                headers.insert("x-nexus-consumer".into(), text(&letter.consumer));
                headers.insert("x-nexus-reason".into(), text(&letter.failure_reason));
                self.publish_confirmed("", &self.archive_name(), body, self.properties(headers)).await
            } else if letter.consumer == FANOUT_CONSUMER {
                self.publish_confirmed(&self.exchange(), "", body, self.properties(FieldTable::default()))
                    .await
            } else {
                // Fresh attempts: no `x-nexus-attempts`, and a new message for the broker's count.
                self.publish_confirmed(
                    "",
                    &self.queue_name(&letter.consumer),
                    body,
                    self.properties(FieldTable::default()),
                )
                .await
            };
            outcome = match published {
                Ok(()) => channel
                    .basic_ack(*tag, BasicAckOptions::default())
                    .await
                    .map(|_| true)
                    .map_err(unavailable),
                Err(error) => Err(error),
            };
        }
        // Closing the channel requeues every message still unacknowledged on it, in order.
        let _ = channel.close(200, "browsed".into()).await;
        outcome
    }

    async fn ensure_retry_queue(&self, consumer: &str, delay_ms: u64) -> Result<String, StoreError> {
        let name = self.retry_name(consumer, delay_ms);
        let known = self
            .retry_queues
            .lock()
            .expect("retry queues poisoned")
            .get(consumer)
            .is_some_and(|s| s.contains(&delay_ms));
        if !known {
            let mut arguments = FieldTable::default();
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay_ms as i64));
            arguments.insert("x-dead-letter-exchange".into(), text(""));
            arguments.insert("x-dead-letter-routing-key".into(), text(&self.queue_name(consumer)));
            self.link()
                .await?
                .publisher
                .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), arguments)
                .await
                .map_err(unavailable)?;
            self.retry_queues
                .lock()
                .expect("retry queues poisoned")
                .entry(consumer.to_owned())
                .or_default()
                .insert(delay_ms);
        }
        Ok(name)
    }
}

#[async_trait]
impl EventQueue for RabbitEventQueue {
    async fn subscribe(&self, consumer: &str) -> Result<(), StoreError> {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), text("quorum"));
        // The broker dead-letters a message returned *more* times than the limit, i.e. after
        // limit + 1 deliveries: 4 here is 5 deliveries at most.
        arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(i64::from(MAX_DELIVERIES - 1)));
        arguments.insert("x-dead-letter-exchange".into(), text(&self.dlx()));
        let name = self.queue_name(consumer);
        let link = self.link().await?;
        link.publisher
            .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), arguments)
            .await
            .map_err(unavailable)?;
        link.publisher
            .queue_bind(
                name.into(),
                self.exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, consumer: &str) -> Result<(), StoreError> {
        if let Some(subscriber) = self.subscribers.lock().await.remove(consumer) {
            let _ = subscriber.channel.close(200, "unsubscribed".into()).await;
        }
        let delays =
            self.retry_queues.lock().expect("retry queues poisoned").remove(consumer).unwrap_or_default();
        let link = self.link().await?;
        for delay in delays {
            link.publisher
                .queue_delete(self.retry_name(consumer, delay).into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        link.publisher
            .queue_delete(self.queue_name(consumer).into(), QueueDeleteOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        // Batched confirms: every publish goes out, then one wait for all their acks.
        let link = self.link().await?;
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_vec(event).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
            let properties = self
                .properties(FieldTable::default())
                .with_message_id(ShortString::from(event.event_id.clone()));
            let confirm = link
                .publisher
                .basic_publish(
                    self.exchange().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(unavailable)?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if !confirm.await.map_err(unavailable)?.is_ack() {
                return Err(StoreError::Unavailable("the broker refused a published event (nack)".into()));
            }
        }
        Ok(())
    }

    async fn receive(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, StoreError> {
        let subscriber = self.subscriber(consumer).await?;
        let messages = match Self::take(&subscriber, max, wait).await {
            Ok(messages) => messages,
            Err(error) => {
                // What the lost channel held goes back to the queue; the next receive opens a
                // fresh one (on a fresh connection if that was lost too).
                self.drop_subscriber(consumer, &subscriber).await;
                return Err(error);
            }
        };
        let mut batch = Vec::new();
        for message in messages {
            if let Some(theirs) = self.foreign(&message) {
                self.refuse(consumer, &subscriber, message, &theirs).await?;
                continue;
            }
            batch.push(Self::to_delivery(consumer, &subscriber, message)?);
        }
        Ok(batch)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let (subscriber, tag) = self.holder(delivery).await?;
        subscriber.first_failures.lock().expect("first failures poisoned").remove(&tag);
        subscriber.channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(unavailable)
    }

    async fn nack(&self, delivery: &Delivery, reason: &str, delay: Duration) -> Result<(), StoreError> {
        // A delivery whose channel is lost is back in its queue already: no copy on top of it.
        let (subscriber, tag) = self.holder(delivery).await?;
        let first_failure = subscriber
            .first_failures
            .lock()
            .expect("first failures poisoned")
            .remove(&tag)
            .flatten()
            .unwrap_or_else(now_iso);
        let body =
            serde_json::to_vec(&delivery.event).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        let mut headers = FieldTable::default();
        headers.insert("x-nexus-first-failure".into(), text(&first_failure));
        if delivery.attempt >= MAX_DELIVERIES {
            headers.insert(
                "x-nexus-dlq-id".into(),
                text(&format!("{}.{}", delivery.event.event_id, delivery.consumer)),
            );
            headers.insert("x-nexus-consumer".into(), text(&delivery.consumer));
            headers.insert("x-nexus-reason".into(), text(reason));
            headers.insert("x-nexus-retry-count".into(), AMQPValue::LongLongInt(i64::from(delivery.attempt)));
            headers.insert("x-nexus-last-failure".into(), text(&now_iso()));
            self.publish_confirmed(&self.dlx(), "", &body, self.properties(headers)).await?;
        } else {
            let delay_ms = delay.as_millis().max(1) as u64;
            let retry_queue = self.ensure_retry_queue(&delivery.consumer, delay_ms).await?;
            headers.insert("x-nexus-attempts".into(), AMQPValue::LongLongInt(i64::from(delivery.attempt)));
            self.publish_confirmed("", &retry_queue, &body, self.properties(headers)).await?;
        }
        // The copy is confirmed: only now let go of the original (at-least-once).
        subscriber.channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(unavailable)
    }

    async fn dead_letter(&self, consumer: &str, event: &DomainEvent, reason: &str) -> Result<(), StoreError> {
        let body = serde_json::to_vec(event).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
        let now = now_iso();
        let mut headers = FieldTable::default();
        headers.insert("x-nexus-dlq-id".into(), text(&format!("{}.{consumer}", event.event_id)));
        headers.insert("x-nexus-consumer".into(), text(consumer));
        headers.insert("x-nexus-reason".into(), text(reason));
        headers.insert("x-nexus-retry-count".into(), AMQPValue::LongLongInt(0));
        headers.insert("x-nexus-first-failure".into(), text(&now));
        headers.insert("x-nexus-last-failure".into(), text(&now));
        self.publish_confirmed(&self.dlx(), "", &body, self.properties(headers)).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let _only_one = self.dlq.lock().await;
        let channel = self.link().await?.connection.create_channel().await.map_err(unavailable)?;
        let browsed = self.browse(&channel).await;
        let _ = channel.close(200, "browsed".into()).await;
        Ok(browsed?.into_iter().take(limit).map(|(_, letter, _)| letter).collect())
    }

    async fn retry(&self, id: &str) -> Result<bool, StoreError> {
        self.settle_one(id, true).await
    }

    async fn skip(&self, id: &str) -> Result<bool, StoreError> {
        self.settle_one(id, false).await
    }

    /// The connection is up, or comes back now (declaring the namespace again).
    async fn ping(&self) -> Result<(), StoreError> {
        self.link().await.map(|_| ())
    }
}
