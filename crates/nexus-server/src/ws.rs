//! `GET /api/subscriptions`: push notifications of projection updates over WebSocket.
//!
//! Each connection holds its own set of aggregate ids and its own receiver of the notifier's
//! broadcast; a slow connection lags (and is told how many it missed), it never slows the
//! projection or other clients.

use std::collections::HashSet;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;

pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| serve(socket, state))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    #[serde(rename_all = "camelCase")]
    Subscribe { aggregate_ids: Vec<String> },
    #[serde(rename_all = "camelCase")]
    Unsubscribe { aggregate_ids: Vec<String> },
}

async fn serve(mut socket: WebSocket, state: AppState) {
    let mut updates = state.notifier.subscribe();
    let mut shutdown = state.shutdown.clone();
    let mut subscribed: HashSet<String> = HashSet::new();
    loop {
        let outgoing = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => answer(&text, &mut subscribed),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue, // pings are answered by the protocol layer
            },
            update = updates.recv() => match update {
                Ok(update) if subscribed.contains(&update.aggregate_id) => json!({
                    "type": "projection_updated",
                    "resourceType": update.resource,
                    "aggregateId": update.aggregate_id,
                    "version": update.version,
                    "eventId": update.event_id,
                    "timestamp": update.timestamp,
                }),
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => json!({
                    "type": "lagged",
                    "missed": missed,
                    "message": "notifications were dropped; re-read the documents you follow",
                }),
                Err(RecvError::Closed) => break,
            },
            _ = shutdown.changed() => break,
        };
        if socket.send(Message::Text(outgoing.to_string().into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

fn answer(text: &str, subscribed: &mut HashSet<String>) -> Value {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { aggregate_ids }) => {
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
