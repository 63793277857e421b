//! Authentication and scopes (contract §10).
//!
//! Off by default when the server listens on loopback only; otherwise every endpoint but health
//! and the API description needs a credential: a bearer JWT (HS256 or RS256, `Authorization:
//! Bearer …`) or an API key (`X-API-Key: …`). WebSocket clients, which cannot set headers from a
//! browser, may send either as `?access_token=` on `/api/subscriptions`. A credential carries a
//! subject and scopes (`commands`, `queries`, `admin`); each scope grants only itself. The
//! subject becomes the request's [`Client`], the key of its rate limits, and its [`Subject`], the
//! `userId` of every event the request appends (contract §3: the audit trail cannot be spoofed
//! by the body). Without a credential the client is the client address (see
//! [`client_addr`](crate::client_addr), which reads `X-Forwarded-For` from trusted proxies).
//!
//! Every credential a request carries must verify: a good API key next to a bad bearer token is
//! refused, not the bad one ignored. A JWT's subject must not be blank. Credentials that do not
//! verify are counted per client address ([`AuthFailures`]); past `[auth] failures-per-minute`
//! the address's credentials are refused with 429 unchecked until its minute is over. A WebSocket
//! opened with a JWT is closed when the token expires ([`CredentialExpiry`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::client_addr::client_addr;
use crate::config::{AuthSettings, Cidr};
use crate::error::ApiError;
use crate::rate_limit::AuthFailures;

/// What a credential must allow to call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    /// No credential needed: health checks and the API description.
    Public,
    /// Sending commands and starting sagas.
    Commands,
    /// Reading: queries, events, subscriptions, saga status, schema lookups.
    Queries,
    /// Operating: projections, webhooks, the dead-letter queue, raw event imports, schema
    /// registration and compatibility settings, metrics.
    Admin,
}

impl Scope {
    /// The scope's name in credentials (`commands`, `queries`, `admin`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scope::Public => "public",
            Scope::Commands => "commands",
            Scope::Queries => "queries",
            Scope::Admin => "admin",
        }
    }
}

/// Who is calling, for rate limits and connection limits: `sub:<subject>` when authenticated,
/// else the client's IP address. [`require`] puts it in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Client(pub(crate) String);

impl Client {
    /// The client from the request's extensions, else the client address of `peer` (through
    /// the trusted proxies' `X-Forwarded-For`).
    pub(crate) fn of(request: &Request, peer: SocketAddr, trusted: &[Cidr]) -> Self {
        match request.extensions().get::<Client>() {
            Some(client) => client.clone(),
            None => Self::addr(client_addr(peer.ip(), request.headers(), trusted)),
        }
    }

    /// An unauthenticated client: its peer address (where no request headers are at hand).
    pub(crate) fn peer(peer: SocketAddr) -> Self {
        Self::addr(peer.ip())
    }

    /// An unauthenticated client: its address.
    pub(crate) fn addr(addr: IpAddr) -> Self {
        Client(addr.to_canonical().to_string())
    }
}

/// The subject of the credential that authenticated the request, in its extensions: the
/// `metadata.userId` of every event the request appends, whatever its body says (contract §3).
/// Absent when auth is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Subject(pub(crate) String);

/// An authenticated caller.
struct Principal {
    subject: String,
    scopes: Vec<String>,
    /// When the credential stops being valid (a JWT's `exp`, seconds since the epoch); API keys
    /// do not expire.
    expires: Option<u64>,
}

/// When the request's credential expires (a JWT's `exp`, seconds since the epoch), in the
/// request's extensions: a WebSocket opened with it is closed then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CredentialExpiry(pub(crate) u64);

impl CredentialExpiry {
    /// The moment of expiry on the runtime's clock (now, when already past).
    pub(crate) fn instant(self) -> tokio::time::Instant {
        let at = UNIX_EPOCH + Duration::from_secs(self.0);
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required by the validation; read for WebSocket expiry.
    #[serde(default)]
    exp: Option<u64>,
    /// OAuth 2 style: space-separated.
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// Checks credentials against the configured keys.
pub(crate) struct Authenticator {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// By the key's SHA-256 (hex): subject and scopes.
    api_keys: HashMap<String, (String, Vec<String>)>,
    /// Credentials that did not verify, per client address.
    failures: AuthFailures,
}

impl Authenticator {
    /// The configuration was validated when loaded; a key that still does not parse is an error.
    pub(crate) fn new(settings: &AuthSettings) -> Result<Self, String> {
        let rs256 = match &settings.jwt_rs256_public_key {
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Self {
            hs256: settings.jwt_hs256_secret.as_ref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            rs256,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            api_keys: settings
                .api_keys
                .iter()
                .map(|k| (k.key_sha256.to_ascii_lowercase(), (k.subject.clone(), k.scopes.clone())))
                .collect(),
            failures: AuthFailures::new(settings.failures_per_minute, Duration::from_secs(60)),
        })
    }

    /// Whether the request carries any credential (a header or, on the WebSocket, the query).
    fn presents_credential(headers: &HeaderMap, access_token: Option<&str>) -> bool {
        headers.contains_key("x-api-key")
            || headers.contains_key(axum::http::header::AUTHORIZATION)
            || access_token.is_some()
    }

    /// Checks every credential the request carries; all must verify. The first one (in the order
    /// `X-API-Key`, `Authorization`, `?access_token=`) is the caller; the request expires with
    /// the first of them to expire.
    fn authenticate(&self, headers: &HeaderMap, access_token: Option<&str>) -> Result<Principal, ApiError> {
        let mut checked: Vec<(&str, Result<Principal, ApiError>)> = Vec::new();
        if let Some(key) = headers.get("x-api-key") {
            let principal = match key.to_str() {
                Ok(key) => self.api_key(key),
                Err(_) => Err(unauthenticated("the X-API-Key header is not text")),
            };
            checked.push(("the X-API-Key header", principal));
        }
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let principal = match value.to_str() {
                Err(_) => Err(unauthenticated("the Authorization header is not text")),
                // The scheme name is case-insensitive (RFC 9110).
                Ok(value) => {
                    match value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")) {
                        Some((_, token)) => self.jwt(token.trim()),
                        None => Err(unauthenticated("the Authorization header must be `Bearer <JWT>`")),
                    }
                }
            };
            checked.push(("the Authorization header", principal));
        }
        match access_token {
            Some(token) if token.split('.').count() == 3 => checked.push(("access_token", self.jwt(token))),
            Some(key) => checked.push(("access_token", self.api_key(key))),
            None => {}
        }
        if checked.is_empty() {
            return Err(unauthenticated(
                "no credential: send `Authorization: Bearer <JWT>` or `X-API-Key: <key>`",
            ));
        }
        let several = checked.len() > 1;
        let mut caller: Option<Principal> = None;
        for (source, principal) in checked {
            let principal = principal.map_err(|error| match error {
                ApiError::Unauthenticated(why) if several => unauthenticated(format!(
                    "{why} ({source}; every credential a request carries must be valid)"
                )),
                other => other,
            })?;
            match &mut caller {
                None => caller = Some(principal),
                Some(caller) => {
                    caller.expires = match (caller.expires, principal.expires) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                }
            }
        }
        Ok(caller.expect("at least one credential"))
    }

    fn api_key(&self, key: &str) -> Result<Principal, ApiError> {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let (subject, scopes) = self.api_keys.get(&hex).ok_or_else(|| unauthenticated("unknown API key"))?;
        Ok(Principal { subject: subject.clone(), scopes: scopes.clone(), expires: None })
    }

    fn jwt(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(ApiError::from)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            unauthenticated(format!("tokens signed with {:?} are not accepted here", header.alg))
        })?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(ApiError::from)?.claims;
        // The subject names the client in rate limits and logs: a blank one names nobody.
        if claims.sub.trim().is_empty() {
            return Err(unauthenticated("the token's subject (sub) is empty"));
        }
        let mut scopes: Vec<String> =
            claims.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        scopes.extend(claims.scopes.unwrap_or_default());
        Ok(Principal { subject: claims.sub, scopes, expires: claims.exp })
    }
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::Unauthenticated(message.into())
}

/// The `access_token` query parameter, accepted on WebSocket upgrades only (browsers cannot set
/// headers there; elsewhere a token in the URL would only end up in logs).
fn access_token(request: &Request) -> Option<String> {
    if request.uri().path() != "/api/subscriptions" {
        return None;
    }
    // Percent-decoded: a browser sends `encodeURIComponent(token)`.
    let axum::extract::Query(mut query) =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri())
            .ok()?;
    query.remove("access_token")
}

/// The middleware on every endpoint but the public ones. The client address (the peer, or from
/// a trusted proxy the client it forwards for) becomes the request's [`Client`]. When auth is
/// on: 401 without a valid credential, 403 without the endpoint's scope, 429 with a credential
/// from an address that has sent too many bad ones; otherwise the caller becomes the request's
/// [`Client`] and [`Subject`] (and a JWT's expiry its [`CredentialExpiry`]).
pub(crate) async fn require(
    State((state, scope)): State<(AppState, Scope)>,
    mut request: Request,
    next: Next,
) -> Response {
    // None when the server is served without connection info, as in some embeddings: then
    // nothing is throttled by address.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|peer| client_addr(peer.0.ip(), request.headers(), &state.config.server.trusted_proxies));
    if let Some(client) = client {
        request.extensions_mut().insert(Client::addr(client));
    }
    let Some(authenticator) = &state.authenticator else {
        return next.run(request).await;
    };
    let token = access_token(&request);
    // The address a credential that does not verify is counted against.
    let counted = client.filter(|_| Authenticator::presents_credential(request.headers(), token.as_deref()));
    if let Some(client) = counted
        && let Err(retry_after) = authenticator.failures.check(client)
    {
        metrics::counter!("nexus_throttled_requests_total", "class" => "AuthFailures").increment(1);
        tracing::debug!(%client, path = request.uri().path(), "credential not checked: too many failures");
        let limit = authenticator.failures.limit();
        return ApiError::RateLimited { limit, retry_after }.into_response();
    }
    let principal = match authenticator.authenticate(request.headers(), token.as_deref()) {
        Ok(principal) => principal,
        Err(error) => {
            metrics::counter!("nexus_auth_failures_total", "reason" => "unauthenticated").increment(1);
            // The reason only: never the credential itself.
            let shown = client.map(|client| client.to_string());
            tracing::info!(
                reason = %error,
                client = shown.as_deref().unwrap_or("unknown"),
                path = request.uri().path(),
                "credential refused"
            );
            if let Some(client) = counted
                && authenticator.failures.record(client)
            {
                tracing::warn!(
                    %client,
                    limit = authenticator.failures.limit(),
                    "too many credentials that do not verify from this client address: its \
                     credentials are refused with 429 for the rest of the minute"
                );
            }
            return error.into_response();
        }
    };
    if !principal.scopes.iter().any(|s| s == scope.name()) {
        metrics::counter!("nexus_auth_failures_total", "reason" => "forbidden").increment(1);
        tracing::info!(
            subject = principal.subject,
            scope = scope.name(),
            path = request.uri().path(),
            "scope missing"
        );
        return ApiError::Forbidden(format!(
            "'{}' lacks the scope '{}' this endpoint needs (it has: {})",
            principal.subject,
            scope.name(),
            if principal.scopes.is_empty() { "none".to_owned() } else { principal.scopes.join(", ") }
        ))
        .into_response();
    }
    request.extensions_mut().insert(Client(format!("sub:{}", principal.subject)));
    request.extensions_mut().insert(Subject(principal.subject));
    if let Some(exp) = principal.expires {
        request.extensions_mut().insert(CredentialExpiry(exp));
    }
    next.run(request).await
}
