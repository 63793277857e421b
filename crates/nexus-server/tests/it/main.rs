//! The server's integration tests, one binary: each module tests one part of the API over real
//! HTTP and WebSocket against servers on port 0 (`support`). One binary links the server once,
//! where a binary per file linked it ten times.

mod support;

mod api;
mod auth;
mod customers;
mod hardening_auth;
mod hardening_connections;
mod hardening_input;
mod hardening_limits;
mod hardening_ws;
mod identity;
mod openapi;
mod proxies;
mod rate_limits;
mod read_side;
mod sagas;
mod schemas;
mod tls;
mod webhooks;
mod webhooks_any;
mod websocket_limits;
