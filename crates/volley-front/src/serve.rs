//! The front's accept loop and HTTP/1.1 connections, with the limits `axum::serve` lacks: a
//! header-read timeout, a body that must keep a minimum rate, an idle keep-alive timeout, a
//! cap on open connections and a cap on large bodies read and parsed at once.
//!
//! Each connection keeps a few counters ([`ConnState`]): bytes read and written, requests
//! started and answered, request-body bytes. One timer per connection wakes a few times per
//! shortest timeout, reads the counters and decides what the connection is doing (waiting
//! for a request head, receiving a body, waiting for a handler, idle) and since when. So a
//! request costs a few counter updates in its own task: no allocation, no timer, no lock.
//! hyper's own `header_read_timeout` was not used: its clock starts when the previous answer
//! is written, so an idle keep-alive connection would be closed at the header timeout, and it
//! boxes a new timer for every request (docs/adr/005-front-connection-timer.md).
//!
//! Timeouts are checked every quarter of the shortest one, so each fires up to a quarter late
//! (a 10 s header timeout closes a connection between 10 and 12.5 s).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use volley_config::FrontConfig;

use crate::error::{ApiError, Code};
use crate::metrics::Route;
use crate::FrontState;

/// `Retry-After` seconds of a `busy` answer: connections and large bodies come and go fast.
const BUSY_RETRY_AFTER: u32 = 1;
/// Connections refused over the cap that may be answering at once; past it one is closed
/// without an answer (each holds a socket for up to [`REFUSE_LINGER`]).
const MAX_REFUSING: usize = 256;
/// How long a refused connection may take to read its 503 before it is closed.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Descriptors kept for what is not a client connection (the controller link, the runtime,
/// logs), on top of [`MAX_REFUSING`], when the open-file limit caps the connections.
const RESERVED_FDS: usize = 64;
/// Pause after an accept error that is not the client's (e.g. the open-file limit).
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection limits of `[front]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header_read: Duration,
    body_read: Duration,
    body_min_rate: u64,
    idle: Duration,
    max_connections: usize,
    large_body_bytes: u64,
    max_large_bodies: usize,
    /// How often each connection's counters are read.
    tick: Duration,
}

impl Limits {
    pub(crate) fn new(front: &FrontConfig) -> Limits {
        let shortest = front
            .header_read_timeout
            .min(front.body_read_timeout)
            .min(front.idle_timeout);
        Limits {
            header_read: front.header_read_timeout,
            body_read: front.body_read_timeout,
            body_min_rate: front.body_min_bytes_per_second.max(1),
            idle: front.idle_timeout,
            max_connections: front.max_connections.max(1),
            large_body_bytes: front.large_body_bytes as u64,
            max_large_bodies: front.max_large_bodies.max(1),
            tick: (shortest / 4).max(Duration::from_millis(1)),
        }
    }

    /// How long a connection told to close may take before it is dropped.
    fn close_wait(&self) -> Duration {
        self.tick * 4
    }
}

/// What every connection shares.
struct Shared {
    limits: Limits,
    state: FrontState,
    service: TowerToHyperService<Router>,
    http: http1::Builder,
    /// Connections over the cap being answered 503.
    refusing: AtomicUsize,
    /// The whole answer to a connection over the cap.
    refusal: Bytes,
}

/// Serves `router` on `listener` until `shutdown` resolves, then tells every connection to
/// close once its request in flight is answered and waits for them all. Dropping the future
/// drops every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: FrontState,
    shutdown: impl Future<Output = ()>,
) {
    let mut limits = Limits::new(&state.inner.config.front);
    if let Some(files) = open_files_limit() {
        let room = files.saturating_sub(RESERVED_FDS + MAX_REFUSING).max(1);
        if room < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                allowed = room,
                open_files_limit = files,
                "front.max_connections lowered to what the open-file limit allows; raise the \
                 limit (ulimit -n, LimitNOFILE) to allow more"
            );
            limits.max_connections = room;
        }
    }
    let mut http = http1::Builder::new();
    // The connection's own timer (below) reads the head's progress; hyper's would need a
    // timer allocated per request.
    http.header_read_timeout(None);
    let shared = Arc::new(Shared {
        refusal: refusal_answer(limits.max_connections),
        limits,
        state,
        service: TowerToHyperService::new(router),
        http,
        refusing: AtomicUsize::new(0),
    });
    let (signal, drain) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if shared.state.inner.metrics.connections.fetch_add(1, Relaxed) >= shared.limits.max_connections {
                        shared.state.inner.metrics.connections.fetch_sub(1, Relaxed);
                        refuse(stream, &shared);
                        continue;
                    }
                    connections.spawn(connection(stream, shared.clone(), signal.clone()));
                }
                Err(error) => accept_failed(error).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Every connection waits on `signal.closed()`: dropping the one receiver tells them all.
    drop(drain);
    while connections.join_next().await.is_some() {}
}

/// What a connection is doing, as its counters show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head: from the connection's opening, or from the
    /// first byte after the last answer.
    Head,
    /// A handler is reading the request body.
    Body,
    /// A handler is working; its own deadlines bound it.
    Handler,
    /// Nothing to do since the last answer.
    Idle,
}

/// Why a request was refused before its handler answered (in [`ConnState::refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The body came in slower than the minimum rate: 408.
    SlowBody = 1,
    /// Every large-body slot is taken: 503 `busy`.
    Busy = 2,
}

/// One connection's counters. Only the connection's own task writes them (its IO, its
/// service, its request bodies and its timer all run there), so a plain load and store
/// counts; atomics only make the struct shareable.
#[derive(Default)]
struct ConnState {
    read: AtomicU64,
    written: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
    /// `read` when the last answer was produced: more means a new head has begun.
    read_at_finish: AtomicU64,
    body_open: AtomicBool,
    body_bytes: AtomicU64,
    refusal: AtomicU8,
    holds_large: AtomicBool,
}

/// A connection's counters and what every connection shares, behind one reference count:
/// its socket, its service, each request's future and body hold one.
struct Conn {
    shared: Arc<Shared>,
    counters: ConnState,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

impl ConnState {
    fn phase(&self) -> Phase {
        let started = self.started.load(Relaxed);
        if started > self.finished.load(Relaxed) {
            if self.body_open.load(Relaxed) {
                Phase::Body
            } else {
                Phase::Handler
            }
        } else if started == 0 || self.read.load(Relaxed) > self.read_at_finish.load(Relaxed) {
            Phase::Head
        } else {
            Phase::Idle
        }
    }

    fn refusal(&self) -> Option<Refusal> {
        match self.refusal.load(Relaxed) {
            1 => Some(Refusal::SlowBody),
            2 => Some(Refusal::Busy),
            _ => None,
        }
    }

    fn refuse(&self, refusal: Refusal) {
        self.refusal.store(refusal as u8, Relaxed);
    }
}

/// One connection: hyper's HTTP/1.1 state machine, the drain signal and the timer.
async fn connection(stream: TcpStream, shared: Arc<Shared>, signal: watch::Sender<()>) {
    let _open = Open(shared.clone());
    let limits = shared.limits;
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        counters: ConnState::default(),
    });
    let io = TokioIo::new(Metered {
        stream,
        conn: conn.clone(),
    });
    let service = ConnService { conn: conn.clone() };
    let mut http = pin!(shared.http.serve_connection(io, service));
    let mut drain = pin!(signal.closed());
    let mut draining = false;
    let mut watch = Watch::new(Instant::now());
    let mut timer = pin!(tokio::time::sleep(limits.tick));
    loop {
        tokio::select! {
            _ = http.as_mut() => break,
            () = &mut drain, if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
            () = &mut timer => {
                let now = Instant::now();
                match watch.check(&conn.counters, &limits, now) {
                    Verdict::Keep => {}
                    Verdict::Finish(reason) => {
                        tracing::debug!(reason, "closing connection");
                        http.as_mut().graceful_shutdown();
                    }
                    Verdict::Close(reason) => {
                        tracing::debug!(reason, "dropping connection");
                        break;
                    }
                }
                timer.as_mut().reset(now + limits.tick);
            }
        }
    }
}

/// Counts a connection open until its task ends.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.state.inner.metrics.connections.fetch_sub(1, Relaxed);
    }
}

/// What the timer decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Close once the request in flight, if any, is answered.
    Finish(&'static str),
    /// Drop the connection now.
    Close(&'static str),
}

/// A connection's timer: the phase seen at the last check and since when.
struct Watch {
    phase: Phase,
    since: Instant,
    started: u64,
    written: u64,
    /// Body bytes when the body phase was first seen.
    body_base: u64,
    /// When the connection was told to close.
    closing: Option<Instant>,
}

impl Watch {
    /// A new connection waits for its first request head.
    fn new(now: Instant) -> Watch {
        Watch {
            phase: Phase::Head,
            since: now,
            started: 0,
            written: 0,
            body_base: 0,
            closing: None,
        }
    }

    fn check(&mut self, conn: &ConnState, limits: &Limits, now: Instant) -> Verdict {
        if let Some(since) = self.closing {
            if now.duration_since(since) >= limits.close_wait() {
                return Verdict::Close("it did not close in time after being told to");
            }
            return Verdict::Keep;
        }
        let phase = conn.phase();
        let started = conn.started.load(Relaxed);
        let written = conn.written.load(Relaxed);
        if phase != self.phase || started != self.started {
            self.phase = phase;
            self.since = now;
            self.body_base = conn.body_bytes.load(Relaxed);
        } else if phase == Phase::Idle && written != self.written {
            // An answer still going out to a slow reader is not idleness.
            self.since = now;
        }
        self.started = started;
        self.written = written;
        let waited = now.duration_since(self.since);
        match phase {
            Phase::Head if waited >= limits.header_read => {
                self.closing = Some(now);
                Verdict::Close("the request head took longer than front.header_read_timeout")
            }
            Phase::Body => {
                // The deadline moves a second later for every `body_min_rate` bytes received.
                let received = conn.body_bytes.load(Relaxed) - self.body_base;
                let earned = Duration::from_secs_f64(received as f64 / limits.body_min_rate as f64);
                if waited < limits.body_read + earned {
                    return Verdict::Keep;
                }
                // The service answers 408 at its next poll; whatever else holds the body,
                // the connection is dropped after `close_wait`.
                conn.refuse(Refusal::SlowBody);
                self.closing = Some(now);
                Verdict::Finish(
                    "the request body came in slower than front.body_min_bytes_per_second",
                )
            }
            Phase::Idle if waited >= limits.idle => {
                self.closing = Some(now);
                Verdict::Finish("the connection was idle for front.idle_timeout")
            }
            _ => Verdict::Keep,
        }
    }
}

/// The socket, counting bytes both ways for the timer.
struct Metered {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            add(&this.conn.counters.read, n as u64);
        }
        poll
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            add(&this.conn.counters.written, n as u64);
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            add(&this.conn.counters.written, n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service.
struct ConnService {
    conn: Arc<Conn>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let counters = &self.conn.counters;
        add(&counters.started, 1);
        counters.refusal.store(0, Relaxed);
        let (parts, incoming) = request.into_parts();
        let (body, route) = if incoming.is_end_stream() {
            (Body::new(incoming), Route::Other)
        } else {
            counters.body_open.store(true, Relaxed);
            let route = body_route(parts.uri.path());
            // Until the body is dropped (`Watched::drop`).
            self.conn
                .shared
                .state
                .inner
                .metrics
                .bodies_in_flight
                .fetch_add(1, Relaxed);
            let watched = Watched {
                inner: incoming,
                conn: self.conn.clone(),
                received: 0,
                large: false,
            };
            (Body::new(watched), route)
        };
        let inner = hyper::service::Service::call(
            &self.conn.shared.service,
            Request::from_parts(parts, body),
        );
        Answer {
            inner,
            conn: self.conn.clone(),
            route,
        }
    }
}

/// The route of a request with a body, for counting refusals the router never sees; only
/// the submission endpoints take bodies.
fn body_route(path: &str) -> Route {
    match path {
        "/api/push" => Route::Gorush,
        "/push" => Route::Gaurun,
        path if path.starts_with("/v1/apps/") && path.ends_with("/notifications") => {
            Route::Notifications
        }
        _ => Route::Other,
    }
}

/// The router's answer, or the refusal decided while its body was read.
struct Answer {
    inner: TowerToHyperServiceFuture<Router, Request<Body>>,
    conn: Arc<Conn>,
    route: Route,
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(refusal) = self.conn.counters.refusal() {
            return Poll::Ready(Ok(self.refuse(refusal)));
        }
        let poll = Pin::new(&mut self.inner).poll(cx);
        if poll.is_pending() {
            // Set by the body just now (no large-body slot) or by the timer: the handler,
            // still waiting for its body, has done nothing yet and is dropped with this future.
            if let Some(refusal) = self.conn.counters.refusal() {
                return Poll::Ready(Ok(self.refuse(refusal)));
            }
        }
        poll
    }
}

impl Answer {
    fn refuse(&self, refusal: Refusal) -> Response {
        let limits = &self.conn.shared.limits;
        let error = match refusal {
            Refusal::SlowBody => ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request body came in slower than {} bytes a second after {} ms \
                     (front.body_min_bytes_per_second, front.body_read_timeout)",
                    limits.body_min_rate,
                    limits.body_read.as_millis()
                ),
            ),
            Refusal::Busy => ApiError::new(
                Code::Busy,
                format!(
                    "this front is already reading {} bodies above {} bytes \
                     (front.max_large_bodies, front.large_body_bytes); retry after Retry-After, \
                     or on another front",
                    limits.max_large_bodies, limits.large_body_bytes
                ),
            )
            .retry_after(BUSY_RETRY_AFTER),
        };
        let metrics = &self.conn.shared.state.inner.metrics;
        let code = error.code;
        let mut response = error.into_response();
        // The rest of the body is not read: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let status = response.status().as_u16();
        // The client's slowness is not the front's response time.
        metrics.request(self.route, status, Duration::ZERO);
        metrics.rejected(code);
        tracing::debug!(
            route = self.route.as_str(),
            status,
            code = code.as_str(),
            "request refused"
        );
        response
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let counters = &self.conn.counters;
        add(&counters.finished, 1);
        counters
            .read_at_finish
            .store(counters.read.load(Relaxed), Relaxed);
        if counters.holds_large.swap(false, Relaxed) {
            self.conn
                .shared
                .state
                .inner
                .metrics
                .large_bodies
                .fetch_sub(1, Relaxed);
        }
    }
}

/// A request body that counts its bytes for the timer and takes a large-body slot once it
/// is, or says it will be, above `front.large_body_bytes`.
struct Watched {
    inner: Incoming,
    conn: Arc<Conn>,
    received: u64,
    /// Whether this body holds a large-body slot (or found none).
    large: bool,
}

impl Watched {
    /// Takes a large-body slot; without one, the request is refused and the body reads no
    /// more.
    fn take_large(&mut self) -> bool {
        self.large = true;
        let limit = self.conn.shared.limits.max_large_bodies;
        let taken = self
            .conn
            .shared
            .state
            .inner
            .metrics
            .large_bodies
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .is_ok();
        if taken {
            self.conn.counters.holds_large.store(true, Relaxed);
        } else {
            self.conn.counters.refuse(Refusal::Busy);
        }
        taken
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // Refused: the answer is already decided (see `Answer::poll`).
        if this.conn.counters.refusal().is_some() {
            return Poll::Pending;
        }
        let limit = this.conn.shared.limits.large_body_bytes;
        // Read only once a handler wants it, that is after authentication: a caller without a
        // key never holds a slot.
        if !this.large && this.inner.size_hint().lower() > limit && !this.take_large() {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.received += n;
                    add(&this.conn.counters.body_bytes, n);
                    if !this.large && this.received > limit && !this.take_large() {
                        return Poll::Pending;
                    }
                }
            }
            Poll::Ready(_) => this.conn.counters.body_open.store(false, Relaxed),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.conn.counters.body_open.store(false, Relaxed);
        let metrics = &self.conn.shared.state.inner.metrics;
        metrics.bodies_in_flight.fetch_sub(1, Relaxed);
    }
}

/// Answers a connection over `front.max_connections` with 503 and closes it, reading what
/// the client sent meanwhile so that the close does not reset the answer away.
fn refuse(stream: TcpStream, shared: &Arc<Shared>) {
    let metrics = &shared.state.inner.metrics;
    metrics.rejected(Code::Busy);
    metrics.connections_refused.fetch_add(1, Relaxed);
    if shared.refusing.fetch_add(1, Relaxed) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Relaxed);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut stream = stream;
        let answer = async {
            stream.write_all(&shared.refusal).await?;
            stream.shutdown().await?;
            let mut sink = [0; 512];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSE_LINGER, answer).await;
        shared.refusing.fetch_sub(1, Relaxed);
    });
}

/// The bytes of the answer to a connection over the cap, written without hyper.
fn refusal_answer(max_connections: usize) -> Bytes {
    let body = serde_json::json!({"error": {
        "code": Code::Busy.as_str(),
        "message": format!(
            "this front has {max_connections} connections open (front.max_connections); \
             retry after Retry-After, or on another front"
        ),
    }})
    .to_string();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {BUSY_RETRY_AFTER}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Waits after an accept error unless it concerns only that one connection.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; pausing the accept loop for 1 s");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// The soft open-file limit (`ulimit -n`), where the system says.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let front = FrontConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            body_min_bytes_per_second: 1000,
            idle_timeout: Duration::from_secs(60),
            ..FrontConfig::default()
        };
        Limits::new(&front)
    }

    /// Checks `watch` at `at` seconds after `start`.
    fn at(watch: &mut Watch, conn: &ConnState, start: Instant, seconds: f64) -> Verdict {
        watch.check(conn, &limits(), start + Duration::from_secs_f64(seconds))
    }

    #[test]
    fn a_first_request_head_must_come_within_the_header_timeout() {
        let start = Instant::now();
        let conn = ConnState::default();
        let mut watch = Watch::new(start);
        assert_eq!(at(&mut watch, &conn, start, 5.0), Verdict::Keep);
        add(&conn.read, 10);
        assert_eq!(at(&mut watch, &conn, start, 7.5), Verdict::Keep);
        assert!(matches!(
            at(&mut watch, &conn, start, 10.0),
            Verdict::Close(_)
        ));
    }

    #[test]
    fn idle_keep_alive_waits_for_the_idle_timeout_then_a_head_for_the_header_timeout() {
        let start = Instant::now();
        let conn = ConnState::default();
        let mut watch = Watch::new(start);
        // One request answered: the connection is idle, not waiting for a head.
        add(&conn.read, 100);
        add(&conn.started, 1);
        add(&conn.finished, 1);
        conn.read_at_finish.store(100, Relaxed);
        add(&conn.written, 50);
        assert_eq!(at(&mut watch, &conn, start, 1.0), Verdict::Keep);
        assert_eq!(at(&mut watch, &conn, start, 40.0), Verdict::Keep);
        // The next head begins: it has the header timeout, counted from when it was seen.
        add(&conn.read, 3);
        assert_eq!(at(&mut watch, &conn, start, 50.0), Verdict::Keep);
        assert_eq!(at(&mut watch, &conn, start, 59.0), Verdict::Keep);
        assert!(matches!(
            at(&mut watch, &conn, start, 60.0),
            Verdict::Close(_)
        ));

        let conn = ConnState::default();
        let mut watch = Watch::new(start);
        add(&conn.started, 1);
        add(&conn.finished, 1);
        assert_eq!(at(&mut watch, &conn, start, 1.0), Verdict::Keep);
        assert_eq!(at(&mut watch, &conn, start, 60.0), Verdict::Keep);
        assert!(matches!(
            at(&mut watch, &conn, start, 61.0),
            Verdict::Finish(_)
        ));
    }

    #[test]
    fn a_body_earns_a_second_per_min_rate_bytes_and_a_handler_has_no_timeout() {
        let start = Instant::now();
        let conn = ConnState::default();
        let mut watch = Watch::new(start);
        add(&conn.started, 1);
        conn.body_open.store(true, Relaxed);
        assert_eq!(at(&mut watch, &conn, start, 0.0), Verdict::Keep);
        // 5,000 bytes at 1,000 a second: 10 s + 5 s.
        add(&conn.body_bytes, 5000);
        assert_eq!(at(&mut watch, &conn, start, 14.0), Verdict::Keep);
        assert!(matches!(
            at(&mut watch, &conn, start, 15.0),
            Verdict::Finish(_)
        ));
        assert_eq!(conn.refusal(), Some(Refusal::SlowBody));

        let conn = ConnState::default();
        let mut watch = Watch::new(start);
        add(&conn.started, 1);
        assert_eq!(at(&mut watch, &conn, start, 0.0), Verdict::Keep);
        assert_eq!(at(&mut watch, &conn, start, 3600.0), Verdict::Keep);
    }

    #[test]
    fn routes_of_bodies() {
        assert_eq!(
            body_route("/v1/apps/shop/notifications"),
            Route::Notifications
        );
        assert_eq!(body_route("/api/push"), Route::Gorush);
        assert_eq!(body_route("/push"), Route::Gaurun);
        assert_eq!(body_route("/v1/jobs/x"), Route::Other);
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let answer = refusal_answer(7);
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "busy");
    }
}
