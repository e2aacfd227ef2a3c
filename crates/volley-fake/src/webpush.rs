//! The fake Web Push service: a browser vendor's push service (RFC 8030) as a sender sees it.
//!
//! It hands out subscriptions ([`FakeWebPush::subscription`], `POST /subscribe`) and accepts
//! push messages for them at `POST /push/{id}` over HTTPS, HTTP/2 or HTTP/1.1 by ALPN (or
//! HTTP/1.1 only, [`FakeWebPushConfig::http1_only`], to test a client's fallback). It checks
//! what the real services check — the VAPID JWT (RFC 8292) against its own origin, `TTL`,
//! `Content-Encoding: aes128gcm`, `Urgency`, `Topic`, the 4096-byte limit — and then decrypts
//! every payload (RFC 8291) with the subscription's keys, which it can recompute for any id it
//! could have issued (see `keyring`). Failures are scripted by the id's prefix (see
//! [`crate::cli`]'s table); ids starting with `ext` are subscriptions made elsewhere (a real
//! browser's keys, a test's own), accepted without decrypting and captured as they came.
//!
//! Unlike the APNs and FCM fakes, which drive `h2` directly to control frames on the wire, this
//! one is a plain hyper server (`hyper_util`'s auto connection): Web Push has no connection
//! tricks to imitate, and it must speak HTTP/1.1 too. Its state is `Send` so that a benchmark
//! can give it more than one worker thread ([`FakeWebPushConfig::threads`]); decryption (one
//! ECDH per message) is what costs.
//!
//! Another process (a benchmark's, with the engine in processes of its own) gets subscriptions
//! in bulk at `GET /subscriptions?prefix=P&count=N[&dead_every=K]`: ids `P-0` … `P-(N-1)`, every
//! K-th of them `dead-i` instead ([`bulk_subscription_id`]), at most
//! [`MAX_BULK_SUBSCRIPTIONS`] at once. It and `GET /stats` are also served over plain HTTP/1.1
//! on an optional second listener ([`FakeWebPush::start_with_stats`], `--stats-listen`), as the
//! APNs and FCM fakes serve theirs, so that such a process needs neither TLS nor the fake's CA.
//!
//! Status codes for the sender's identity: 401 Unauthorized when `Authorization` is missing,
//! not `vapid t=…, k=…`, or its JWT is malformed or its signature does not verify against `k`;
//! 403 Forbidden when the JWT verifies but its claims do not hold (expired, `exp` too far ahead,
//! `aud` not this origin, no `sub`).

mod keyring;
mod push;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use volley_webpush::vapid::VapidError;

use crate::counters::{Counters, StatusCounts};
use crate::server::{
    accept_stats, capture_headers, origin, serve_plain_http1, unix_now, validate_injection,
    ServingThread,
};
use crate::{tls, FakeError, Latency};
use keyring::Keyring;
pub use push::MAX_BODY;

/// Bodies are read up to this much; anything above [`MAX_BODY`] is refused anyway.
const READ_LIMIT: usize = 64 * 1024;
/// Verified VAPID headers remembered (a sender reuses one JWT for many messages).
const VAPID_CACHE: usize = 1024;
/// Subscriptions bound to a VAPID key at most (`POST /subscribe` with `applicationServerKey`).
const MAX_BOUND: usize = 1_000_000;
/// The most subscriptions one `GET /subscriptions` hands out (about 200 bytes of JSON each).
pub const MAX_BULK_SUBSCRIPTIONS: usize = 2_000_000;
/// The longest prefix `GET /subscriptions` takes, so that `{prefix}-{i}` stays a valid id.
const MAX_BULK_PREFIX: usize = 240;

/// The id of the `i`th of a batch of subscriptions: `{prefix}-{i}`, except that when
/// `dead_every` is K > 0, every K-th (`i % K == K - 1`) is `dead-{i}`, which the fake answers
/// 410 Gone.
pub fn bulk_subscription_id(prefix: &str, i: usize, dead_every: usize) -> String {
    if dead_every > 0 && i % dead_every == dead_every - 1 {
        format!("dead-{i}")
    } else {
        format!("{prefix}-{i}")
    }
}

/// How a [`FakeWebPush`] behaves.
#[derive(Clone, Debug)]
pub struct FakeWebPushConfig {
    /// Offer only HTTP/1.1 (ALPN `http/1.1`, no HTTP/2), to test a client's fallback.
    pub http1_only: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS for HTTP/2 connections, default 1000.
    pub max_concurrent_streams: u32,
    /// Delay injected before answering each push request.
    pub latency: Latency,
    /// Fraction of push requests answered 503 with `Retry-After: 1`.
    pub transient_error_rate: f64,
    /// Keep the first this many push requests ([`FakeWebPush::captured`], `GET /requests`).
    pub capture: usize,
    /// Where to write the generated CA certificate PEM (a temporary file otherwise).
    pub ca_out: Option<PathBuf>,
    /// Worker threads: 1 (default) serves everything on the fake's own thread; more runs a
    /// multi-threaded runtime, for benchmarks where decryption would be the bottleneck.
    pub threads: usize,
}

impl Default for FakeWebPushConfig {
    fn default() -> Self {
        FakeWebPushConfig {
            http1_only: false,
            max_concurrent_streams: 1000,
            latency: Latency::None,
            transient_error_rate: 0.0,
            capture: 0,
            ca_out: None,
            threads: 1,
        }
    }
}

/// A subscription as a browser's `PushSubscription.toJSON()` gives it to the application
/// server: `{"endpoint": …, "keys": {"p256dh": …, "auth": …}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// The push resource, `https://127.0.0.1:PORT/push/{id}`.
    pub endpoint: String,
    /// The keys the payload is encrypted to.
    pub keys: SubscriptionKeys,
}

/// The public half of a subscription's keys, base64url without padding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    /// The user agent's P-256 public key, uncompressed (65 bytes).
    pub p256dh: String,
    /// The auth secret (16 bytes).
    pub auth: String,
}

/// A snapshot of the fake push service's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebPushStats {
    /// Push requests (`/push/…`), whatever their answer.
    pub requests: u64,
    /// Push requests by answered HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Push messages accepted (201 Created).
    pub delivered: u64,
    /// Distinct subscription ids delivered to.
    pub distinct_ids: u64,
    /// Extra deliveries to ids already delivered to once.
    pub duplicate_ids: u64,
    /// Payloads that did not decrypt with their subscription's keys (answered 400).
    pub decrypt_failures: u64,
    /// Requests refused for their VAPID authorization (401 or 403).
    pub vapid_failures: u64,
    /// Body bytes of push requests.
    pub bytes: u64,
    /// Push requests over HTTP/1.1.
    pub http1_requests: u64,
    /// Push requests over HTTP/2.
    pub http2_requests: u64,
    /// Connections accepted (on the main port).
    pub connections: u64,
    /// Subscriptions handed out by `POST /subscribe` and `GET /subscriptions`.
    pub subscriptions_issued: u64,
}

/// One push request as the fake received it, kept when [`FakeWebPushConfig::capture`] is set.
///
/// In JSON the byte fields are base64url without padding.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CapturedPush {
    /// The subscription id (the path's last segment).
    pub id: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every request header, names lowercase; `authorization` cut to its scheme (`vapid`).
    pub headers: BTreeMap<String, String>,
    /// The decrypted payload, when the fake accepted a message it holds the keys of.
    #[serde(with = "base64url")]
    pub plaintext: Option<Vec<u8>>,
    /// The body as it came, for `ext` ids and for payloads that did not decrypt.
    #[serde(with = "base64url")]
    pub body: Option<Vec<u8>>,
    /// The HTTP status the fake answered.
    pub status: u16,
}

/// A running fake push service; see the module docs.
pub struct FakeWebPush {
    addr: SocketAddr,
    stats_addr: Option<SocketAddr>,
    ca_pem: String,
    ca_path: PathBuf,
    /// Keeps the temporary CA file alive (and removes it) when no `ca_out` was given.
    _ca_temp: Option<tempfile::TempPath>,
    state: Arc<State>,
    serving: ServingThread,
}

impl FakeWebPush {
    /// Starts serving on `listener` (already bound, e.g. to 127.0.0.1:0) on a dedicated OS
    /// thread with its own tokio runtime, so it works from any caller runtime (or none).
    pub fn start(
        config: FakeWebPushConfig,
        listener: std::net::TcpListener,
    ) -> Result<Self, FakeError> {
        Self::start_with_stats(config, listener, None)
    }

    /// Like [`FakeWebPush::start`], and also answers `GET /stats`, `GET /requests` and
    /// `GET /subscriptions` over plain HTTP/1.1 on `stats_listener`.
    pub fn start_with_stats(
        config: FakeWebPushConfig,
        listener: std::net::TcpListener,
        stats_listener: Option<std::net::TcpListener>,
    ) -> Result<Self, FakeError> {
        validate_injection(&config.latency, config.transient_error_rate)?;
        if config.threads == 0 {
            return Err(FakeError::Config("threads must be at least 1".into()));
        }
        if config.max_concurrent_streams == 0 {
            return Err(FakeError::Config(
                "max_concurrent_streams must be at least 1".into(),
            ));
        }
        let minted = tls::mint(listener.local_addr()?.ip())?;
        let (ca_path, ca_temp) = tls::write_ca(&minted.ca_pem, config.ca_out.as_deref())?;
        let alpn: &[&[u8]] = if config.http1_only {
            &[b"http/1.1"]
        } else {
            &[b"h2", b"http/1.1"]
        };
        let acceptor = TlsAcceptor::from(minted.with_alpn(alpn));

        let addr = listener.local_addr()?;
        let stats_addr = stats_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        listener.set_nonblocking(true)?;
        if let Some(l) = &stats_listener {
            l.set_nonblocking(true)?;
        }
        let runtime = if config.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.threads)
                .thread_name("volley-fake-webpush-worker")
                .enable_all()
                .build()?
        };
        let (listener, stats_listener) = {
            let _entered = runtime.enter();
            (
                TcpListener::from_std(listener)?,
                stats_listener.map(TcpListener::from_std).transpose()?,
            )
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .max_concurrent_streams(config.max_concurrent_streams);
        if config.http1_only {
            builder = builder.http1_only();
        }

        let state = Arc::new(State {
            origin: origin("https", addr),
            keyring: Keyring::generate(),
            counters: PushCounters::default(),
            seen: Mutex::default(),
            captured: Mutex::default(),
            vapid_cache: Mutex::default(),
            bound: Mutex::default(),
            config,
        });
        let served = Served {
            state: state.clone(),
            acceptor,
            builder: Arc::new(builder),
        };
        let serving = ServingThread::spawn("volley-fake-webpush", move |stopped| {
            run(runtime, listener, stats_listener, served, stopped)
        })?;
        Ok(FakeWebPush {
            addr,
            stats_addr,
            ca_pem: minted.ca_pem,
            ca_path,
            _ca_temp: ca_temp,
            state,
            serving,
        })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain HTTP/1.1 address of `/stats` and `/subscriptions`, when a stats listener was
    /// given.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    /// `https://127.0.0.1:PORT`: the origin of every endpoint, and the VAPID audience.
    pub fn origin(&self) -> &str {
        &self.state.origin
    }

    /// The push resource of subscription `id`: `https://127.0.0.1:PORT/push/{id}`.
    ///
    /// Ids are 1 to 256 URL-unreserved characters (`A-Z a-z 0-9 - . _ ~`); a push to an
    /// endpoint with another id is answered 404.
    pub fn endpoint(&self, id: &str) -> String {
        self.state.endpoint(id)
    }

    /// The subscription with id `id`: the same for the same id while the fake runs, and cheap
    /// (no key generation). Pushes to it are decrypted, unless its prefix scripts otherwise.
    pub fn subscription(&self, id: &str) -> SubscriptionInfo {
        self.state.subscription(id)
    }

    /// The subscription with id `id`, made with the VAPID public key `key` (a browser's
    /// `applicationServerKey`): pushes signed with another key are answered 403, as real push
    /// services do. What `POST /subscribe` with `applicationServerKey` does.
    pub fn subscription_for_key(
        &self,
        id: &str,
        key: &[u8; 65],
    ) -> Result<SubscriptionInfo, FakeError> {
        self.state
            .bind(id, *key)
            .map_err(|message| FakeError::Config(message.into()))?;
        Ok(self.state.subscription(id))
    }

    /// `count` subscriptions with the ids of [`bulk_subscription_id`], in order: what
    /// `GET /subscriptions` answers, for a caller in the fake's own process.
    pub fn subscriptions(
        &self,
        prefix: &str,
        count: usize,
        dead_every: usize,
    ) -> Vec<SubscriptionInfo> {
        (0..count)
            .map(|i| {
                self.state
                    .subscription(&bulk_subscription_id(prefix, i, dead_every))
            })
            .collect()
    }

    /// The generated CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA PEM on disk (`ca_out`, or a temporary file kept while the fake lives).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WebPushStats {
        self.state.counters.snapshot()
    }

    /// The push requests kept so far ([`FakeWebPushConfig::capture`]), oldest first.
    pub fn captured(&self) -> Vec<CapturedPush> {
        self.state.captured.lock().clone()
    }

    /// The last push request kept for subscription `id`.
    pub fn captured_for(&self, id: &str) -> Option<CapturedPush> {
        self.state
            .captured
            .lock()
            .iter()
            .rev()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Stops the fake, joins its thread and returns the final counters.
    pub fn shutdown(mut self) -> WebPushStats {
        self.serving.stop();
        self.state.counters.snapshot()
    }
}

impl std::fmt::Debug for FakeWebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWebPush")
            .field("addr", &self.addr)
            .field("http1_only", &self.state.config.http1_only)
            .finish_non_exhaustive()
    }
}

/// A VAPID header that verified: its JWT's `exp`, and the sender's public key.
type Verified = (u64, [u8; 65]);

/// Everything the fake's threads share; every lock is held briefly and never across an await.
pub(crate) struct State {
    config: FakeWebPushConfig,
    /// `https://127.0.0.1:PORT`.
    origin: String,
    keyring: Keyring,
    counters: PushCounters,
    /// Ids delivered to at least once.
    seen: Mutex<HashSet<Box<str>>>,
    captured: Mutex<Vec<CapturedPush>>,
    /// `Authorization` values that verified, with their JWT's `exp` and the key (`k`).
    vapid_cache: Mutex<HashMap<Box<[u8]>, Verified>>,
    /// Subscriptions made with an `applicationServerKey`: only that VAPID key may push to
    /// them (403 otherwise), as real push services bind them.
    bound: Mutex<HashMap<Box<str>, [u8; 65]>>,
}

impl State {
    fn endpoint(&self, id: &str) -> String {
        format!("{}/push/{id}", self.origin)
    }

    fn subscription(&self, id: &str) -> SubscriptionInfo {
        let keys = self.keyring.keys(id);
        SubscriptionInfo {
            endpoint: self.endpoint(id),
            keys: SubscriptionKeys {
                p256dh: keys.public_b64.to_owned(),
                auth: URL_SAFE_NO_PAD.encode(keys.auth),
            },
        }
    }

    /// Whether this request is chosen for a random transient error.
    fn transient_error(&self) -> bool {
        self.config.transient_error_rate > 0.0
            && rand::Rng::gen::<f64>(&mut rand::thread_rng()) < self.config.transient_error_rate
    }

    /// Binds subscription `id` to the VAPID public key it was made with.
    fn bind(&self, id: &str, key: [u8; 65]) -> Result<(), &'static str> {
        let mut bound = self.bound.lock();
        if bound.len() >= MAX_BOUND && !bound.contains_key(id) {
            return Err("too many subscriptions bound to a key");
        }
        bound.insert(id.into(), key);
        Ok(())
    }

    /// Refuses (403) a push signed with another key than the one subscription `id` was made
    /// with, if it was made with one.
    pub(crate) fn check_bound(&self, id: &str, key: &[u8; 65]) -> Result<(), push::Decision> {
        match self.bound.lock().get(id) {
            Some(bound) if bound != key => {
                Counters::bump(&self.counters.vapid_failures);
                Err(push::Decision::refuse(
                    StatusCode::FORBIDDEN,
                    "the VAPID key does not match the applicationServerKey the subscription \
                     was made with",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks `Authorization: vapid t=…, k=…` against this origin (see the module docs for
    /// 401 versus 403); the sender's public key when it holds.
    fn check_vapid(&self, authorization: Option<&HeaderValue>) -> Result<[u8; 65], push::Decision> {
        let refuse = |status, message| {
            Counters::bump(&self.counters.vapid_failures);
            Err(push::Decision::refuse(status, message))
        };
        let Some(authorization) = authorization else {
            return refuse(StatusCode::UNAUTHORIZED, "missing VAPID authorization");
        };
        let now = u64::try_from(unix_now()).unwrap_or(0);
        if let Some(&(exp, key)) = self.vapid_cache.lock().get(authorization.as_bytes()) {
            if now < exp {
                return Ok(key);
            }
        }
        let Ok(text) = authorization.to_str() else {
            return refuse(StatusCode::UNAUTHORIZED, "malformed VAPID authorization");
        };
        match volley_webpush::vapid::verify(text, &self.origin, now) {
            Ok(verified) => {
                // Verification is an ECDSA check; a sender reuses one JWT for hours.
                if let Some(exp) = vapid_exp(text) {
                    let mut cache = self.vapid_cache.lock();
                    if cache.len() >= VAPID_CACHE {
                        cache.clear();
                    }
                    cache.insert(authorization.as_bytes().into(), (exp, verified.public_key));
                }
                Ok(verified.public_key)
            }
            Err(error) => {
                let (status, message) = vapid_refusal(&error);
                refuse(status, message)
            }
        }
    }
}

/// The status and message for a refused VAPID header: 401 for a credential that is not one
/// (malformed, or a signature that does not verify), 403 for one that verifies but whose
/// claims do not hold.
fn vapid_refusal(error: &VapidError) -> (StatusCode, &'static str) {
    match error {
        VapidError::Audience { .. } => (
            StatusCode::FORBIDDEN,
            "VAPID aud is not this push service's origin",
        ),
        VapidError::Expired { .. } => (StatusCode::FORBIDDEN, "VAPID JWT expired"),
        VapidError::ExpTooFar { .. } => (
            StatusCode::FORBIDDEN,
            "VAPID exp is more than 24 hours ahead",
        ),
        VapidError::MissingSubject => (StatusCode::FORBIDDEN, "VAPID JWT has no sub"),
        VapidError::Signature => (
            StatusCode::UNAUTHORIZED,
            "VAPID JWT signature does not verify against k",
        ),
        _ => (
            StatusCode::UNAUTHORIZED,
            "authorization is not a well-formed \"vapid t=JWT, k=KEY\"",
        ),
    }
}

/// The `exp` claim of an `Authorization: vapid t=JWT, …` that already verified.
fn vapid_exp(authorization: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    let token = authorization
        .split([' ', ','])
        .find_map(|param| param.trim().strip_prefix("t="))?;
    let claims = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    serde_json::from_slice::<Claims>(&claims)
        .ok()
        .map(|c| c.exp)
}

/// The push service's counters: atomics, written from any worker.
#[derive(Default)]
struct PushCounters {
    requests: AtomicU64,
    by_status: StatusCounts,
    delivered: AtomicU64,
    distinct_ids: AtomicU64,
    duplicate_ids: AtomicU64,
    decrypt_failures: AtomicU64,
    vapid_failures: AtomicU64,
    bytes: AtomicU64,
    http1_requests: AtomicU64,
    http2_requests: AtomicU64,
    connections: AtomicU64,
    subscriptions_issued: AtomicU64,
}

impl PushCounters {
    fn bump_decrypt_failure(&self) {
        Counters::bump(&self.decrypt_failures);
    }

    fn snapshot(&self) -> WebPushStats {
        WebPushStats {
            requests: self.requests.load(Relaxed),
            by_status: self.by_status.snapshot(),
            delivered: self.delivered.load(Relaxed),
            distinct_ids: self.distinct_ids.load(Relaxed),
            duplicate_ids: self.duplicate_ids.load(Relaxed),
            decrypt_failures: self.decrypt_failures.load(Relaxed),
            vapid_failures: self.vapid_failures.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            http1_requests: self.http1_requests.load(Relaxed),
            http2_requests: self.http2_requests.load(Relaxed),
            connections: self.connections.load(Relaxed),
            subscriptions_issued: self.subscriptions_issued.load(Relaxed),
        }
    }
}

/// What every connection task needs.
#[derive(Clone)]
struct Served {
    state: Arc<State>,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

fn run(
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    stats_listener: Option<TcpListener>,
    served: Served,
    mut stopped: oneshot::Receiver<()>,
) {
    runtime.block_on(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        tokio::spawn(serve_connection(served.clone(), tcp));
                    }
                    Err(error) => tracing::warn!(%error, "fake web push accept failed"),
                },
                accepted = accept_stats(stats_listener.as_ref()) => match accepted {
                    Ok((tcp, _)) => {
                        let state = served.state.clone();
                        tokio::spawn(serve_plain_http1(tcp, move |method, uri| {
                            observe(&state, method, uri)
                                .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "no such resource"))
                        }));
                    }
                    Err(error) => tracing::warn!(%error, "fake web push stats accept failed"),
                },
            }
        }
    });
    // Dropping the runtime drops every connection task.
    drop(runtime);
}

async fn serve_connection(served: Served, tcp: TcpStream) {
    Counters::bump(&served.state.counters.connections);
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = served.acceptor.accept(tcp).await else {
        return;
    };
    let state = served.state;
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, request).await) }
    });
    let _ = served
        .builder
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

type Reply = Response<Full<Bytes>>;

async fn route(state: &State, request: Request<hyper::body::Incoming>) -> Reply {
    let path = request.uri().path();
    if let Some(id) = path.strip_prefix("/push/") {
        let id = id.to_owned();
        return push(state, id, request).await;
    }
    if let Some(reply) = observe(state, request.method(), request.uri()) {
        return reply;
    }
    match (request.method(), path) {
        (&Method::POST, "/subscribe") => subscribe(state, request).await,
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

/// The `GET` routes served on the main port and on the stats listener alike: `/stats`,
/// `/requests`, `/subscriptions`.
fn observe(state: &State, method: &Method, uri: &http::Uri) -> Option<Reply> {
    if method != Method::GET {
        return None;
    }
    Some(match uri.path() {
        "/stats" => json(StatusCode::OK, &state.counters.snapshot()),
        "/requests" => json(StatusCode::OK, &*state.captured.lock()),
        "/subscriptions" => match BulkQuery::parse(uri.query().unwrap_or("")) {
            Ok(query) => bulk_subscriptions(state, &query),
            Err(message) => error(StatusCode::BAD_REQUEST, message),
        },
        _ => return None,
    })
}

/// The query of `GET /subscriptions`: `prefix=P&count=N[&dead_every=K]`.
#[derive(Debug, PartialEq, Eq)]
struct BulkQuery {
    prefix: String,
    count: usize,
    dead_every: usize,
}

impl BulkQuery {
    fn parse(query: &str) -> Result<BulkQuery, &'static str> {
        const USAGE: &str = "query must be prefix=P&count=N, optionally &dead_every=K";
        let (mut prefix, mut count, mut dead_every) = (None, None, 0);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').ok_or(USAGE)?;
            match name {
                "prefix" => prefix = Some(value),
                "count" => count = Some(value.parse::<usize>().map_err(|_| USAGE)?),
                "dead_every" => dead_every = value.parse().map_err(|_| USAGE)?,
                _ => return Err(USAGE),
            }
        }
        let (Some(prefix), Some(count)) = (prefix, count) else {
            return Err(USAGE);
        };
        // Unreserved characters only, so that no percent-decoding is needed.
        if prefix.len() > MAX_BULK_PREFIX || !push::valid_id(prefix) {
            return Err("prefix must be 1 to 240 characters of A-Z a-z 0-9 - . _ ~");
        }
        if count > MAX_BULK_SUBSCRIPTIONS {
            return Err("count must be at most 2000000");
        }
        Ok(BulkQuery {
            prefix: prefix.to_owned(),
            count,
            dead_every,
        })
    }
}

/// `GET /subscriptions`: a JSON array of subscriptions, written as they are made.
fn bulk_subscriptions(state: &State, query: &BulkQuery) -> Reply {
    let mut body = Vec::with_capacity(query.count.saturating_mul(200));
    let subscriptions = (0..query.count)
        .map(|i| state.subscription(&bulk_subscription_id(&query.prefix, i, query.dead_every)));
    // Into a Vec, serialising a subscription cannot fail.
    let _ =
        serde::Serializer::collect_seq(&mut serde_json::Serializer::new(&mut body), subscriptions);
    state
        .counters
        .subscriptions_issued
        .fetch_add(query.count as u64, Relaxed);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /push/{id}`: see [`push::decide`].
async fn push(state: &State, id: String, request: Request<hyper::body::Incoming>) -> Reply {
    let counters = &state.counters;
    Counters::bump(&counters.requests);
    match request.version() {
        Version::HTTP_2 => Counters::bump(&counters.http2_requests),
        _ => Counters::bump(&counters.http1_requests),
    }
    let (parts, body) = request.into_parts();
    let decision = if !push::valid_id(&id) {
        Err((StatusCode::NOT_FOUND, "no such subscription"))
    } else if parts.method != Method::POST {
        Err((StatusCode::METHOD_NOT_ALLOWED, "push with POST"))
    } else {
        Ok(())
    };
    let (body, decision) = match decision {
        Err((status, message)) => (Bytes::new(), push::Decision::refuse(status, message)),
        Ok(()) => match Limited::new(body, READ_LIMIT).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                counters.bytes.fetch_add(body.len() as u64, Relaxed);
                let decision = push::decide(state, &id, &parts.headers, &body);
                (body, decision)
            }
            Err(_) => (
                Bytes::new(),
                push::Decision::refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            ),
        },
    };
    state.config.latency.wait().await;
    let mut response = push::response(&decision);
    if decision.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    counters.by_status.bump(decision.status.as_u16());
    if decision.delivered() {
        Counters::bump(&counters.delivered);
        if state.seen.lock().insert(id.as_str().into()) {
            Counters::bump(&counters.distinct_ids);
        } else {
            Counters::bump(&counters.duplicate_ids);
        }
    }
    if state.config.capture > 0 {
        let mut captured = state.captured.lock();
        if captured.len() < state.config.capture {
            captured.push(CapturedPush {
                id,
                version: format!("{:?}", parts.version),
                headers: capture_headers(&parts.headers),
                plaintext: decision.plaintext,
                body: decision.keep_raw.then(|| body.to_vec()),
                status: decision.status.as_u16(),
            });
        }
    }
    response
}

/// `POST /subscribe` with an optional body `{"id": "…", "applicationServerKey": "…"}`: a
/// subscription, 201. With the key (the VAPID public key, base64url, as a page passes it to
/// `pushManager.subscribe`), only pushes signed with it are taken (403 otherwise).
async fn subscribe(state: &State, request: Request<hyper::body::Incoming>) -> Reply {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Subscribe {
        id: Option<String>,
        application_server_key: Option<String>,
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let body = body.to_bytes();
    let (id, key) = if body.iter().all(u8::is_ascii_whitespace) {
        (None, None)
    } else {
        match serde_json::from_slice::<Subscribe>(&body) {
            Ok(subscribe) => (subscribe.id, subscribe.application_server_key),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be {\"id\": \"…\", \"applicationServerKey\": \"…\"}",
                )
            }
        }
    };
    let key = match key.map(|key| URL_SAFE_NO_PAD.decode(key.trim_end_matches('='))) {
        None => None,
        Some(Ok(key)) if key.len() == 65 && key[0] == 0x04 => {
            let mut bytes = [0u8; 65];
            bytes.copy_from_slice(&key);
            Some(bytes)
        }
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "applicationServerKey must be a 65-byte uncompressed P-256 key, base64url",
            )
        }
    };
    // A random id starts with a letter no scripted prefix has.
    let id = id.unwrap_or_else(|| format!("sub-{}", uuid::Uuid::new_v4().simple()));
    if !push::valid_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "id must be 1 to 256 characters of A-Z a-z 0-9 - . _ ~",
        );
    }
    if let Some(key) = key {
        if let Err(message) = state.bind(&id, key) {
            return error(StatusCode::INSUFFICIENT_STORAGE, message);
        }
    }
    Counters::bump(&state.counters.subscriptions_issued);
    json(StatusCode::CREATED, &state.subscription(&id))
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &'static str) -> Reply {
    push::response(&push::Decision::refuse(status, message))
}

/// Optional bytes as base64url without padding, in JSON.
mod base64url {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&URL_SAFE_NO_PAD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exp_of_a_signed_header_is_read_for_the_cache() {
        let signer = volley_webpush::vapid::VapidSigner::new(
            volley_webpush::vapid::VapidKey::generate(),
            "mailto:ops@example.com".into(),
        )
        .unwrap();
        let header = signer.header_at("https://127.0.0.1:1", 1_000_000);
        let exp = vapid_exp(header.to_str().unwrap());
        assert_eq!(
            exp,
            Some(1_000_000 + volley_webpush::vapid::TOKEN_LIFETIME_SECS)
        );
        assert_eq!(vapid_exp("vapid t=a.b.c, k=x"), None);
        assert_eq!(vapid_exp("vapid k=x"), None);
    }

    #[test]
    fn every_kth_bulk_id_is_dead_as_the_demo_counts_them() {
        let ids: Vec<_> = (0..7).map(|i| bulk_subscription_id("run", i, 3)).collect();
        assert_eq!(
            ids,
            ["run-0", "run-1", "dead-2", "run-3", "run-4", "dead-5", "run-6"]
        );
        assert_eq!(bulk_subscription_id("run", 0, 1), "dead-0");
        assert_eq!(bulk_subscription_id("run", 2, 0), "run-2");
    }

    #[test]
    fn the_bulk_query_takes_a_prefix_and_a_bounded_count() {
        assert_eq!(
            BulkQuery::parse("prefix=ab&count=3&dead_every=2"),
            Ok(BulkQuery {
                prefix: "ab".into(),
                count: 3,
                dead_every: 2,
            })
        );
        assert_eq!(
            BulkQuery::parse("count=0&prefix=x.y"),
            Ok(BulkQuery {
                prefix: "x.y".into(),
                count: 0,
                dead_every: 0,
            })
        );
        let most = format!("prefix=a&count={MAX_BULK_SUBSCRIPTIONS}");
        assert!(BulkQuery::parse(&most).is_ok());
        for bad in [
            "",
            "prefix=a",
            "count=1",
            "prefix=&count=1",
            "prefix=a%2Fb&count=1",
            "prefix=a&count=-1",
            "prefix=a&count=1&dead-every=2",
            "prefix=a&count",
            &format!("prefix=a&count={}", MAX_BULK_SUBSCRIPTIONS + 1),
            &format!("prefix={}&count=1", "a".repeat(MAX_BULK_PREFIX + 1)),
        ] {
            assert!(BulkQuery::parse(bad).is_err(), "{bad}");
        }
    }
}
