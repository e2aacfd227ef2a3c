//! The server: its thread, the accept loops, HTTP/2 connections and streams, and `/stats`.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use jsonwebtoken::DecodingKey;
use rand::Rng as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{spawn_local, LocalSet};
use tokio_rustls::TlsAcceptor;

use crate::counters::Counters;
use crate::shim::{Shim, ShimControl};
use crate::{apns, fcm, tls, Captured, FakeConfig, FakeError, Latency, Provider, Stats};

/// The requests kept whole ([`FakeConfig::capture`]), shared with the caller's thread.
type Captures = Arc<parking_lot::Mutex<Vec<Captured>>>;

/// How often a record file is flushed while requests arrive.
const RECORD_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// Bodies above this are not buffered further; every real limit is far below it.
const MAX_BODY: usize = 64 * 1024;

/// A running fake APNs or FCM server; see the crate docs.
pub struct FakeServer {
    addr: SocketAddr,
    stats_addr: Option<SocketAddr>,
    scheme: &'static str,
    ca_pem: String,
    ca_path: PathBuf,
    /// Keeps the temporary CA file alive (and removes it) when no `ca_out` was given.
    _ca_temp: Option<tempfile::TempPath>,
    counters: Arc<Counters>,
    captured: Captures,
    serving: ServingThread,
}

impl FakeServer {
    /// Starts serving on `listener` (already bound, e.g. to 127.0.0.1:0) on a dedicated OS thread with
    /// its own current-thread tokio runtime, so it works from any caller runtime (or none) and never
    /// competes with it.
    pub fn start(config: FakeConfig, listener: std::net::TcpListener) -> Result<Self, FakeError> {
        Self::start_with_stats(config, listener, None)
    }

    /// Like [`FakeServer::start`], and also answers `GET /stats` over plain HTTP/1.1 on
    /// `stats_listener` (kept out of [`FakeConfig`] so that the configuration stays `Clone`).
    pub fn start_with_stats(
        config: FakeConfig,
        listener: std::net::TcpListener,
        stats_listener: Option<std::net::TcpListener>,
    ) -> Result<Self, FakeError> {
        validate(&config)?;
        let apns_key = config
            .apns_jwt_public_key_pem
            .as_deref()
            .map(|pem| {
                DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|source| FakeError::Key {
                    what: "apns",
                    source,
                })
            })
            .transpose()?;
        let fcm_key = config
            .fcm_oauth_public_key_pem
            .as_deref()
            .map(|pem| {
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|source| FakeError::Key {
                    what: "oauth",
                    source,
                })
            })
            .transpose()?;
        let minted = tls::mint(listener.local_addr()?.ip())?;
        let (ca_path, ca_temp) = tls::write_ca(&minted.ca_pem, config.ca_out.as_deref())?;
        let record = config
            .record_path
            .as_deref()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(|f| BufWriter::with_capacity(64 * 1024, f))
            })
            .transpose()?;

        let addr = listener.local_addr()?;
        let stats_addr = stats_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        listener.set_nonblocking(true)?;
        if let Some(l) = &stats_listener {
            l.set_nonblocking(true)?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (listener, stats_listener) = {
            let _entered = runtime.enter();
            (
                TcpListener::from_std(listener)?,
                stats_listener.map(TcpListener::from_std).transpose()?,
            )
        };

        let counters = Arc::new(Counters::new());
        let captured = Captures::default();
        let scheme = if config.tls { "https" } else { "http" };
        let acceptor = config
            .tls
            .then(|| TlsAcceptor::from(minted.server_config.clone()));
        let thread_name = match config.provider {
            Provider::Apns => "volley-fake-apns",
            Provider::Fcm => "volley-fake-fcm",
        };
        let shared = Shared {
            config,
            counters: counters.clone(),
            captured: captured.clone(),
            apns_key,
            fcm_key,
            record,
            port: addr.port(),
            scheme,
        };
        let serving = ServingThread::spawn(thread_name, move |stopped| {
            run(runtime, shared, listener, stats_listener, acceptor, stopped)
        })?;
        Ok(FakeServer {
            addr,
            stats_addr,
            scheme,
            ca_pem: minted.ca_pem,
            ca_path,
            _ca_temp: ca_temp,
            counters,
            captured,
            serving,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain HTTP/1.1 stats address, when a stats listener was given.
    pub fn stats_addr(&self) -> Option<SocketAddr> {
        self.stats_addr
    }

    /// `https://127.0.0.1:PORT` (or `http://…` for h2c); an unspecified bind address becomes loopback.
    pub fn endpoint(&self) -> String {
        origin(self.scheme, self.addr)
    }

    /// The fake OAuth token endpoint (FCM): [`FakeServer::endpoint`] + `/token`.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.endpoint())
    }

    /// The generated CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA PEM on disk (`ca_out`, or a temporary file kept while the server lives).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// The notification requests kept so far ([`FakeConfig::capture`]), oldest first.
    pub fn captured(&self) -> Vec<Captured> {
        self.captured.lock().clone()
    }

    /// The last request kept for `target` (a device token, FCM topic or condition).
    pub fn captured_for(&self, target: &str) -> Option<Captured> {
        self.captured
            .lock()
            .iter()
            .rev()
            .find(|c| c.target() == Some(target))
            .cloned()
    }

    /// Stops the server, joins its thread (flushing the record file) and returns the final counters.
    pub fn shutdown(mut self) -> Stats {
        self.serving.stop();
        self.counters.snapshot()
    }
}

/// A fake's serving thread and the signal that stops it; stopping, or dropping it, waits for
/// the thread to end.
pub(crate) struct ServingThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServingThread {
    /// Runs `serve` on a thread named `name`; its argument fires when [`ServingThread::stop`]
    /// is called.
    pub(crate) fn spawn(
        name: &str,
        serve: impl FnOnce(oneshot::Receiver<()>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(stopped))?;
        Ok(ServingThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Signals the thread to stop and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServingThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

fn validate(config: &FakeConfig) -> Result<(), FakeError> {
    validate_injection(&config.latency, config.transient_error_rate)?;
    if config.max_concurrent_streams == 0 {
        return Err(FakeError::Config(
            "max_concurrent_streams must be at least 1".into(),
        ));
    }
    if config.goaway_after == Some(0) {
        return Err(FakeError::Config("goaway_after must be at least 1".into()));
    }
    Ok(())
}

/// Checks the injected latency and transient error rate, which every fake shares.
pub(crate) fn validate_injection(
    latency: &Latency,
    transient_error_rate: f64,
) -> Result<(), FakeError> {
    if !(0.0..=1.0).contains(&transient_error_rate) {
        return Err(FakeError::Config(
            "transient_error_rate must be within 0..=1".into(),
        ));
    }
    if let Latency::Uniform { min, max } = latency {
        if min > max {
            return Err(FakeError::Config("latency min exceeds max".into()));
        }
    }
    Ok(())
}

/// What the server thread owns, before it becomes [`Ctx`].
struct Shared {
    config: FakeConfig,
    counters: Arc<Counters>,
    captured: Captures,
    apns_key: Option<DecodingKey>,
    fcm_key: Option<DecodingKey>,
    record: Option<BufWriter<File>>,
    port: u16,
    scheme: &'static str,
}

/// Server-wide state on the fake's single thread; `RefCell`s are never held across an await.
pub(crate) struct Ctx {
    pub(crate) config: FakeConfig,
    pub(crate) counters: Arc<Counters>,
    captured: Captures,
    pub(crate) apns_key: Option<DecodingKey>,
    pub(crate) fcm_key: Option<DecodingKey>,
    pub(crate) port: u16,
    pub(crate) scheme: &'static str,
    /// FCM access tokens issued, with their expiry.
    pub(crate) access_tokens: RefCell<HashMap<Box<str>, Instant>>,
    pub(crate) next_message_id: Cell<u64>,
    seen_tokens: RefCell<HashSet<Box<str>>>,
    record: RefCell<Option<BufWriter<File>>>,
    /// Whether the record has lines not yet flushed.
    record_dirty: Cell<bool>,
}

impl Ctx {
    /// Whether this request is chosen for a random transient error.
    pub(crate) fn transient_error(&self) -> bool {
        self.config.transient_error_rate > 0.0
            && rand::thread_rng().gen::<f64>() < self.config.transient_error_rate
    }

    fn delivered(&self, delivery: &Delivery<'_>, id: &str) {
        let mut seen = self.seen_tokens.borrow_mut();
        if seen.contains(delivery.token.as_ref()) {
            Counters::bump(&self.counters.duplicate_tokens);
        } else {
            seen.insert(delivery.token.as_ref().into());
            Counters::bump(&self.counters.distinct_tokens);
        }
        if let Some(record) = self.record.borrow_mut().as_mut() {
            let collapse = delivery.collapse_id.as_deref().unwrap_or("");
            // A failed record write must not fail the delivery; it shows up as a short record.
            let _ = writeln!(record, "{}\t{id}\t{collapse}", delivery.token);
            self.record_dirty.set(true);
        }
    }

    /// Writes out the record's buffered lines, if any.
    fn flush_record(&self) {
        if !self.record_dirty.replace(false) {
            return;
        }
        if let Some(record) = self.record.borrow_mut().as_mut() {
            if let Err(error) = record.flush() {
                tracing::warn!(%error, "fake record flush failed");
            }
        }
    }

    /// Keeps a notification request whole while fewer than `capture` are kept.
    fn capture(&self, parts: &http::request::Parts, body: &Bytes, status: u16) {
        let mut captured = self.captured.lock();
        if captured.len() >= self.config.capture {
            return;
        }
        let headers = capture_headers(&parts.headers);
        let body = serde_json::from_slice(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        });
        captured.push(Captured {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            headers,
            body,
            status,
        });
    }
}

/// Per-connection state shared by the connection task and its stream tasks.
pub(crate) struct ConnCtx {
    authorised: Cell<bool>,
    /// Streams accepted and not yet answered, or answered but perhaps not yet flushed: a client
    /// that respects the stream limit can never make this exceed it.
    open_streams: Cell<u64>,
    answered_unflushed: Cell<u64>,
    /// Whether the client presented a TLS client certificate (APNs certificate auth).
    pub(crate) client_cert: bool,
    /// The last provider token that verified on this connection, with its `iat`.
    pub(crate) verified_jwt: RefCell<Option<(HeaderValue, i64)>>,
    shim: Rc<ShimControl>,
}

impl ConnCtx {
    /// Marks the connection authorised; the first time, raises the advertised stream limit.
    pub(crate) fn authorised(&self, ctx: &Ctx) {
        if !self.authorised.replace(true) && ctx.config.single_stream_until_auth {
            self.shim.raise(ctx.config.max_concurrent_streams);
        }
    }

    /// Forgets the streams answered on the fast path before the last accept.
    fn settle(&self) {
        let answered = self.answered_unflushed.replace(0);
        self.open_streams.set(self.open_streams.get() - answered);
    }

    fn stream_opened(&self, counters: &Counters) {
        let open = self.open_streams.get() + 1;
        self.open_streams.set(open);
        Counters::raise_to(&counters.max_open_streams_seen, open);
        if !self.authorised.get() {
            Counters::raise_to(&counters.max_open_streams_before_auth, open);
        }
    }
}

/// Closes the stream's slot in [`ConnCtx::open_streams`] however the stream task ends.
struct OpenStream(Rc<ConnCtx>);

impl OpenStream {
    /// Keeps counting the stream as open until the connection next settles.
    fn close_on_settle(self) {
        let conn = &self.0;
        // Drop's decrement is undone here and redone by the next settle.
        conn.open_streams.set(conn.open_streams.get() + 1);
        conn.answered_unflushed
            .set(conn.answered_unflushed.get() + 1);
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.set(self.0.open_streams.get() - 1);
    }
}

/// A notification the fake accepted.
pub(crate) struct Delivery<'a> {
    pub(crate) token: Cow<'a, str>,
    /// The message id when it is not the `apns-id` response header.
    pub(crate) id: Option<String>,
    pub(crate) collapse_id: Option<Cow<'a, str>>,
}

/// How the fake answers one request.
pub(crate) struct Answer<'a> {
    pub(crate) response: Response<()>,
    pub(crate) body: Option<Bytes>,
    /// Counted in [`Stats::requests`] (notification requests, not OAuth or `/stats`).
    pub(crate) notification: bool,
    pub(crate) delivery: Option<Delivery<'a>>,
}

impl Answer<'_> {
    /// A JSON answer that is not a notification (OAuth, `/stats`).
    pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Answer {
            response: json_response(status),
            body: Some(body.into()),
            notification: false,
            delivery: None,
        }
    }
}

/// A response head with `content-type: application/json`.
pub(crate) fn json_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The 502 page a load balancer in front of the real services would serve.
pub(crate) fn bad_gateway() -> (Response<()>, Bytes) {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    let body = Bytes::from_static(
        b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\
          <body><h1>502 Bad Gateway</h1><p>The server encountered a temporary error.</p></body></html>\n",
    );
    (response, body)
}

/// `scheme://host:port` for a bound address; an unspecified address becomes loopback.
pub(crate) fn origin(scheme: &str, addr: SocketAddr) -> String {
    let port = addr.port();
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            format!("{scheme}://{}:{port}", Ipv4Addr::LOCALHOST)
        }
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}"),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            format!("{scheme}://[{}]:{port}", Ipv6Addr::LOCALHOST)
        }
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}"),
    }
}

/// Every header of a captured request, names lowercase, a repeated header's values joined
/// with `, `, and `authorization` cut to its scheme so that a capture never holds a credential.
pub(crate) fn capture_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut captured = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = if name == http::header::AUTHORIZATION {
            value
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        } else {
            value.into_owned()
        };
        captured
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    captured
}

/// Seconds since the Unix epoch by the fake's real clock.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn run(
    runtime: tokio::runtime::Runtime,
    shared: Shared,
    listener: TcpListener,
    stats_listener: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    mut stopped: oneshot::Receiver<()>,
) {
    let ctx = Rc::new(Ctx {
        config: shared.config,
        counters: shared.counters,
        captured: shared.captured,
        apns_key: shared.apns_key,
        fcm_key: shared.fcm_key,
        port: shared.port,
        scheme: shared.scheme,
        access_tokens: RefCell::default(),
        next_message_id: Cell::new(0),
        seen_tokens: RefCell::default(),
        record: RefCell::new(shared.record),
        record_dirty: Cell::new(false),
    });
    let local = LocalSet::new();
    let main_ctx = ctx.clone();
    local.block_on(&runtime, async move {
        let ctx = main_ctx;
        let mut flush = tokio::time::interval(RECORD_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = flush.tick() => ctx.flush_record(),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        spawn_local(serve_connection(ctx.clone(), tcp, acceptor.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "fake accept failed"),
                },
                accepted = accept_stats(stats_listener.as_ref()) => match accepted {
                    Ok((tcp, _)) => {
                        let (counters, captured) = (ctx.counters.clone(), ctx.captured.clone());
                        spawn_local(serve_plain_http1(tcp, move |method, uri| {
                            plain_observation(method, uri, &counters, &captured)
                        }));
                    }
                    Err(error) => tracing::warn!(%error, "fake stats accept failed"),
                },
            }
        }
    });
    // Dropping the LocalSet drops every connection and stream task before the record is flushed.
    drop(local);
    ctx.flush_record();
    drop(ctx);
    drop(runtime);
}

/// Accepts on the stats listener, if there is one; never completes otherwise.
pub(crate) async fn accept_stats(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// `GET /stats` (the counters) or `GET /requests` (the captured requests) as JSON.
fn observation(path: &str, counters: &Counters, captured: &Captures) -> Option<Vec<u8>> {
    match path {
        "/stats" => Some(serde_json::to_vec(&counters.snapshot()).unwrap_or_default()),
        "/requests" => Some(serde_json::to_vec(&*captured.lock()).unwrap_or_default()),
        _ => None,
    }
}

/// A response on the plain HTTP/1.1 stats listener.
pub(crate) type PlainReply = Response<http_body_util::Full<Bytes>>;

/// Serves one connection of a fake's stats listener (`--stats-listen`): plain HTTP/1.1, every
/// request answered by `answer` from its method and URI alone (the routes are all `GET`s).
pub(crate) async fn serve_plain_http1<F>(tcp: TcpStream, answer: F)
where
    F: Fn(&Method, &http::Uri) -> PlainReply,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = answer(req.method(), req.uri());
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let io = hyper_util::rt::TokioIo::new(tcp);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// The stats listener's answer for the APNs and FCM fakes: [`observation`], else 404.
fn plain_observation(
    method: &Method,
    uri: &http::Uri,
    counters: &Counters,
    captured: &Captures,
) -> PlainReply {
    use http_body_util::Full;
    let body = (method == Method::GET)
        .then(|| observation(uri.path(), counters, captured))
        .flatten();
    if let Some(body) = body {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

async fn serve_connection(ctx: Rc<Ctx>, tcp: TcpStream, acceptor: Option<TlsAcceptor>) {
    Counters::bump(&ctx.counters.connections);
    let _ = tcp.set_nodelay(true);
    match acceptor {
        Some(acceptor) => {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let client_cert = tls.get_ref().1.peer_certificates().is_some();
            serve_h2(ctx, tls, client_cert).await;
        }
        None => serve_h2(ctx, tcp, false).await,
    }
}

async fn serve_h2<T>(ctx: Rc<Ctx>, io: T, client_cert: bool)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let control = Rc::new(ShimControl::default());
    let shim = Shim::new(
        io,
        control.clone(),
        ctx.config.single_stream_until_auth,
        ctx.config.goaway_after.is_some(),
    );
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(ctx.config.max_concurrent_streams)
        .handshake::<_, Bytes>(shim)
        .await;
    let Ok(mut h2) = handshake else {
        return;
    };
    let conn = Rc::new(ConnCtx {
        authorised: Cell::new(false),
        open_streams: Cell::new(0),
        answered_unflushed: Cell::new(0),
        client_cert,
        verified_jwt: RefCell::new(None),
        shim: control.clone(),
    });
    let mut accepted = 0u64;
    let mut goaway_cap: Option<u32> = None;
    // Complete requests accepted in one go are answered together just before waiting: every
    // accept polls the connection, which flushes, so answering one by one would cost a TLS record
    // and a write per response.
    let mut ready: Vec<ReadyStream> = Vec::new();
    loop {
        let next = match h2.accept().now_or_never() {
            Some(next) => next,
            None => {
                for stream in ready.drain(..) {
                    answer(
                        &ctx,
                        &stream.open.0,
                        &stream.parts,
                        &stream.body,
                        stream.respond,
                    );
                    stream.open.close_on_settle();
                }
                h2.accept().await
            }
        };
        // Every accept polled the connection, flushing what was answered before it: those
        // streams are now visibly closed to the client.
        conn.settle();
        let Some(Ok((request, mut respond))) = next else {
            break;
        };
        let id = respond.stream_id().as_u32();
        if goaway_cap.is_some_and(|cap| id > cap) {
            // Above GOAWAY's last-stream-id: never processed, safe for the client to resend.
            respond.send_reset(Reason::REFUSED_STREAM);
            continue;
        }
        accepted += 1;
        if ctx.config.goaway_after == Some(accepted) {
            control.cap_goaway(id);
            goaway_cap = Some(id);
            // Graceful: h2 keeps answering the accepted streams and closes once they are done.
            h2.graceful_shutdown();
            Counters::bump(&ctx.counters.goaways_sent);
        }
        conn.stream_opened(&ctx.counters);
        let open = OpenStream(conn.clone());
        let (parts, mut body) = request.into_parts();
        // Fast path: the body usually arrived with the headers. Answering from this task saves a
        // task (allocation, a move of the whole stream state, a wake-up) per request.
        let first = match (&ctx.config.latency, ready_body(&mut body)) {
            (_, ReadyBody::Failed) => continue,
            (Latency::None, ReadyBody::Complete(body)) => {
                ready.push(ReadyStream {
                    open,
                    parts,
                    body,
                    respond,
                });
                continue;
            }
            (_, ReadyBody::Complete(bytes)) => Some(bytes),
            (_, ReadyBody::Partial(first)) => first,
        };
        spawn_local(serve_stream(ctx.clone(), open, parts, body, first, respond));
    }
}

/// A complete request waiting to be answered with the others of its batch.
struct ReadyStream {
    open: OpenStream,
    parts: http::request::Parts,
    body: Bytes,
    respond: SendResponse<Bytes>,
}

/// What of a request body is available without waiting.
enum ReadyBody {
    /// The whole body (possibly empty).
    Complete(Bytes),
    /// Only this much (maybe nothing) so far.
    Partial(Option<Bytes>),
    /// The stream failed.
    Failed,
}

fn ready_body(body: &mut RecvStream) -> ReadyBody {
    if body.is_end_stream() {
        return ReadyBody::Complete(Bytes::new());
    }
    // A no-op waker is fine: if this is pending, the stream task polls again with its own.
    match body.data().now_or_never() {
        None => ReadyBody::Partial(None),
        Some(None) => ReadyBody::Complete(Bytes::new()),
        Some(Some(Err(_))) => ReadyBody::Failed,
        Some(Some(Ok(chunk))) => {
            let _ = body.flow_control().release_capacity(chunk.len());
            if body.is_end_stream() {
                ReadyBody::Complete(chunk)
            } else {
                ReadyBody::Partial(Some(chunk))
            }
        }
    }
}

/// Reads the rest of a body of which `first` was already taken.
async fn read_body(body: &mut RecvStream, first: Option<Bytes>) -> Result<Bytes, h2::Error> {
    let mut first = first;
    let mut more: Option<BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match (&mut first, &mut more) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut joined = BytesMut::with_capacity(f.len() + chunk.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&chunk);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => {
                if joined.len() < MAX_BODY {
                    joined.extend_from_slice(&chunk);
                }
            }
        }
    }
    Ok(match more {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// A stream whose body was not all there at once, or whose answer waits for injected latency.
async fn serve_stream(
    ctx: Rc<Ctx>,
    open: OpenStream,
    parts: http::request::Parts,
    mut body: RecvStream,
    first: Option<Bytes>,
    respond: SendResponse<Bytes>,
) {
    let Ok(bytes) = read_body(&mut body, first).await else {
        return;
    };
    ctx.config.latency.wait().await;
    answer(&ctx, &open.0, &parts, &bytes, respond);
}

/// Decides the answer to a complete request, sends it and counts it.
fn answer(
    ctx: &Ctx,
    conn: &ConnCtx,
    parts: &http::request::Parts,
    body: &Bytes,
    mut respond: SendResponse<Bytes>,
) {
    let observed = (parts.method == Method::GET)
        .then(|| observation(parts.uri.path(), &ctx.counters, &ctx.captured))
        .flatten();
    let answer = if let Some(body) = observed {
        Answer::json(StatusCode::OK, body)
    } else {
        match ctx.config.provider {
            Provider::Apns => apns::handle(ctx, conn, parts, body),
            Provider::Fcm => fcm::handle(ctx, conn, parts, body),
        }
    };
    let status = answer.response.status().as_u16();
    if answer.notification && ctx.config.capture > 0 {
        ctx.capture(parts, body, status);
    }
    // Taken before the head moves into h2: the record wants the apns-id that was sent.
    let apns_id = answer
        .delivery
        .as_ref()
        .and_then(|_| answer.response.headers().get("apns-id").cloned());
    let sent = match answer.body {
        None => respond.send_response(answer.response, true).is_ok(),
        Some(body) => match respond.send_response(answer.response, false) {
            Ok(mut stream) => stream.send_data(body, true).is_ok(),
            Err(_) => false,
        },
    };
    if !sent {
        return;
    }
    if answer.notification {
        ctx.counters.answered(status);
    }
    if let Some(delivery) = &answer.delivery {
        let id = match &delivery.id {
            Some(id) => id.as_str(),
            None => apns_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        };
        ctx.delivered(delivery, id);
    }
}
