//! Per-client rate limits (contract §5): GCRA buckets per client and endpoint class.
//!
//! The client is the credential's subject when auth is on, else the client address: the peer's,
//! or behind a trusted proxy the one it forwards for ([`Client`], [`client_addr`]). A limit of 0
//! turns a class off (and the policy check then refuses a temporal endpoint without its limit).
//!
//! Failed credentials are throttled apart, per client address ([`AuthFailures`]): a guesser has
//! no subject, and must not be able to try keys or tokens as fast as the server answers.
//!
//! [`client_addr`]: crate::client_addr::client_addr

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::AppState;
use crate::auth::Client;
use crate::config::RateLimitConfig;
use crate::error::ApiError;

type Limiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// Endpoint classes that share a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RateClass {
    /// Lists and one aggregate's events: 1000/min.
    List,
    /// Full-text search: 100/min.
    Search,
    /// Temporal queries and event time ranges: 10/min.
    Temporal,
    /// Commands, sagas started, raw event imports: open unless configured.
    Commands,
    /// One document, a saga's status, WebSocket upgrades: open unless configured.
    Reads,
    /// The schema registry: open unless configured.
    Registry,
    /// `/api/admin/*` and `/metrics`: open unless configured.
    Admin,
}

pub(crate) struct RateLimits {
    limiters: HashMap<RateClass, (u32, Limiter)>,
    window: Duration,
    clock: DefaultClock,
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitConfig) -> Self {
        let window = Duration::from_secs(config.window_secs);
        let mut limiters = HashMap::new();
        for (class, limit) in [
            (RateClass::List, config.list_per_window),
            (RateClass::Search, config.search_per_window),
            (RateClass::Temporal, config.temporal_per_window),
            (RateClass::Commands, config.commands_per_window),
            (RateClass::Reads, config.reads_per_window),
            (RateClass::Registry, config.registry_per_window),
            (RateClass::Admin, config.admin_per_window),
        ] {
            if let Some(burst) = NonZeroU32::new(limit) {
                // `limit` requests at once, then one more every window/limit: never more than
                // `limit` in any window.
                let quota = Quota::with_period(window / limit).expect("non-zero period").allow_burst(burst);
                limiters.insert(class, (limit, RateLimiter::keyed(quota).with_middleware()));
            }
        }
        Self { limiters, window, clock: DefaultClock::default() }
    }

    /// Requests per minute allowed for `class`, `None` when unlimited (for the service graph).
    pub(crate) fn per_minute(&self, class: RateClass) -> Option<u32> {
        self.limiters.get(&class).map(|(limit, _)| {
            (*limit as u64 * 60 / self.window.as_secs().max(1)).try_into().unwrap_or(u32::MAX)
        })
    }

    /// Forgets clients that are back to a full bucket, so the table does not grow forever.
    pub(crate) fn retain_recent(&self) {
        for (_, limiter) in self.limiters.values() {
            limiter.retain_recent();
        }
    }
}

/// The middleware: admits or answers 429 with `Retry-After` and `RateLimit-*` headers.
pub(crate) async fn enforce(
    State((state, class)): State<(AppState, RateClass)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let limits = &state.rate_limits;
    let Some((limit, limiter)) = limits.limiters.get(&class) else {
        return next.run(request).await;
    };
    match limiter.check_key(&Client::of(&request, peer, &state.config.server.trusted_proxies).0) {
        Ok(snapshot) => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(*limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(snapshot.remaining_burst_capacity()));
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(limits.clock.now());
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            metrics::counter!("nexus_throttled_requests_total", "class" => format!("{class:?}")).increment(1);
            let mut response = ApiError::RateLimited { limit: *limit, retry_after }.into_response();
            let headers = response.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(*limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0));
            headers.insert("ratelimit-reset", HeaderValue::from(retry_after));
            response
        }
    }
}

/// Failed credentials per client address (`[auth] failures-per-minute`): once one has sent
/// `limit` credentials that do not verify within a window (counted from its first failure), every
/// request of its that carries a credential is refused with 429 until the window is over, without
/// being checked, so that a good guess cannot be told from a bad one. Valid credentials are never
/// counted. IPv6 addresses count per /64, the block one host usually holds. A limit of 0 turns it
/// off.
///
/// Not `governor`: its GCRA cannot tell whether a peer is over its budget without spending a
/// cell, and the check here must cost nothing to a peer whose credentials verify.
pub(crate) struct AuthFailures {
    limit: u32,
    window: Duration,
    state: Mutex<FailureTable>,
}

struct FailureTable {
    /// By peer: the start of its window and its failures in it.
    peers: HashMap<IpAddr, (Instant, u32)>,
    /// When expired windows were last dropped.
    swept: Instant,
}

impl AuthFailures {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        let state = FailureTable { peers: HashMap::new(), swept: Instant::now() };
        Self { limit, window, state: Mutex::new(state) }
    }

    /// Failures a peer may send per window (0: unlimited).
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// `Err(seconds)` while `peer` has spent its failures: how long until its window is over.
    pub(crate) fn check(&self, peer: IpAddr) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let state = self.state.lock().expect("auth failure table poisoned");
        match state.peers.get(&Self::key(peer)) {
            Some(&(start, failures)) if failures >= self.limit && now < start + self.window => {
                let wait = start + self.window - now;
                Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            _ => Ok(()),
        }
    }

    /// Counts a credential of `peer` that did not verify; `true` when this one reached the limit.
    pub(crate) fn record(&self, peer: IpAddr) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = Instant::now();
        let window = self.window;
        let mut state = self.state.lock().expect("auth failure table poisoned");
        // The table holds only peers that failed within the last window.
        if now.duration_since(state.swept) >= window {
            state.peers.retain(|_, (start, _)| now < *start + window);
            state.swept = now;
        }
        let entry = state.peers.entry(Self::key(peer)).or_insert((now, 0));
        if now >= entry.0 + window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 == self.limit
    }

    /// The address a peer is counted by: IPv4 as is, IPv6 by its /64 (IPv4-mapped as IPv4).
    fn key(peer: IpAddr) -> IpAddr {
        match peer {
            IpAddr::V4(_) => peer,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_refuse_a_peer_over_its_limit_until_its_window_is_over() {
        let failures = AuthFailures::new(3, Duration::from_millis(300));
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for n in 1..=3 {
            assert!(failures.check(peer).is_ok());
            assert_eq!(failures.record(peer), n == 3);
        }
        assert_eq!(failures.check(peer), Err(1));
        assert!(failures.check(other).is_ok());
        std::thread::sleep(Duration::from_millis(350));
        assert!(failures.check(peer).is_ok());
        // A new window starts with the next failure.
        assert!(!failures.record(peer));
        assert!(failures.check(peer).is_ok());
        // IPv6 counts per /64; off at 0.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..3 {
            failures.record(a);
        }
        assert!(failures.check(b).is_err());
        let off = AuthFailures::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            off.record(peer);
        }
        assert!(off.check(peer).is_ok());
    }
}
