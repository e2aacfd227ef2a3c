//! A pool of HTTP/2 connections to one provider endpoint.
//!
//! The pool drives the `h2` crate directly rather than hyper's client: hyper spawns a task and
//! hops a channel per request, which measured nearly twice the client CPU per notification
//! (see `docs/adr/001-own-http2-transport.md`).
//!
//! Each of the N slots holds at most one live connection, opened on first use by a spawned task
//! and driven by another spawned task. Requests go to the ready slots in turns of 64
//! consecutive requests (a burst shares one connection's writes) and are multiplexed as HTTP/2
//! streams; `h2` queues a stream until the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` leaves room for it. A connection that reports GOAWAY or an
//! I/O error is dropped from its slot at once (it drains its open streams on its own) and the
//! slot reconnects for the next request.
//!
//! Resend rule: a request is resent only when the server cannot have processed it — it was
//! refused with `REFUSED_STREAM`, or its stream id is above a GOAWAY's last-stream-id (which
//! `h2` reports as a remote GOAWAY error on exactly those streams), or it never left because
//! the connection was already closing. Anything else that breaks after the request left is
//! reported as [`SendError::MaybeSent`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, StatusCode, Uri};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::outcome::{Outcome, Reason};
use crate::stats::{OpenConnection, PoolStats};
use crate::tls::{TlsError, TlsOptions};

/// Response bodies beyond this are cut off: provider bodies are small JSON documents.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The most response header bytes (as HTTP/2 counts them) a connection takes per response.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Consecutive requests one connection takes before the next takes its turn. A burst of a
/// few dozen requests (the single-notification chunks of one `deliver` call) then shares one
/// connection's writes, TLS records and syscalls instead of being dealt out one by one over
/// every connection; a steady load of hundreds in flight still spreads over all of them.
/// A burst meeting a connection whose stream limit is still low (APNs allows one stream until
/// it has seen a valid token) waits on it while the others idle; that lasts one round trip.
const TURN: usize = 64;

/// First pause after a failed connect; doubles per further failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Least time between two connects of one slot, even when the last connection worked: a
/// server that accepts and then closes at once must not see a reconnect storm (APNs treats
/// rapid reconnects as an attack). Requests meanwhile use the other slots or wait.
const MIN_CONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// Where a provider lives: `https://host:port` (TLS) or `http://host:port` (h2c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// True for `https`.
    pub tls: bool,
    /// Host name or address, as used for SNI and `:authority`.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with IPv6 addresses in brackets.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The `:authority` sent with each request: the port is left out when it is the default.
    fn authority(&self) -> Authority {
        let text = if self.port == self.default_port() {
            if self.host.contains(':') {
                format!("[{}]", self.host)
            } else {
                self.host.clone()
            }
        } else {
            self.host_port()
        };
        Authority::from_maybe_shared(Bytes::from(text))
            .expect("a parsed endpoint always makes a valid authority")
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected https://host[:port] or http://host[:port]";
        let s = s.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?} has no scheme: {EXPECTED}"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(format!("unsupported scheme {scheme:?}: {EXPECTED}")),
        };
        // A lone trailing slash is how base URLs are usually written; anything more is a path.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "{s:?} has a path, query or fragment: the endpoint is only scheme, host and port"
            ));
        }
        if rest.contains('@') {
            return Err(format!("{s:?} has user information: {EXPECTED}"));
        }
        if rest.is_empty() {
            return Err(format!("{s:?} has no host: {EXPECTED}"));
        }
        let authority: Authority = rest
            .parse()
            .map_err(|e| format!("{s:?} has an invalid host or port ({e}): {EXPECTED}"))?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} has no host: {EXPECTED}"));
        }
        // Authority::port() hides an out-of-range port as "no port", so read it ourselves.
        let port_text = match authority.as_str().rsplit_once(':') {
            Some((before, port)) if !before.starts_with('[') || before.ends_with(']') => Some(port),
            _ => None,
        };
        let port = match port_text {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some("") => return Err(format!("{s:?} has an empty port")),
            Some(text) => match text.parse::<u16>() {
                Ok(0) => return Err(format!("{s:?} has port 0")),
                Ok(port) => port,
                Err(_) => return Err(format!("{s:?} has an invalid port {text:?}")),
            },
        };
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.host_port())
    }
}

/// Turns a host into the addresses a pool connects to, in the order to try them.
///
/// The default is the system resolver. A resolver that vets addresses (Web Push's SSRF
/// guard) makes the pool connect only to addresses it checked, so that DNS cannot answer
/// differently between the check and the connect. The error is a message for
/// [`SendError::Connect`].
pub trait Resolve: Send + Sync {
    /// The addresses of `host`, each with `port`.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send + 'a>>;
}

/// How a pool connects and sends.
#[derive(Clone)]
pub struct PoolConfig {
    /// The provider endpoint.
    pub endpoint: Endpoint,
    /// Number of HTTP/2 connections kept open.
    pub connections: usize,
    /// Time allowed for one request: waiting for a connection and a stream slot, resends,
    /// sending, and reading the whole response.
    pub request_timeout: Duration,
    /// Time allowed to open a connection (TCP + TLS + HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// TLS options; ignored for h2c.
    pub tls: TlsOptions,
    /// How many times a request the server never processed is resent before giving up.
    pub max_resends: u32,
    /// Where connections go: `None` resolves the endpoint's host with the system resolver.
    pub resolver: Option<Arc<dyn Resolve>>,
    /// Where the pool counts its connections, streams and request latencies (a clone of the
    /// owner's, to read them; a fresh one by default).
    pub stats: PoolStats,
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("endpoint", &self.endpoint)
            .field("connections", &self.connections)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("max_resends", &self.max_resends)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .field("stats", &self.stats)
            .finish()
    }
}

impl PoolConfig {
    /// Defaults for `endpoint`: 4 connections, 10 s request timeout, 5 s connect timeout,
    /// 3 resends, public web roots.
    pub fn new(endpoint: Endpoint) -> Self {
        PoolConfig {
            endpoint,
            connections: 4,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            tls: TlsOptions::default(),
            max_resends: 3,
            resolver: None,
            stats: PoolStats::default(),
        }
    }
}

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (empty for an APNs success).
    pub body: Bytes,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server never processed the request (refused stream, or above a GOAWAY's
    /// last-stream-id) and resends were exhausted; safe to retry.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have been processed before the stream or connection broke.
    #[error("possibly sent: {0}")]
    MaybeSent(String),
    /// No response within the request timeout; the request may have been processed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be opened (refused, TLS failure such as an untrusted CA, ...).
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

impl SendError {
    /// Whether the provider may have received the request, so that a retry may duplicate it.
    pub fn maybe_delivered(&self) -> bool {
        matches!(self, SendError::MaybeSent(_) | SendError::Timeout(_))
    }

    /// The transport reason: `ConnectionLost`, `Timeout` or `ConnectFailed`.
    pub fn reason(&self) -> Reason {
        match self {
            SendError::NotSent(_) | SendError::MaybeSent(_) => Reason::known("ConnectionLost"),
            SendError::Timeout(_) => Reason::known("Timeout"),
            SendError::Connect { .. } => Reason::known("ConnectFailed"),
        }
    }

    /// The transient outcome this failure stands for.
    pub fn into_outcome(self) -> Outcome {
        Outcome::Transient {
            reason: self.reason(),
            retry_after: None,
            maybe_delivered: self.maybe_delivered(),
        }
    }
}

/// A pool of HTTP/2 connections to one endpoint.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.inner.connector.endpoint)
            .field("connections", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    connector: Arc<Connector>,
    slots: Box<[Slot]>,
    /// Requests so far: request `i` tries slot `(i / TURN) % slots` first.
    next: AtomicUsize,
    request_timeout: Duration,
    max_resends: u32,
    scheme: Scheme,
    authority: Authority,
    stats: PoolStats,
}

/// Everything needed to open one connection; shared with the connect tasks.
struct Connector {
    endpoint: Endpoint,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    resolver: Option<Arc<dyn Resolve>>,
    stats: PoolStats,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Conn,
    /// Connect failures in a row, for the back-off.
    failures: u32,
    /// Identifies the connection attempt, so that a late report from an old connection
    /// never clears a newer one.
    generation: u64,
    /// When the last connect of this slot started (or is due to start).
    last_connect: Option<Instant>,
}

#[derive(Default)]
enum Conn {
    /// No connection; the next request opens one.
    #[default]
    Idle,
    /// A connect task is running; it flips the flag when the slot has its new state.
    Connecting(watch::Receiver<bool>),
    /// A live connection that has not reported GOAWAY or an error.
    Ready(SendRequest<Bytes>),
    /// The last connect failed; requests fail fast until `until`.
    Backoff { until: Instant, error: Arc<str> },
}

/// A connection lent to one request attempt.
struct Lease {
    send: SendRequest<Bytes>,
    slot: usize,
    generation: u64,
}

impl Pool {
    /// Creates a pool; connections are opened on first use.
    pub fn new(config: PoolConfig) -> Result<Pool, crate::tls::TlsError> {
        let endpoint = config.endpoint;
        let tls = if endpoint.tls {
            let client = crate::tls::client_config(&config.tls)?;
            let name =
                ServerName::try_from(endpoint.host.clone()).map_err(|_| TlsError::ServerName {
                    host: endpoint.host.clone(),
                })?;
            Some((tokio_rustls::TlsConnector::from(client), name))
        } else {
            None
        };
        let scheme = if endpoint.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority = endpoint.authority();
        // Zero connections would make every request fail; one is the least that can work.
        let slots = (0..config.connections.max(1))
            .map(|_| Slot::default())
            .collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                connector: Arc::new(Connector {
                    endpoint,
                    tls,
                    connect_timeout: config.connect_timeout,
                    resolver: config.resolver,
                    stats: config.stats.clone(),
                }),
                slots,
                next: AtomicUsize::new(0),
                request_timeout: config.request_timeout,
                max_resends: config.max_resends,
                scheme,
                authority,
                stats: config.stats,
            }),
        })
    }

    /// The endpoint this pool sends to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.connector.endpoint
    }

    /// Sends one request and reads its response.
    ///
    /// `make` builds the request head; it is called again for a resend. The body is shared.
    /// A request URI without scheme and authority (just a path) is completed from the
    /// endpoint. The request timeout covers waiting for a connection and a stream slot,
    /// resends, sending and reading the whole response.
    pub async fn send<F>(&self, make: F, body: Bytes) -> Result<Response, SendError>
    where
        F: Fn() -> http::Request<()>,
    {
        let limit = self.inner.request_timeout;
        let stats = &self.inner.stats;
        // The clock is read only for an owner that wants the latency.
        let started = stats.observes().then(std::time::Instant::now);
        let result = match tokio::time::timeout(limit, self.inner.send(&make, &body)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout(limit)),
        };
        // A request that found no connection never reached the provider: its "latency"
        // would be the pool's fail-fast, not the provider's.
        if let Some(started) = started {
            if !matches!(result, Err(SendError::Connect { .. })) {
                stats.observe_request(started.elapsed());
            }
        }
        result
    }

    /// The counts of this pool (shared with every clone of its configuration's `stats`).
    pub fn stats(&self) -> &PoolStats {
        &self.inner.stats
    }
}

/// How one attempt failed.
enum Failure {
    /// The request never left: the connection was already closing or broken.
    Stale(h2::Error),
    /// The server says it did not process the stream: refused, or above GOAWAY's last id.
    Unprocessed(h2::Error),
    /// The stream broke after the request left; the server may have processed it.
    Broken(h2::Error),
    /// `h2` refused the request itself (a malformed head): resending cannot help.
    Rejected(h2::Error),
}

impl Inner {
    async fn send<F>(self: &Arc<Self>, make: &F, body: &Bytes) -> Result<Response, SendError>
    where
        F: Fn() -> http::Request<()>,
    {
        let mut resends = 0u32;
        // A request that meets a connection already known to be closing has not left, so
        // trying again is free; bound it anyway in case connections keep dying at birth.
        let mut stale = 0usize;
        loop {
            let lease = self.acquire().await?;
            let (slot, generation) = (lease.slot, lease.generation);
            match attempt(lease.send, self.complete(make()), body, &self.stats).await {
                Ok(response) => return Ok(response),
                Err(Failure::Stale(e)) => {
                    self.retire(slot, generation);
                    stale += 1;
                    if stale > 2 * self.slots.len() + 2 {
                        return Err(SendError::NotSent(format!("connections keep closing: {e}")));
                    }
                }
                Err(Failure::Unprocessed(e)) => {
                    if e.is_go_away() {
                        self.retire(slot, generation);
                    }
                    if resends >= self.max_resends {
                        return Err(SendError::NotSent(format!(
                            "{e} (given up after {resends} resends)"
                        )));
                    }
                    resends += 1;
                    tracing::debug!(resends, error = %e, "resending a request the server did not process");
                }
                Err(Failure::Broken(e)) => {
                    if e.is_io() || e.is_go_away() {
                        self.retire(slot, generation);
                    }
                    return Err(SendError::MaybeSent(e.to_string()));
                }
                Err(Failure::Rejected(e)) => {
                    return Err(SendError::NotSent(format!(
                        "request refused by http/2: {e}"
                    )));
                }
            }
        }
    }

    /// Completes a path-only URI with the endpoint's scheme and authority, which h2 requires.
    fn complete(&self, request: http::Request<()>) -> http::Request<()> {
        if request.uri().scheme().is_some() && request.uri().authority().is_some() {
            return request;
        }
        let (mut head, ()) = request.into_parts();
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        head.uri = Uri::from_parts(uri).expect("scheme, authority and path make a valid uri");
        http::Request::from_parts(head, ())
    }

    /// A ready connection: the slot whose turn it is when it is ready (the common case: one lock,
    /// one clone), else any ready slot, else the outcome of connecting one.
    async fn acquire(self: &Arc<Self>) -> Result<Lease, SendError> {
        let n = self.slots.len();
        let start = (self.next.fetch_add(1, Ordering::Relaxed) / TURN) % n;
        if let Some(lease) = self.ready_lease(start) {
            return Ok(lease);
        }
        // Bounded: each round either lends, fails, or waits for a connect that finished.
        for _ in 0..4 {
            if let Some(lease) = (1..n).find_map(|i| self.ready_lease((start + i) % n)) {
                return Ok(lease);
            }
            let mut last_error = None;
            let mut wait = None;
            for i in 0..n {
                let index = (start + i) % n;
                let mut state = self.slots[index].state.lock();
                match &state.conn {
                    Conn::Ready(send) => {
                        return Ok(Lease {
                            send: send.clone(),
                            slot: index,
                            generation: state.generation,
                        })
                    }
                    Conn::Connecting(done) => {
                        wait = Some((index, done.clone()));
                        break;
                    }
                    Conn::Backoff { until, error } if Instant::now() < *until => {
                        last_error = Some(error.clone());
                    }
                    Conn::Idle | Conn::Backoff { .. } => {
                        wait = Some((index, self.start_connect(index, &mut state)));
                        break;
                    }
                }
            }
            let Some((index, mut done)) = wait else {
                // Every slot is backing off after failed connects: fail fast.
                return Err(self.connect_error(last_error.as_deref().unwrap_or("backing off")));
            };
            // An error means the connect task was dropped (runtime shutting down).
            let _ = done.wait_for(|finished| *finished).await;
            let state = self.slots[index].state.lock();
            match &state.conn {
                Conn::Ready(send) => {
                    return Ok(Lease {
                        send: send.clone(),
                        slot: index,
                        generation: state.generation,
                    })
                }
                Conn::Backoff { error, .. } => return Err(self.connect_error(error)),
                Conn::Idle | Conn::Connecting(_) => {}
            }
        }
        Err(self.connect_error("connections close as soon as they open"))
    }

    fn ready_lease(&self, index: usize) -> Option<Lease> {
        let state = self.slots[index].state.lock();
        match &state.conn {
            Conn::Ready(send) => Some(Lease {
                send: send.clone(),
                slot: index,
                generation: state.generation,
            }),
            _ => None,
        }
    }

    fn connect_error(&self, message: &str) -> SendError {
        SendError::Connect {
            endpoint: self.connector.endpoint.host_port(),
            message: message.to_string(),
        }
    }

    /// Marks `slot` connecting and spawns the task that connects it; returns the flag that
    /// task raises when done. The task holds the pool weakly so that dropping the pool is
    /// never delayed by a connect in progress.
    fn start_connect(
        self: &Arc<Self>,
        slot: usize,
        state: &mut SlotState,
    ) -> watch::Receiver<bool> {
        let (done_tx, done_rx) = watch::channel(false);
        let now = Instant::now();
        let not_before = state
            .last_connect
            .map(|last| last + MIN_CONNECT_INTERVAL)
            .filter(|due| *due > now);
        state.last_connect = Some(not_before.unwrap_or(now));
        state.generation += 1;
        state.conn = Conn::Connecting(done_rx.clone());
        let generation = state.generation;
        let connector = self.connector.clone();
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(due) = not_before {
                tokio::time::sleep_until(due).await;
            }
            let on_close = CloseHook {
                pool: pool.clone(),
                slot,
                generation,
                open: None,
            };
            let result =
                match tokio::time::timeout(connector.connect_timeout, connector.connect(on_close))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "no http/2 connection within {:?}",
                        connector.connect_timeout
                    )),
                };
            if let Some(pool) = pool.upgrade() {
                let mut state = pool.slots[slot].state.lock();
                if state.generation == generation {
                    match result {
                        Ok(send) => {
                            state.failures = 0;
                            state.conn = Conn::Ready(send);
                        }
                        Err(error) => {
                            tracing::debug!(endpoint = %connector.endpoint, %error, "connect failed");
                            state.failures += 1;
                            state.conn = Conn::Backoff {
                                until: Instant::now() + backoff(state.failures),
                                error: error.into(),
                            };
                        }
                    }
                }
            }
            let _ = done_tx.send(true);
        });
        done_rx
    }

    /// Takes a connection out of service (GOAWAY, I/O error) unless the slot already moved on.
    fn retire(&self, slot: usize, generation: u64) {
        let mut state = self.slots[slot].state.lock();
        if state.generation == generation && matches!(state.conn, Conn::Ready(_)) {
            state.conn = Conn::Idle;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Tells the pool when a connection's driver ends.
struct CloseHook {
    pool: Weak<Inner>,
    slot: usize,
    generation: u64,
    /// Counts the connection open from its handshake until its driver ends.
    open: Option<OpenConnection>,
}

impl CloseHook {
    fn closed(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.retire(self.slot, self.generation);
        }
    }
}

impl Connector {
    /// Opens TCP, TLS and HTTP/2; the error is a message for [`SendError::Connect`].
    async fn connect(&self, mut on_close: CloseHook) -> Result<SendRequest<Bytes>, String> {
        let endpoint = &self.endpoint;
        let tcp = match &self.resolver {
            None => TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                .await
                .map_err(|e| format!("tcp connect failed: {e}"))?,
            Some(resolver) => {
                let addresses = resolver.resolve(&endpoint.host, endpoint.port).await?;
                connect_any(&addresses).await?
            }
        };
        // Requests are small and latency-bound; never let Nagle hold a HEADERS frame back.
        let _ = tcp.set_nodelay(true);
        on_close.open = Some(self.stats.connection());
        match &self.tls {
            None => handshake(tcp, on_close).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(describe_tls_error)?;
                if let Some(alpn) = tls.get_ref().1.alpn_protocol() {
                    if alpn != b"h2" {
                        return Err(format!(
                            "server chose protocol {:?} instead of h2",
                            String::from_utf8_lossy(alpn)
                        ));
                    }
                }
                handshake(tls, on_close).await
            }
        }
    }
}

/// Connects to the first address that accepts, in the resolver's order; the error is a
/// message for [`SendError::Connect`]. Public for clients that open connections of their own
/// to resolver-checked addresses (Web Push over HTTP/1.1).
pub async fn connect_any(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last_error = Some(format!("tcp connect to {address} failed: {e}")),
        }
    }
    Err(last_error.unwrap_or_else(|| "the resolver returned no address".to_string()))
}

/// A TLS handshake failure as a message for [`SendError::Connect`], saying when the server's
/// certificate is not trusted and how to trust it.
pub fn describe_tls_error(e: std::io::Error) -> String {
    let untrusted = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            // BadSignature: an issuer of the same name but another key, e.g. a fake's CA
            // regenerated since its PEM was saved.
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                )
            )
        });
    if untrusted {
        format!(
            "tls handshake failed: {e} (the server's certificate is not trusted: \
             give its CA with extra_ca_pem)"
        )
    } else {
        format!("tls handshake failed: {e}")
    }
}

/// Runs the HTTP/2 handshake, spawns the connection driver and waits one PING round trip, so
/// that the server's SETTINGS (its stream limit above all) are applied before the first
/// request: APNs allows one stream until it has seen a valid token.
async fn handshake<T>(io: T, on_close: CloseHook) -> Result<SendRequest<Bytes>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        .enable_push(false)
        // Providers answer with a few small headers; h2's default allows 16 MiB of them per
        // response, which a Web Push endpoint (a user's choice of server) could send.
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("http/2 handshake failed: {e}"))?;
    let mut ping = connection.ping_pong();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "http/2 connection ended");
        }
        on_close.closed();
    });
    if let Some(ping) = ping.as_mut() {
        ping.ping(h2::Ping::opaque())
            .await
            .map_err(|e| format!("http/2 settings exchange failed: {e}"))?;
    }
    Ok(send)
}

/// One try of one request on one connection.
async fn attempt(
    send: SendRequest<Bytes>,
    request: http::Request<()>,
    body: &Bytes,
    stats: &PoolStats,
) -> Result<Response, Failure> {
    let mut send = send.ready().await.map_err(Failure::Stale)?;
    let end_of_stream = body.is_empty();
    let (response, mut stream) = send.send_request(request, end_of_stream).map_err(|e| {
        if e.is_go_away() || e.is_io() || e.is_reset() {
            Failure::Stale(e)
        } else {
            Failure::Rejected(e)
        }
    })?;
    drop(send);
    // Until the response is read in full, or the attempt is dropped (its request timed out).
    let _in_flight = stats.stream();
    if !end_of_stream {
        // A failure here is h2's "inactive stream": the connection task closed the stream
        // meanwhile (refused, above a GOAWAY, reset, connection lost). The response future
        // resolves at once with that cause, which is what decides between resend and
        // MaybeSent, so fall through to it.
        let _ = stream.send_data(body.clone(), true);
    }
    let response = response.await.map_err(classify_stream_error)?;
    let (head, mut recv) = response.into_parts();
    // The server has answered: from here on a failure can no longer mean "not processed".
    let body = read_body(&mut recv).await.map_err(Failure::Broken)?;
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
    })
}

fn classify_stream_error(e: h2::Error) -> Failure {
    let refused = e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM);
    // h2 reports a remote GOAWAY error only on streams above the GOAWAY's last-stream-id
    // (Streams::recv_go_away); streams at or below it end with an I/O error if the
    // connection closes before they finish.
    let above_goaway = e.is_go_away() && e.is_remote();
    if refused || above_goaway {
        Failure::Unprocessed(e)
    } else {
        Failure::Broken(e)
    }
}

/// Reads the body up to [`MAX_RESPONSE_BODY`], handing flow-control capacity back as it goes;
/// a longer body is cut off and the stream cancelled when `recv` is dropped.
async fn read_body(recv: &mut h2::RecvStream) -> Result<Bytes, h2::Error> {
    if recv.is_end_stream() {
        return Ok(Bytes::new());
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        let take = chunk.len().min(MAX_RESPONSE_BODY - len);
        len += take;
        match (&mut first, &mut joined) {
            (None, _) => first = Some(chunk.slice(..take)),
            (Some(head), None) => {
                let mut buffer = BytesMut::with_capacity(head.len() + take);
                buffer.extend_from_slice(head);
                buffer.extend_from_slice(&chunk[..take]);
                joined = Some(buffer);
            }
            (Some(_), Some(buffer)) => buffer.extend_from_slice(&chunk[..take]),
        }
        if len == MAX_RESPONSE_BODY {
            break;
        }
    }
    Ok(match (first, joined) {
        (_, Some(buffer)) => buffer.freeze(),
        (Some(only), None) => only,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_ports() {
        let cases = [
            (
                "https://api.push.apple.com",
                true,
                "api.push.apple.com",
                443,
            ),
            (
                "https://api.push.apple.com/",
                true,
                "api.push.apple.com",
                443,
            ),
            (
                "https://api.push.apple.com:2197",
                true,
                "api.push.apple.com",
                2197,
            ),
            ("http://127.0.0.1:8080", false, "127.0.0.1", 8080),
            ("http://localhost", false, "localhost", 80),
            (
                "HTTPS://fcm.googleapis.com",
                true,
                "fcm.googleapis.com",
                443,
            ),
            ("https://[::1]:8443", true, "::1", 8443),
            ("https://[::1]", true, "::1", 443),
        ];
        for (text, tls, host, port) in cases {
            let endpoint: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                endpoint,
                Endpoint {
                    tls,
                    host: host.into(),
                    port
                },
                "{text}"
            );
        }
    }

    #[test]
    fn bad_endpoints_are_rejected_with_a_reason() {
        let cases = [
            ("api.push.apple.com:443", "no scheme"),
            ("ftp://host:21", "unsupported scheme"),
            ("https://host:443/3/device", "path"),
            ("https://host?x=1", "path, query"),
            ("https://user@host", "user information"),
            ("https://", "no host"),
            ("https://host:", "empty port"),
            ("https://host:0", "port 0"),
            ("https://host:99999", "invalid port"),
            ("https://ho st", "invalid host or port"),
            ("garbage", "no scheme"),
        ];
        for (text, expected) in cases {
            let error = text.parse::<Endpoint>().expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn endpoints_display_as_they_parse() {
        for text in [
            "https://api.push.apple.com:443",
            "http://127.0.0.1:80",
            "https://[::1]:8443",
        ] {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.to_string(), text);
            assert_eq!(endpoint.to_string().parse::<Endpoint>().unwrap(), endpoint);
        }
    }

    #[test]
    fn authority_leaves_out_default_ports() {
        let authority = |text: &str| text.parse::<Endpoint>().unwrap().authority().to_string();
        assert_eq!(
            authority("https://api.push.apple.com"),
            "api.push.apple.com"
        );
        assert_eq!(
            authority("https://api.push.apple.com:2197"),
            "api.push.apple.com:2197"
        );
        assert_eq!(authority("http://[::1]:80"), "[::1]");
    }

    #[test]
    fn send_errors_map_to_transient_outcomes() {
        let cases = [
            (SendError::NotSent("x".into()), "ConnectionLost", false),
            (SendError::MaybeSent("x".into()), "ConnectionLost", true),
            (SendError::Timeout(Duration::from_secs(1)), "Timeout", true),
            (
                SendError::Connect {
                    endpoint: "h:1".into(),
                    message: "refused".into(),
                },
                "ConnectFailed",
                false,
            ),
        ];
        for (error, reason, maybe) in cases {
            assert_eq!(
                error.into_outcome(),
                Outcome::Transient {
                    reason: Reason::known(reason),
                    retry_after: None,
                    maybe_delivered: maybe,
                }
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), MIN_BACKOFF);
        assert_eq!(backoff(2), MIN_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn pool_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Pool>();
    }
}
