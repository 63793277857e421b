//! Per-client rate limits (contract §5): GCRA buckets per client and endpoint class.
//!
//! The client is the credential's subject when auth is on, else the peer address
//! ([`Client`]). A limit of 0 turns a class off (and the policy check then refuses a temporal
//! endpoint without its limit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

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
    match limiter.check_key(&Client::of(request.extensions(), peer).0) {
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
