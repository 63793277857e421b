//! The core path on NATS JetStream (`NEXUS_STREAM_URL=nats://…`), behind the `EventStream` port.
//!
//! One stream `{name}` with subjects `{name}.p.{partition}`; an event goes to the partition of its
//! aggregate id (`partition_of`), so one aggregate's events keep their order. Retention is 24 h
//! (the seed's Kinesis retention); the event store stays the source of truth (JetStream acks a
//! publish before syncing it to disk). Publishes carry `Nats-Msg-Id` = event id, so the server
//! drops a republish within the duplicate window (a router restarted from an older checkpoint
//! duplicates nothing). Publishes are pipelined: all sent, then all acks awaited.
//!
//! Each reader has one durable pull consumer per partition, `{reader}-p{partition}`, with a single
//! `filter_subject` (the local NATS server is 2.9.10, which ignores the plural `filter_subjects`)
//! and `AckPolicy::Explicit`: [`ack`](EventStream::ack) of a sequence acknowledges each message
//! this process fetched up to it, one by one, and nothing another process holds. Several
//! processes may share a durable consumer (two query processes): what one of them fetched and
//! did not acknowledge, because it died, goes to another after the ack wait (2 s; a living reader
//! keeps what it holds with progress acknowledgements), so a dead
//! reader delays its events by seconds and loses none. (With `AckPolicy::All`, the survivor's
//! next acknowledgement also acknowledged what the dead one held, and those events were lost.)
//!
//! Owned by one event store ([`NatsEventStream::connect_for_store`]): the stream records its
//! store's id in its description when it creates the stream, and refuses to attach to a stream
//! another store created; every publish carries the id (header `Nexus-Store`), and a fetched
//! message of another store is refused: never handed to a reader, logged, counted in
//! `nexus_foreign_events_total{path="stream"}`, and acknowledged (the core path has no dead-letter
//! queue; the event stays in its own store).
//!
//! TLS (`tls://host:port`, or a `nats://` server that requires it) is rustls with *ring*;
//! [`connect_for_store_with_roots`](NatsEventStream::connect_for_store_with_roots) takes the trust
//! roots from the caller (the server passes the platform's and `SSL_CERT_FILE`'s), so this crate
//! reads no environment itself.
//!
//! Architecture invariant: no domain knowledge; errors collapse into `StoreError::Unavailable`
//! or `Corrupt`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use nexus_core::ports::{EventStream, StreamEvent, partition_of};
use nexus_core::{DomainEvent, StoreError};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// A connection that failed, naming the server (the NATS client's own error does not).
#[derive(Debug)]
struct ConnectError {
    server: String,
    source: async_nats::ConnectError,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot connect to NATS at {}: {}", self.server, self.source)?;
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
                        " (the server's certificate does not name the host of the URL)"
                    }
                    rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                        " (the server's certificate is not signed by a trusted root)"
                    }
                    _ => " (the server's certificate is refused)",
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

/// `url` without a `user:password@` (errors are logged).
fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|server| match (server.find("://"), server.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{}", &server[..scheme + 3], &server[at + 1..])
            }
            (None, Some(at)) => server[at + 1..].to_owned(),
            _ => server.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The client's TLS: `roots` only, rustls with *ring* (the binary's one provider, passed here
/// rather than installed process-wide).
fn tls_config(roots: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, StoreError> {
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(roots.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(store)
        .with_no_client_auth())
}

/// How long an unacknowledged fetch stays with its reader before JetStream redelivers it: how
/// long the events a dead reader held wait for another. A living reader's fetched messages are
/// kept from it by progress acknowledgements (`AckKind::Progress`) every third of it, however
/// long their batch takes to apply.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// How long a pull request for what is there now may go unanswered.
const FETCH_EXPIRES: Duration = Duration::from_secs(2);

/// Fetched, unacknowledged messages by reader and partition, by stream sequence.
type PendingMessages = Arc<Mutex<HashMap<(String, u32), BTreeMap<u64, Message>>>>;

/// The header naming the store an event was published from.
const STORE_HEADER: &str = "Nexus-Store";

/// JetStream core path.
pub struct NatsEventStream {
    jetstream: jetstream::Context,
    name: String,
    partitions: u32,
    ack_wait: Duration,
    consumers: Mutex<HashMap<(String, u32), PullConsumer>>,
    pending: PendingMessages,
    /// Sends the progress acknowledgements; stops with the stream.
    keep_alive: tokio::task::JoinHandle<()>,
    /// The store whose events this stream carries; `None`: not checked (tools, tests).
    store_id: Option<String>,
}

impl NatsEventStream {
    /// Connects and creates the stream `name` (letters, digits, `-`, `_`) if it does not exist,
    /// owned by no store: nothing is checked (tools and tests).
    pub async fn connect(url: &str, name: &str, partitions: u32) -> Result<Self, StoreError> {
        Self::open(url, name, partitions, ACK_WAIT, None, None).await
    }

    /// As [`connect`](Self::connect), for the events of store `store_id`: refuses a stream that
    /// another store created, stamps every publish with the id and refuses fetched events of
    /// another store.
    pub async fn connect_for_store(
        url: &str,
        name: &str,
        partitions: u32,
        store_id: &str,
    ) -> Result<Self, StoreError> {
        Self::open(url, name, partitions, ACK_WAIT, Some(store_id.to_owned()), None).await
    }

    /// As [`connect_for_store`](Self::connect_for_store), trusting exactly `roots` to sign the
    /// server's certificate when the connection is TLS (without, the NATS client's default: the
    /// platform's roots).
    pub async fn connect_for_store_with_roots(
        url: &str,
        name: &str,
        partitions: u32,
        store_id: &str,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, StoreError> {
        Self::open(url, name, partitions, ACK_WAIT, Some(store_id.to_owned()), Some(roots)).await
    }

    /// As [`connect`](Self::connect), with another redelivery timeout for unacknowledged fetches.
    pub async fn connect_with_ack_wait(
        url: &str,
        name: &str,
        partitions: u32,
        ack_wait: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(url, name, partitions, ack_wait, None, None).await
    }

    async fn open(
        url: &str,
        name: &str,
        partitions: u32,
        ack_wait: Duration,
        store_id: Option<String>,
        roots: Option<&[CertificateDer<'static>]>,
    ) -> Result<Self, StoreError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(roots) = roots {
            options = options.tls_client_config(tls_config(roots)?);
        }
        let client = options
            .connect(url)
            .await
            .map_err(|source| unavailable(ConnectError { server: without_credentials(url), source }))?;
        let jetstream = jetstream::new(client);
        let owner = store_id.as_ref().map(|id| format!("nexus store {id}"));
        let mut stream = jetstream
            .get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{name}.p.*")],
                max_age: Duration::from_secs(24 * 3600),
                duplicate_window: Duration::from_secs(120),
                storage: stream::StorageType::File,
                description: owner.clone(),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let info = stream.info().await.map_err(unavailable)?;
        if let (Some(owner), Some(found)) = (&owner, &info.config.description)
            && found.starts_with("nexus store ")
            && found != owner
        {
            return Err(StoreError::InvalidRequest(format!(
                "the NATS stream '{name}' belongs to another store ({found}; this one is {owner}): two \
                 deployments must not share a stream. Leave [stream] name unset (it then derives from the \
                 service and its store) or give each deployment a name of its own"
            )));
        }
        let pending = PendingMessages::default();
        let keep_alive = tokio::spawn(keep_alive(pending.clone(), ack_wait / 3));
        Ok(Self {
            jetstream,
            name: name.to_owned(),
            partitions: partitions.max(1),
            ack_wait,
            consumers: Mutex::default(),
            pending,
            keep_alive,
            store_id,
        })
    }

    /// Whether `message` was published by another store than this stream's.
    fn is_foreign(&self, message: &Message) -> Option<String> {
        let own = self.store_id.as_deref()?;
        let theirs = message.headers.as_ref().and_then(|h| h.get(STORE_HEADER)).map(|v| v.as_str());
        (theirs != Some(own)).then(|| theirs.unwrap_or("none").to_owned())
    }

    /// Deletes the stream and its consumers (tests, decommissioning).
    pub async fn destroy(&self) -> Result<(), StoreError> {
        self.jetstream.delete_stream(&self.name).await.map_err(unavailable)?;
        Ok(())
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.p.{partition}", self.name)
    }

    async fn consumer(&self, reader: &str, partition: u32) -> Result<PullConsumer, StoreError> {
        let key = (reader.to_owned(), partition);
        let mut consumers = self.consumers.lock().await;
        if let Some(consumer) = consumers.get(&key) {
            return Ok(consumer.clone());
        }
        let durable = format!("{reader}-p{partition}");
        let stream = self.jetstream.get_stream(&self.name).await.map_err(unavailable)?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: self.subject(partition),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        consumers.insert(key, consumer.clone());
        Ok(consumer)
    }

    fn to_event(partition: u32, message: &Message) -> Result<StreamEvent, StoreError> {
        let info =
            message.info().map_err(|e| StoreError::Corrupt(format!("not a JetStream message: {e}")))?;
        let event: DomainEvent = serde_json::from_slice(&message.payload)
            .map_err(|e| StoreError::Corrupt(format!("stream message is not an event: {e}")))?;
        Ok(StreamEvent { partition, sequence: info.stream_sequence, event })
    }
}

impl Drop for NatsEventStream {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Tells JetStream every `every` that the fetched messages not yet acknowledged are still being
/// worked on, so they stay with this process until it acknowledges them or dies.
async fn keep_alive(pending: PendingMessages, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let held: Vec<Message> =
            pending.lock().await.values().flat_map(|slot| slot.values().cloned()).collect();
        for message in held {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "progress acknowledgement failed; the message may be redelivered");
            }
        }
    }
}

#[async_trait]
impl EventStream for NatsEventStream {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn publish(&self, events: &[DomainEvent]) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_vec(event).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.as_str());
            if let Some(store) = &self.store_id {
                headers.insert(STORE_HEADER, store.as_str());
            }
            let subject = self.subject(partition_of(&event.aggregate_id, self.partitions));
            let ack = self
                .jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(unavailable)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        reader: &str,
        partition: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        // What this process fetched and has not acknowledged (its batch failed) comes first,
        // again: acknowledging a later one must not acknowledge these unapplied.
        let mut events: Vec<StreamEvent> = {
            let pending = self.pending.lock().await;
            match pending.get(&(reader.to_owned(), partition)) {
                Some(slot) => slot
                    .values()
                    .take(max)
                    .map(|message| Self::to_event(partition, message))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            }
        };
        if !events.is_empty() {
            return Ok(events);
        }
        let consumer = self.consumer(reader, partition).await?;
        let mut messages = Vec::new();
        // What is there now; when nothing, wait for the first one, then take what followed it.
        // Every pull request expires: one the server never answers (it died with the request
        // in flight) would otherwise leave this reader waiting for ever.
        let mut ready = consumer
            .fetch()
            .max_messages(max)
            .expires(FETCH_EXPIRES)
            .messages()
            .await
            .map_err(unavailable)?;
        while let Some(message) = ready.next().await {
            messages.push(message.map_err(StoreError::Unavailable)?);
        }
        if messages.is_empty() && !wait.is_zero() {
            let mut first = consumer
                .batch()
                .max_messages(1)
                .expires(wait.max(Duration::from_millis(10)))
                .messages()
                .await
                .map_err(unavailable)?;
            while let Some(message) = first.next().await {
                messages.push(message.map_err(StoreError::Unavailable)?);
            }
            if !messages.is_empty() && max > 1 {
                let mut rest = consumer
                    .fetch()
                    .max_messages(max - 1)
                    .expires(FETCH_EXPIRES)
                    .messages()
                    .await
                    .map_err(unavailable)?;
                while let Some(message) = rest.next().await {
                    messages.push(message.map_err(StoreError::Unavailable)?);
                }
            }
        }
        events.reserve(messages.len());
        let mut refused = Vec::new();
        let mut pending = self.pending.lock().await;
        let slot = pending.entry((reader.to_owned(), partition)).or_default();
        for message in messages {
            let foreign = self.is_foreign(&message);
            let event = Self::to_event(partition, &message)?;
            if let Some(theirs) = &foreign {
                tracing::error!(
                    stream = %self.name, reader, partition, sequence = event.sequence, event_id = %event.event.event_id,
                    from_store = %theirs, "refused an event of another store; it is not applied"
                );
                metrics::counter!("nexus_foreign_events_total", "path" => "stream").increment(1);
                refused.push(message);
            } else {
                slot.insert(event.sequence, message);
                events.push(event);
            }
        }
        drop(pending);
        // Acknowledged at once: nobody applies them, and they must not come back.
        for message in refused {
            message.ack().await.map_err(StoreError::Unavailable)?;
        }
        Ok(events)
    }

    async fn ack(&self, reader: &str, partition: u32, sequence: u64) -> Result<(), StoreError> {
        let acknowledged = {
            let mut pending = self.pending.lock().await;
            let Some(slot) = pending.get_mut(&(reader.to_owned(), partition)) else { return Ok(()) };
            let rest = slot.split_off(&(sequence + 1));
            std::mem::replace(slot, rest)
        };
        for message in acknowledged.into_values() {
            message.ack().await.map_err(StoreError::Unavailable)?;
        }
        Ok(())
    }

    async fn backlog(&self, reader: &str, partition: u32) -> Result<u64, StoreError> {
        let info = self.consumer(reader, partition).await?.get_info().await.map_err(unavailable)?;
        // Not yet delivered, plus delivered and not acknowledged.
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.jetstream.get_stream(&self.name).await.map_err(unavailable)?;
        Ok(())
    }
}
