//! The Web Push client: one VAPID key, connections to every push service its subscriptions
//! name, many concurrent sends.
//!
//! Unlike APNs and FCM, Web Push has no single endpoint: each subscription names its push
//! service (FCM's, Mozilla's, Apple's, Microsoft's, or any other), so the client keeps a map
//! from origin to connections, created on first use and bounded by `max_origins` (the least
//! recently used origin goes first); an origin idle for five minutes is dropped with its
//! connections. The first message to an origin runs the guard and
//! probes the service with ALPN `h2, http/1.1`:
//!
//! - HTTP/2: a `volley_provider::Pool` whose resolver is the guard, so every (re)connect
//!   goes only to addresses the guard checked;
//! - HTTP/1.1: keep-alive hyper connections, at most `http1_connections_per_origin`, opened
//!   through the guard as well (the probe's connection is the first of them).
//!
//! A refused origin is remembered for [`REFUSAL_TTL`], an unreachable one backs off, so a
//! broadcast to a bad endpoint costs one check, not one per message. Redirects are never
//! followed; response bodies are read up to 8 KiB.
//!
//! Per message the client decodes the token (no allocation), finds the origin (a read lock),
//! encrypts (one ECDH and one AES-GCM seal into the body's single allocation) and takes the
//! origin's cached VAPID header. No lock is held across an await.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::Full;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use volley_provider::tls::{TlsError, TlsOptions};
use volley_provider::{Endpoint, Outcome, Pool, PoolConfig, PoolStats, Reason, SendError};

use crate::classify::classify;
use crate::connect::{connect_tls, ConnectError, GuardResolver};
use crate::ece::{self, MAX_PLAINTEXT};
use crate::guard::{Guard, Refusal};
use crate::http1::{self, H1Error, H1Pool, MAX_RESPONSE_BODY};
use crate::subscription;
use crate::vapid::{VapidError, VapidKey, VapidSigner};

/// An origin no message went to for this long is dropped with its connections.
const IDLE_ORIGIN_SECS: u64 = 5 * 60;
/// How often the origins are looked over for idle ones.
const SWEEP_EVERY_SECS: u64 = 60;

const TTL: HeaderName = HeaderName::from_static("ttl");
const URGENCY: HeaderName = HeaderName::from_static("urgency");
const TOPIC: HeaderName = HeaderName::from_static("topic");
const AES128GCM: HeaderValue = HeaderValue::from_static("aes128gcm");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// How long a guard refusal of an origin is reused before the origin is checked again.
pub const REFUSAL_TTL: Duration = Duration::from_secs(30);
/// First pause after a failed probe of an origin; doubles per further failure.
const MIN_PROBE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(30);
/// The longest topic RFC 8030 §5.4 allows, in base64url characters.
pub const MAX_TOPIC_LEN: usize = 32;

/// Everything a [`WebPushClient`] needs.
#[derive(Debug, Clone)]
pub struct WebPushConfig {
    /// The application server's VAPID key.
    pub vapid: VapidKey,
    /// The VAPID `sub`: a `mailto:` or `https:` contact for push-service operators.
    pub subject: String,
    /// Which endpoints may be contacted.
    pub guard: Guard,
    /// TLS options (extra CA for a fake push service).
    pub tls: TlsOptions,
    /// HTTP/2 connections per push-service origin (each multiplexes many requests).
    pub connections_per_origin: usize,
    /// HTTP/1.1 connections per origin, for services without HTTP/2 (one request at a time
    /// each).
    pub http1_connections_per_origin: usize,
    /// Time allowed for one request, from waiting for a connection to the whole response.
    pub request_timeout: Duration,
    /// Time allowed to open a connection (DNS, guard, TCP, TLS).
    pub connect_timeout: Duration,
    /// Origins whose connections are kept; beyond it the least recently used is closed.
    pub max_origins: usize,
    /// Where the HTTP/2 connections and streams of every origin are counted, summed, and the
    /// latency of every request (HTTP/1.1 ones too) observed (the agent's metrics).
    pub stats: PoolStats,
}

impl WebPushConfig {
    /// Defaults: an open guard (public addresses only, any host), public web roots, 2 HTTP/2
    /// connections and 16 HTTP/1.1 connections per origin, 10 s request and 5 s connect
    /// timeouts, 1024 origins.
    pub fn new(vapid: VapidKey, subject: String) -> Self {
        WebPushConfig {
            vapid,
            subject,
            guard: Guard::default(),
            tls: TlsOptions::default(),
            connections_per_origin: 2,
            http1_connections_per_origin: 16,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_origins: 1024,
            stats: PoolStats::default(),
        }
    }
}

/// Why a client could not be built; the message names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    /// The VAPID subject is not a `mailto:` or `https:` URL.
    #[error("webpush.subject: {0}")]
    Vapid(#[from] VapidError),
    /// No connections configured.
    #[error("webpush.connections_per_origin and http1_connections_per_origin must be at least 1")]
    NoConnections,
    /// No origins allowed.
    #[error("webpush.max_origins must be at least 1")]
    NoOrigins,
    /// The TLS configuration (CA file) is unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// How urgently the browser should be woken (RFC 8030 §5.3): push services may hold back
/// low-urgency messages to save battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Urgency {
    /// `very-low`: on power and Wi-Fi.
    VeryLow,
    /// `low`: on power or Wi-Fi.
    Low,
    /// `normal`: on neither (the default when absent).
    Normal,
    /// `high`: even on low battery.
    High,
}

impl Urgency {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

impl std::fmt::Display for Urgency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An urgency that is not one of RFC 8030's four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("urgency {0:?} is not one of very-low, low, normal, high")]
pub struct UrgencyError(pub String);

impl FromStr for Urgency {
    type Err = UrgencyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "very-low" => Ok(Urgency::VeryLow),
            "low" => Ok(Urgency::Low),
            "normal" => Ok(Urgency::Normal),
            "high" => Ok(Urgency::High),
            _ => Err(UrgencyError(text.to_string())),
        }
    }
}

/// One notification, ready to be encrypted for each subscription of a broadcast.
#[derive(Clone, Default)]
pub struct Prepared {
    /// The plaintext payload (usually JSON the service worker reads); at most
    /// [`MAX_PLAINTEXT`] bytes.
    pub payload: Bytes,
    /// Seconds the push service should keep the message for an offline browser (0: deliver
    /// now or drop).
    pub ttl: u32,
    /// The `Urgency` header, when set.
    pub urgency: Option<Urgency>,
    /// The `Topic` header: a newer message with the same topic replaces an undelivered one.
    pub topic: Option<String>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload is the user's data: its size is enough for logs.
        f.debug_struct("Prepared")
            .field("payload_len", &self.payload.len())
            .field("ttl", &self.ttl)
            .field("urgency", &self.urgency)
            .field("topic", &self.topic)
            .finish()
    }
}

/// Why a [`Prepared`] notification cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreparedError {
    /// The payload does not fit one encrypted record.
    #[error("payload is {0} bytes: at most 3993 fit in one web push message")]
    PayloadTooLarge(usize),
    /// The topic is empty, too long or not base64url.
    #[error("topic must be 1 to 32 characters of the base64url alphabet (A-Z a-z 0-9 - _)")]
    Topic,
}

impl Prepared {
    /// Checks the payload size and the topic, once per broadcast; [`WebPushClient::send`]
    /// checks again per message.
    pub fn validate(&self) -> Result<(), PreparedError> {
        if self.payload.len() > MAX_PLAINTEXT {
            return Err(PreparedError::PayloadTooLarge(self.payload.len()));
        }
        if let Some(topic) = &self.topic {
            let valid = !topic.is_empty()
                && topic.len() <= MAX_TOPIC_LEN
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(PreparedError::Topic);
            }
        }
        Ok(())
    }
}

/// A Web Push client. Cheap to clone; share one per VAPID key across all concurrent sends.
#[derive(Clone)]
pub struct WebPushClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WebPushClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushClient")
            .field("signer", &self.inner.signer)
            .field("origins", &self.inner.origins.read().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    signer: VapidSigner,
    guard: Arc<Guard>,
    tls: TlsOptions,
    /// Offers `h2, http/1.1`: the first connection to an origin learns which it speaks.
    probe_tls: TlsConnector,
    /// Offers `http/1.1` only, for further connections to an HTTP/1.1 origin.
    http1_tls: TlsConnector,
    connections_per_origin: usize,
    http1_connections_per_origin: usize,
    request_timeout: Duration,
    connect_timeout: Duration,
    max_origins: usize,
    /// Shared by every origin's HTTP/2 pool; HTTP/1.1 requests are observed through it too.
    stats: PoolStats,
    /// Keyed by the endpoint's authority as written (`host[:port]`), so that the lookup
    /// borrows from the token.
    origins: RwLock<HashMap<Box<str>, Arc<Origin>>>,
    /// Counts origin lookups; an origin's last lookup orders eviction.
    clock: AtomicU64,
    /// When idle origins were last swept (seconds since the epoch).
    last_sweep: AtomicU64,
    /// When a connect failure was last logged (seconds since the epoch).
    last_connect_warning: AtomicU64,
}

/// One push-service origin and its connections.
struct Origin {
    /// Host as connected to and named in TLS (IPv6 without brackets).
    host: String,
    port: u16,
    /// `https://host[:port]`: the VAPID audience.
    origin: String,
    /// The `Host` header of HTTP/1.1 requests.
    host_header: HeaderValue,
    server_name: ServerName<'static>,
    resolver: Arc<GuardResolver>,
    last_used: AtomicU64,
    /// When it was last looked up, in seconds since the epoch (for the idle sweep).
    used_at: AtomicU64,
    failures: AtomicU32,
    state: Mutex<State>,
}

enum State {
    /// Not probed yet, or due for a new probe.
    New,
    /// A probe task is running; it flips the flag once `state` holds its result.
    Probing(watch::Receiver<bool>),
    Http2(Pool),
    Http1(Arc<H1Pool>),
    /// The guard refused the origin's addresses.
    Refused {
        refusal: Refusal,
        until: Instant,
    },
    /// The origin could not be reached; messages fail fast until `until`.
    Failed {
        outcome: Outcome,
        until: Instant,
    },
}

#[derive(Clone)]
enum Transport {
    Http2(Pool),
    Http1(Arc<H1Pool>),
}

impl WebPushClient {
    /// Builds a client; nothing is contacted until the first send.
    pub fn new(config: WebPushConfig) -> Result<Self, WebPushError> {
        if config.connections_per_origin == 0 || config.http1_connections_per_origin == 0 {
            return Err(WebPushError::NoConnections);
        }
        if config.max_origins == 0 {
            return Err(WebPushError::NoOrigins);
        }
        let signer = VapidSigner::new(config.vapid, config.subject)?;
        let base = volley_provider::tls::client_config(&config.tls)?;
        let with_alpn = |protocols: &[&[u8]]| {
            let mut tls = (*base).clone();
            tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(tls))
        };
        Ok(WebPushClient {
            inner: Arc::new(Inner {
                signer,
                guard: Arc::new(config.guard),
                probe_tls: with_alpn(&[b"h2", b"http/1.1"]),
                http1_tls: with_alpn(&[b"http/1.1"]),
                tls: config.tls,
                connections_per_origin: config.connections_per_origin,
                http1_connections_per_origin: config.http1_connections_per_origin,
                request_timeout: config.request_timeout,
                connect_timeout: config.connect_timeout,
                max_origins: config.max_origins,
                stats: config.stats,
                origins: RwLock::new(HashMap::new()),
                clock: AtomicU64::new(0),
                last_sweep: AtomicU64::new(now_unix()),
                last_connect_warning: AtomicU64::new(0),
            }),
        })
    }

    /// The VAPID public key (the browser's `applicationServerKey`), unpadded base64url.
    pub fn vapid_public_key(&self) -> &str {
        self.inner.signer.public_base64url()
    }

    /// How many push-service origins have connections (or a remembered refusal) now.
    pub fn origins(&self) -> usize {
        self.inner.origins.read().len()
    }

    /// Encrypts `prepared` for the subscription `token` and POSTs it to its endpoint.
    ///
    /// A malformed token or notification, or an endpoint the guard refuses, is a
    /// `BadRequest` whose reason says why, and nothing is contacted. Transport failures are
    /// `Transient`, as for the other providers.
    pub async fn send(&self, token: &str, prepared: &Prepared) -> Outcome {
        let decoded = match subscription::decode(token) {
            Ok(decoded) => decoded,
            Err(error) => return invalid_subscription(&error),
        };
        if let Err(error) = prepared.validate() {
            return match error {
                PreparedError::PayloadTooLarge(_) => Outcome::BadRequest {
                    reason: Reason::known("PayloadTooLarge"),
                },
                PreparedError::Topic => Outcome::BadRequest {
                    reason: Reason::raw(format!("InvalidTopic: {error}")),
                },
            };
        }
        let parts = match subscription::split_endpoint(decoded.endpoint) {
            Ok(parts) => parts,
            Err(error) => return invalid_subscription(&error),
        };
        let origin = match self.inner.origin(parts.authority, decoded.endpoint) {
            Ok(origin) => origin,
            Err(outcome) => return outcome,
        };
        let transport = match origin.transport(&self.inner).await {
            Ok(transport) => transport,
            Err(outcome) => return outcome,
        };
        let body = match ece::encrypt(&prepared.payload, &decoded.ua_public, &decoded.auth) {
            Ok(body) => body,
            // A key that is not a point of the curve: the subscription can never be sent to,
            // like one the push service calls gone.
            Err(ece::EceError::InvalidUaPublicKey) => {
                return Outcome::InvalidToken {
                    reason: Reason::known("InvalidKey"),
                    timestamp_ms: None,
                }
            }
            Err(error) => {
                return Outcome::BadRequest {
                    reason: Reason::raw(format!("InvalidSubscription: {error}")),
                }
            }
        };
        let Some(uri) = request_uri(parts.path_and_query, decoded.endpoint) else {
            return Outcome::BadRequest {
                reason: Reason::known(
                    "InvalidSubscription: endpoint path is not a valid request target",
                ),
            };
        };
        let headers = Headers {
            ttl: HeaderValue::from(prepared.ttl),
            content_length: HeaderValue::from(body.len()),
            authorization: self.inner.signer.header(&origin.origin),
            urgency: prepared.urgency.map(Urgency::header),
            topic: prepared
                .topic
                .as_deref()
                .and_then(|topic| HeaderValue::from_str(topic).ok()),
        };
        match transport {
            Transport::Http2(pool) => {
                let make = || {
                    let mut request = http::Request::new(());
                    *request.method_mut() = Method::POST;
                    *request.uri_mut() = uri.clone();
                    headers.fill(request.headers_mut());
                    request
                };
                match pool.send(make, body).await {
                    Ok(response) => {
                        let body = &response.body[..response.body.len().min(MAX_RESPONSE_BODY)];
                        answered(&origin, response.status, &response.headers, body)
                    }
                    Err(error) => self.inner.transport_failure(&origin, error),
                }
            }
            Transport::Http1(pool) => {
                let make = || {
                    let mut request = http::Request::new(Full::new(body.clone()));
                    *request.method_mut() = Method::POST;
                    *request.uri_mut() = uri.clone();
                    let map = request.headers_mut();
                    headers.fill(map);
                    map.insert(HOST, origin.host_header.clone());
                    request
                };
                let limit = self.inner.request_timeout;
                let stats = &self.inner.stats;
                let started = stats.observes().then(std::time::Instant::now);
                let result = tokio::time::timeout(limit, pool.send(make)).await;
                if let Some(started) = started {
                    if !matches!(
                        result,
                        Ok(Err(
                            H1Error::Refused(_) | H1Error::Send(SendError::Connect { .. })
                        ))
                    ) {
                        stats.observe_request(started.elapsed());
                    }
                }
                match result {
                    Ok(Ok(response)) => {
                        answered(&origin, response.status, &response.headers, &response.body)
                    }
                    Ok(Err(H1Error::Refused(refusal))) => refused(&origin, &refusal),
                    Ok(Err(H1Error::Send(error))) => self.inner.transport_failure(&origin, error),
                    Err(_) => SendError::Timeout(limit).into_outcome(),
                }
            }
        }
    }
}

/// The per-message headers, built once and copied into each attempt's request.
struct Headers {
    ttl: HeaderValue,
    content_length: HeaderValue,
    authorization: HeaderValue,
    urgency: Option<HeaderValue>,
    topic: Option<HeaderValue>,
}

impl Headers {
    fn fill(&self, headers: &mut HeaderMap) {
        headers.reserve(8);
        headers.insert(TTL, self.ttl.clone());
        headers.insert(CONTENT_ENCODING, AES128GCM);
        headers.insert(CONTENT_TYPE, OCTET_STREAM);
        headers.insert(CONTENT_LENGTH, self.content_length.clone());
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if let Some(urgency) = &self.urgency {
            headers.insert(URGENCY, urgency.clone());
        }
        if let Some(topic) = &self.topic {
            headers.insert(TOPIC, topic.clone());
        }
    }
}

/// The request target: the endpoint's path and query as written, or, for the odd endpoint
/// whose raw path `http` refuses, the URL parser's percent-encoded form.
fn request_uri(path_and_query: &str, endpoint: &str) -> Option<Uri> {
    let target = match path_and_query.as_bytes().first() {
        None => return Some(Uri::from_static("/")),
        Some(b'/') => Bytes::copy_from_slice(path_and_query.as_bytes()),
        Some(_) => Bytes::from(format!("/{path_and_query}")),
    };
    Uri::from_maybe_shared(target).ok().or_else(|| {
        let url = url::Url::parse(endpoint).ok()?;
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        Uri::try_from(target).ok()
    })
}

fn invalid_subscription(error: &subscription::SubscriptionError) -> Outcome {
    Outcome::BadRequest {
        reason: Reason::raw(format!("InvalidSubscription: {error}")),
    }
}

/// A guard refusal as the outcome reported for the message: `EndpointNotPublic: endpoint
/// host is 127.0.0.1, a loopback address: …`. A name that does not resolve may be a DNS
/// outage rather than a bad endpoint, so it is retried like a connect failure.
/// The outcome of a push service's answer; what the body says of a failure goes to the log
/// (at debug: an endpoint's server writes what it likes), never into the reason.
fn answered(
    origin: &Origin,
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Outcome {
    let outcome = classify(status, headers);
    if outcome != Outcome::Delivered {
        if let Some(detail) = crate::classify::detail(body) {
            tracing::debug!(origin = %origin.origin, status = status.as_u16(), %detail, "push service refused a message");
        }
    }
    outcome
}

fn refusal_outcome(refusal: &Refusal) -> Outcome {
    // A code and the kind of address, not the host or the address: reasons are counted by
    // their text, and hosts are whatever users sent (the log line in `refused` has them).
    let reason = Reason::raw(refusal.summary());
    match refusal {
        Refusal::Unresolvable { .. } => Outcome::Transient {
            reason,
            retry_after: None,
            maybe_delivered: false,
        },
        _ => Outcome::BadRequest { reason },
    }
}

fn refused(origin: &Origin, refusal: &Refusal) -> Outcome {
    tracing::info!(
        origin = %origin.origin,
        code = refusal.code(),
        %refusal,
        "push endpoint refused by the guard"
    );
    refusal_outcome(refusal)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl Inner {
    /// The origin of an endpoint, made on first use (and refused there when its host is not
    /// on the allow-list).
    fn origin(&self, authority: &str, endpoint: &str) -> Result<Arc<Origin>, Outcome> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let now = now_unix();
        self.sweep(now);
        if let Some(origin) = self.origins.read().get(authority) {
            origin.last_used.store(tick, Ordering::Relaxed);
            origin.used_at.store(now, Ordering::Relaxed);
            return Ok(origin.clone());
        }
        let origin = Arc::new(self.new_origin(endpoint, tick)?);
        let mut origins = self.origins.write();
        if let Some(existing) = origins.get(authority) {
            return Ok(existing.clone());
        }
        if origins.len() >= self.max_origins {
            // Requests in flight keep their origin alive through their own Arc; the map just
            // stops handing it out, and its connections close when the last one finishes.
            let oldest = origins
                .iter()
                .min_by_key(|(_, origin)| origin.last_used.load(Ordering::Relaxed))
                .map(|(key, _)| key.clone());
            if let Some(key) = oldest {
                origins.remove(&key);
            }
        }
        origins.insert(authority.into(), origin.clone());
        Ok(origin)
    }

    /// Drops the origins no message has gone to for [`IDLE_ORIGIN_SECS`] (and none is in
    /// flight to), with their connections; at most once a minute, by whichever lookup finds
    /// it due.
    fn sweep(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now < last + SWEEP_EVERY_SECS
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.origins.write().retain(|_, origin| {
            Arc::strong_count(origin) > 1
                || now < origin.used_at.load(Ordering::Relaxed) + IDLE_ORIGIN_SECS
        });
    }

    fn new_origin(&self, endpoint: &str, tick: u64) -> Result<Origin, Outcome> {
        let url = url::Url::parse(endpoint).map_err(|e| {
            invalid_subscription(&subscription::SubscriptionError::EndpointNotUrl(e))
        })?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => {
                return Err(invalid_subscription(
                    &subscription::SubscriptionError::EndpointNoHost,
                ))
            }
        };
        let port = url.port_or_known_default().unwrap_or(443);
        if let Err(refusal) = self.guard.check_host(&host) {
            return Err(refusal_outcome(&refusal));
        }
        let origin = subscription::origin(endpoint).map_err(|e| invalid_subscription(&e))?;
        let authority = origin.trim_start_matches("https://");
        let host_header = HeaderValue::from_str(authority)
            .map_err(|_| invalid_subscription(&subscription::SubscriptionError::EndpointNoHost))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| invalid_subscription(&subscription::SubscriptionError::EndpointNoHost))?;
        Ok(Origin {
            host,
            port,
            origin,
            host_header,
            server_name,
            resolver: Arc::new(GuardResolver::new(self.guard.clone())),
            last_used: AtomicU64::new(tick),
            used_at: AtomicU64::new(now_unix()),
            failures: AtomicU32::new(0),
            state: Mutex::new(State::New),
        })
    }

    /// A transport failure as an outcome; a connect refused by the guard is the refusal.
    fn transport_failure(&self, origin: &Origin, error: SendError) -> Outcome {
        if let SendError::Connect { message, .. } = &error {
            if let Some(refusal) = origin.resolver.last_refusal() {
                return refused(origin, &refusal);
            }
            let now = now_unix();
            let last = self.last_connect_warning.load(Ordering::Relaxed);
            if now >= last + 10
                && self
                    .last_connect_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(origin = %origin.origin, error = %message, "push service connection failed");
            }
        }
        error.into_outcome()
    }
}

impl Origin {
    /// The origin's connections, probing the origin first when needed; an outcome for the
    /// message when it is refused or unreachable.
    async fn transport(self: &Arc<Self>, client: &Arc<Inner>) -> Result<Transport, Outcome> {
        // Bounded: each round finds a result, or waits for a probe that always ends.
        for _ in 0..3 {
            let mut done = {
                let mut state = self.state.lock();
                let now = Instant::now();
                match &*state {
                    State::Http2(pool) => return Ok(Transport::Http2(pool.clone())),
                    State::Http1(pool) => return Ok(Transport::Http1(pool.clone())),
                    State::Refused { refusal, until } if now < *until => {
                        return Err(refusal_outcome(refusal))
                    }
                    State::Failed { outcome, until } if now < *until => return Err(outcome.clone()),
                    State::Probing(done) => done.clone(),
                    State::New | State::Refused { .. } | State::Failed { .. } => {
                        let (done_tx, done_rx) = watch::channel(false);
                        *state = State::Probing(done_rx.clone());
                        let (origin, client) = (self.clone(), client.clone());
                        tokio::spawn(async move {
                            let result = origin.probe(&client).await;
                            *origin.state.lock() = result;
                            let _ = done_tx.send(true);
                        });
                        done_rx
                    }
                }
            };
            if done.wait_for(|done| *done).await.is_err() {
                // The probe task ended without a result (the runtime is shutting down).
                let mut state = self.state.lock();
                if matches!(*state, State::Probing(_)) {
                    *state = State::New;
                }
            }
        }
        Err(SendError::Connect {
            endpoint: http1::host_port(&self.host, self.port),
            message: "the push service probe did not finish".into(),
        }
        .into_outcome())
    }

    /// Connects once with ALPN `h2, http/1.1` and sets up the transport the server chose.
    async fn probe(self: &Arc<Self>, client: &Inner) -> State {
        let connect = connect_tls(
            &self.resolver,
            &client.probe_tls,
            &self.server_name,
            &self.host,
            self.port,
        );
        let tls = match tokio::time::timeout(client.connect_timeout, connect).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(ConnectError::Refused(refusal))) => {
                if let Refusal::Unresolvable { .. } = refusal {
                    return self.failed(refusal_outcome(&refusal), &refusal.to_string());
                }
                refused(self, &refusal);
                return State::Refused {
                    refusal,
                    until: Instant::now() + REFUSAL_TTL,
                };
            }
            Ok(Err(ConnectError::Failed(message))) => return self.connect_failed(message),
            Err(_) => {
                return self
                    .connect_failed(format!("no connection within {:?}", client.connect_timeout))
            }
        };
        let protocol = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let state = match protocol.as_deref() {
            Some(b"h2") => {
                // The probe's connection is dropped: the pool opens its own, through the
                // guard. One extra handshake per origin and process.
                drop(tls);
                let pool = Pool::new(PoolConfig {
                    connections: client.connections_per_origin,
                    request_timeout: client.request_timeout,
                    connect_timeout: client.connect_timeout,
                    tls: client.tls.clone(),
                    resolver: Some(self.resolver.clone()),
                    stats: client.stats.clone(),
                    ..PoolConfig::new(Endpoint {
                        tls: true,
                        host: self.host.clone(),
                        port: self.port,
                    })
                });
                match pool {
                    Ok(pool) => State::Http2(pool),
                    Err(error) => return self.connect_failed(error.to_string()),
                }
            }
            Some(b"http/1.1") | None => match http1::handshake(tls).await {
                Ok(sender) => {
                    let pool = H1Pool::new(
                        self.host.clone(),
                        self.port,
                        self.server_name.clone(),
                        client.http1_tls.clone(),
                        self.resolver.clone(),
                        client.connect_timeout,
                        client.http1_connections_per_origin,
                    );
                    pool.seed(sender);
                    State::Http1(Arc::new(pool))
                }
                Err(message) => return self.connect_failed(message),
            },
            Some(other) => {
                return self.connect_failed(format!(
                    "server chose protocol {:?}, neither h2 nor http/1.1",
                    String::from_utf8_lossy(other)
                ))
            }
        };
        self.failures.store(0, Ordering::Relaxed);
        tracing::debug!(
            origin = %self.origin,
            protocol = if matches!(state, State::Http2(_)) { "h2" } else { "http/1.1" },
            "push service connected"
        );
        state
    }

    fn connect_failed(&self, message: String) -> State {
        let outcome = SendError::Connect {
            endpoint: http1::host_port(&self.host, self.port),
            message: message.clone(),
        }
        .into_outcome();
        self.failed(outcome, &message)
    }

    /// Backs the origin off after a failed probe: 1 s, doubling per failure up to 30 s.
    fn failed(&self, outcome: Outcome, message: &str) -> State {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = MIN_PROBE_BACKOFF
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(MAX_PROBE_BACKOFF);
        tracing::warn!(origin = %self.origin, error = %message, ?backoff, "push service unreachable");
        State::Failed {
            outcome,
            until: Instant::now() + backoff,
        }
    }
}

#[cfg(test)]
mod tests;
