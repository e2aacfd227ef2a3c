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
use std::thread::JoinHandle;

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
use crate::server::{capture_headers, origin, unix_now, validate_injection};
use crate::{tls, FakeError, Latency};
use keyring::Keyring;
pub use push::MAX_BODY;

/// Bodies are read up to this much; anything above [`MAX_BODY`] is refused anyway.
const READ_LIMIT: usize = 64 * 1024;
/// Verified VAPID headers remembered (a sender reuses one JWT for many messages).
const VAPID_CACHE: usize = 1024;

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
    /// Connections accepted.
    pub connections: u64,
    /// Subscriptions handed out by `POST /subscribe`.
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
    ca_pem: String,
    ca_path: PathBuf,
    /// Keeps the temporary CA file alive (and removes it) when no `ca_out` was given.
    _ca_temp: Option<tempfile::TempPath>,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeWebPush {
    /// Starts serving on `listener` (already bound, e.g. to 127.0.0.1:0) on a dedicated OS
    /// thread with its own tokio runtime, so it works from any caller runtime (or none).
    pub fn start(
        config: FakeWebPushConfig,
        listener: std::net::TcpListener,
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
        let minted = tls::mint()?;
        let (ca_path, ca_temp) = tls::write_ca(&minted.ca_pem, config.ca_out.as_deref())?;
        let alpn: &[&[u8]] = if config.http1_only {
            &[b"http/1.1"]
        } else {
            &[b"h2", b"http/1.1"]
        };
        let acceptor = TlsAcceptor::from(minted.with_alpn(alpn));

        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
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
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
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
            config,
        });
        let (stop, stopped) = oneshot::channel();
        let served = Served {
            state: state.clone(),
            acceptor,
            builder: Arc::new(builder),
        };
        let thread = std::thread::Builder::new()
            .name("volley-fake-webpush".into())
            .spawn(move || run(runtime, listener, served, stopped))?;
        Ok(FakeWebPush {
            addr,
            ca_pem: minted.ca_pem,
            ca_path,
            _ca_temp: ca_temp,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        self.stop_and_join();
        self.state.counters.snapshot()
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeWebPush {
    fn drop(&mut self) {
        self.stop_and_join();
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
    /// `Authorization` values that verified, with their JWT's `exp`.
    vapid_cache: Mutex<HashMap<Box<[u8]>, u64>>,
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

    /// Checks `Authorization: vapid t=…, k=…` against this origin (see the module docs for
    /// 401 versus 403).
    fn check_vapid(&self, authorization: Option<&HeaderValue>) -> Result<(), push::Decision> {
        let refuse = |status, message| {
            Counters::bump(&self.counters.vapid_failures);
            Err(push::Decision::refuse(status, message))
        };
        let Some(authorization) = authorization else {
            return refuse(StatusCode::UNAUTHORIZED, "missing VAPID authorization");
        };
        let now = u64::try_from(unix_now()).unwrap_or(0);
        if let Some(&exp) = self.vapid_cache.lock().get(authorization.as_bytes()) {
            if now < exp {
                return Ok(());
            }
        }
        let Ok(text) = authorization.to_str() else {
            return refuse(StatusCode::UNAUTHORIZED, "malformed VAPID authorization");
        };
        match volley_webpush::vapid::verify(text, &self.origin, now) {
            Ok(_) => {
                // Verification is an ECDSA check; a sender reuses one JWT for hours.
                if let Some(exp) = vapid_exp(text) {
                    let mut cache = self.vapid_cache.lock();
                    if cache.len() >= VAPID_CACHE {
                        cache.clear();
                    }
                    cache.insert(authorization.as_bytes().into(), exp);
                }
                Ok(())
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
    match (request.method(), path) {
        (&Method::GET, "/stats") => json(StatusCode::OK, &state.counters.snapshot()),
        (&Method::GET, "/requests") => json(StatusCode::OK, &*state.captured.lock()),
        (&Method::POST, "/subscribe") => subscribe(state, request).await,
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
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

/// `POST /subscribe` with an optional body `{"id": "…"}`: a subscription, 201.
async fn subscribe(state: &State, request: Request<hyper::body::Incoming>) -> Reply {
    #[derive(Deserialize)]
    struct Subscribe {
        id: Option<String>,
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    let body = body.to_bytes();
    let id = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Subscribe>(&body) {
            Ok(subscribe) => subscribe.id,
            Err(_) => return error(StatusCode::BAD_REQUEST, "body must be {\"id\": \"…\"}"),
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
}
