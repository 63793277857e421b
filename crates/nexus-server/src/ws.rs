//! `GET /api/subscriptions`: push notifications of projection updates over WebSocket.
//!
//! Each connection holds its own set of aggregate ids and its own receiver of the notifier's
//! broadcast; a slow connection lags (and is told how many it missed), it never slows the
//! projection or other clients.
//!
//! What one connection may cost is bounded: a client message (and each frame) is at most
//! `[limits] ws-max-message-bytes`, a larger one closes the connection (close code 1009) before
//! it is read; and a connection follows at most `[limits] ws-subscriptions-per-connection`
//! aggregate ids, a `subscribe` that would pass it is refused as a whole with an `error` message
//! and the connection stays open.
//!
//! A connection opened with a JWT lives no longer than the token: at its `exp` the server closes
//! it (close code 1008, policy violation, reason "token expired"); the client reconnects with a
//! fresh token. API keys do not expire.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::auth::{Client, CredentialExpiry};
use crate::error::ApiError;

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    client: Option<axum::Extension<Client>>,
    expiry: Option<axum::Extension<CredentialExpiry>>,
    ws: WebSocketUpgrade,
) -> Response {
    let expires = expiry.map(|e| e.0.instant());
    let client = client.map_or_else(|| Client::peer(peer), |c| c.0);
    let Some(slot) = state.subscriptions.connect(client.clone()) else {
        let limit = state.config.limits.ws_connections_per_client;
        metrics::counter!("nexus_throttled_requests_total", "class" => "WebSocketConnections").increment(1);
        return ApiError::TooManyConnections { limit }.into_response();
    };
    let max_bytes = state.config.limits.ws_max_message_bytes;
    ws.max_message_size(max_bytes)
        .max_frame_size(max_bytes)
        .on_upgrade(move |socket| serve(socket, state, client, slot, expires))
}

/// Per-client WebSocket limits (contract §5): connections open, and notifications per second
/// across all of a client's connections.
pub(crate) struct Subscriptions {
    connections: std::sync::Mutex<HashMap<Client, u32>>,
    max_connections: u32,
    notifications: governor::DefaultKeyedRateLimiter<Client>,
}

/// Holds one of a client's connection slots; gives it back when the connection ends.
pub(crate) struct Slot {
    subscriptions: std::sync::Arc<Subscriptions>,
    client: Client,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self.subscriptions.connections.lock().expect("connection table poisoned");
        if let Some(count) = connections.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                connections.remove(&self.client);
            }
        }
    }
}

impl Subscriptions {
    pub(crate) fn new(max_connections: u32, notifications_per_second: u32) -> std::sync::Arc<Self> {
        let rate = std::num::NonZeroU32::new(notifications_per_second.max(1)).expect("at least 1");
        std::sync::Arc::new(Self {
            connections: std::sync::Mutex::new(HashMap::new()),
            max_connections,
            notifications: governor::RateLimiter::keyed(governor::Quota::per_second(rate)),
        })
    }

    fn connect(self: &std::sync::Arc<Self>, client: Client) -> Option<Slot> {
        let mut connections = self.connections.lock().expect("connection table poisoned");
        let count = connections.entry(client.clone()).or_insert(0);
        if *count >= self.max_connections {
            return None;
        }
        *count += 1;
        Some(Slot { subscriptions: self.clone(), client })
    }

    pub(crate) fn retain_recent(&self) {
        self.notifications.retain_recent();
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    #[serde(rename_all = "camelCase")]
    Subscribe { aggregate_ids: Vec<String> },
    #[serde(rename_all = "camelCase")]
    Unsubscribe { aggregate_ids: Vec<String> },
}

async fn serve(
    mut socket: WebSocket,
    state: AppState,
    client: Client,
    _slot: Slot,
    expires: Option<tokio::time::Instant>,
) {
    let mut updates = state.notifier.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut subscribed: HashSet<String> = HashSet::new();
    let max_subscriptions = state.config.limits.ws_subscriptions_per_connection as usize;
    // Notifications over the client's rate are dropped and counted; the count is reported as
    // soon as sending is allowed again (at the latest a second later).
    let mut dropped: u64 = 0;
    let mut report = tokio::time::interval(std::time::Duration::from_secs(1));
    let expired = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        let outgoing = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => answer(&text, &mut subscribed, max_subscriptions),
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "WebSocket read failed; closing");
                    // A message or frame over `ws-max-message-bytes` is refused by its header,
                    // before its payload is read (tungstenite's "Message too long"); the client
                    // is told why. Any other read error is a broken connection.
                    if !error.to_string().contains("too long") {
                        break;
                    }
                    metrics::counter!("nexus_throttled_requests_total", "class" => "WebSocketMessageSize")
                        .increment(1);
                    let limit = state.config.limits.ws_max_message_bytes;
                    let reason = format!("messages are limited to {limit} bytes");
                    let frame = CloseFrame { code: close_code::SIZE, reason: reason.into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                Some(Ok(_)) => continue, // pings are answered by the protocol layer
            },
            _ = report.tick(), if dropped > 0 => {
                if state.subscriptions.notifications.check_key(&client).is_err() {
                    continue;
                }
                let rate = state.config.limits.ws_notifications_per_second;
                json!({"type": "lagged", "missed": std::mem::take(&mut dropped),
                       "message": format!("notifications over {rate}/s were dropped; re-read the documents you follow")})
            },
            update = updates.recv() => match update {
                Ok(update) if subscribed.contains(&update.aggregate_id) => {
                    if state.subscriptions.notifications.check_key(&client).is_err() {
                        dropped += 1;
                        metrics::counter!("nexus_ws_notifications_dropped_total").increment(1);
                        continue;
                    }
                    json!({
                    "type": "projection_updated",
                    "resourceType": update.resource,
                    "aggregateId": update.aggregate_id,
                    "version": update.version,
                    "eventId": update.event_id,
                    "timestamp": update.timestamp,
                    })
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => json!({
                    "type": "lagged",
                    "missed": missed,
                    "message": "notifications were dropped; re-read the documents you follow",
                }),
                Err(RecvError::Closed) => break,
            },
            _ = shutdown.changed() => break,
            () = &mut expired => {
                tracing::debug!(client = client.0, "WebSocket credential expired; closing");
                let frame = CloseFrame { code: close_code::POLICY, reason: "token expired".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            },
        };
        if socket.send(Message::Text(outgoing.to_string().into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

fn answer(text: &str, subscribed: &mut HashSet<String>, max_subscriptions: usize) -> Value {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { aggregate_ids }) => {
            let new: HashSet<&String> = aggregate_ids.iter().filter(|id| !subscribed.contains(*id)).collect();
            if subscribed.len() + new.len() > max_subscriptions {
                metrics::counter!("nexus_throttled_requests_total", "class" => "WebSocketSubscriptions")
                    .increment(1);
                return json!({
                    "type": "error",
                    "code": "VALIDATION_ERROR",
                    "message": format!(
                        "a connection follows at most {max_subscriptions} aggregate ids: this one follows {} \
                         and the subscribe adds {}; nothing was subscribed (unsubscribe some first, or \
                         use another connection)",
                        subscribed.len(),
                        new.len()
                    ),
                });
            }
            subscribed.extend(aggregate_ids.iter().cloned());
            json!({"type": "subscribed", "aggregateIds": aggregate_ids})
        }
        Ok(ClientMessage::Unsubscribe { aggregate_ids }) => {
            for id in &aggregate_ids {
                subscribed.remove(id);
            }
            json!({"type": "unsubscribed", "aggregateIds": aggregate_ids})
        }
        Err(e) => json!({
            "type": "error",
            "code": "VALIDATION_ERROR",
            "message": format!("expected {{\"type\": \"subscribe\"|\"unsubscribe\", \"aggregateIds\": [...]}}: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(ids: &[&str]) -> String {
        json!({"type": "subscribe", "aggregateIds": ids}).to_string()
    }

    #[test]
    fn subscriptions_per_connection_are_bounded_counting_distinct_new_ids() {
        let mut subscribed = HashSet::new();
        assert_eq!(answer(&subscribe(&["a", "b"]), &mut subscribed, 3)["type"], "subscribed");
        // Ids already followed, and repeats within one message, count once.
        assert_eq!(answer(&subscribe(&["a", "b", "c", "c"]), &mut subscribed, 3)["type"], "subscribed");
        assert_eq!(subscribed.len(), 3);
        // One more is refused as a whole: nothing of it is subscribed.
        let refused = answer(&subscribe(&["a", "d"]), &mut subscribed, 3);
        assert_eq!(
            (refused["type"].as_str(), refused["code"].as_str()),
            (Some("error"), Some("VALIDATION_ERROR"))
        );
        assert!(refused["message"].as_str().unwrap().contains("at most 3"), "{refused}");
        assert_eq!(subscribed.len(), 3);
        assert!(!subscribed.contains("d"));
        // Unsubscribing makes room again.
        let unsubscribe = json!({"type": "unsubscribe", "aggregateIds": ["a"]}).to_string();
        assert_eq!(answer(&unsubscribe, &mut subscribed, 3)["type"], "unsubscribed");
        assert_eq!(answer(&subscribe(&["d"]), &mut subscribed, 3)["type"], "subscribed");
    }
}
