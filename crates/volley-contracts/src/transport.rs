//! tarpc with bincode over the links between nodes: mutual TLS 1.3 ([`Links::Tls`]) or, when
//! asked for, plain TCP ([`Links::Insecure`]).
//!
//! A server completes the TLS handshake (within [`HANDSHAKE_TIMEOUT`]) before it reads a
//! frame, and then bounds frames by what the peer's certificate says it is: a front's
//! submission may carry a million tokens, anything from an agent or the controller is far
//! smaller. Handshakes run concurrently, at most [`MAX_LINKS`] links are open at once, and a
//! peer that goes away takes its buffers with it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use rustls::pki_types::ServerName;
use tarpc::{client, ClientMessage, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::frames::LinkTransport;
use crate::tls::{peer_name, peer_role, IdentityFiles, NodeIdentity, NodeRole, TlsError};
use crate::{AgentClient, ControllerClient};

/// The largest frame a front may send: a submission carries every token of a job in one
/// frame (a million 64-character APNs tokens are about 68 MB).
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// The largest frame between the controller and an agent: a `deliver` call of chunks (at most
/// `controller.chunk_size` ≤ 100,000 tokens each) or a report of one.
pub const NODE_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The largest frame a front may send for any call but a submission (`status`, `cancel`,
/// `stats`, ... carry a job id or nothing).
pub const SMALL_FRAME_BYTES: usize = 1024 * 1024;

/// The calls of the controller's service a front may send in frames above
/// [`SMALL_FRAME_BYTES`]: `submit` and `submit_many`, by their place in `ControllerRequest`
/// (a unit test checks it against the generated type).
pub const CONTROLLER_LARGE_CALLS: &[u32] = &[0, 1];

/// How long a peer has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node waits for a TCP connection to another: SYN retransmits at 1 and 3 s fit;
/// a host the network cut off is given up on, and the next address tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most links a server keeps open at once; more wait at accept.
pub const MAX_LINKS: usize = 4096;

/// The most links one address may hold open (or in its handshake) with a server at once; more
/// are closed at accept and counted as refused. A node opens a handful (a front one, an
/// agent one, the controller one per agent), so this only stops one host from taking every
/// slot of [`MAX_LINKS`] with handshakes it never finishes.
pub const MAX_LINKS_PER_PEER: usize = 256;

/// Links open per peer address.
#[derive(Debug, Default)]
struct PeerCounts(std::sync::Mutex<HashMap<IpAddr, usize>>);

/// One link's place in its peer's count, given back when the link is dropped.
#[derive(Debug)]
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl PeerCounts {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let open = counts.entry(ip).or_default();
        if *open >= MAX_LINKS_PER_PEER {
            return None;
        }
        *open += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = counts.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// How a node's links are secured.
#[derive(Clone, Debug)]
pub enum Links {
    /// Mutual TLS 1.3 with this node's certificate.
    Tls(Arc<LinkTls>),
    /// Plain TCP: anyone who reaches the port is trusted as any role (`--insecure-links`).
    Insecure,
}

/// A node's TLS configurations, both ways, reloadable from the files they came from.
///
/// A reload swaps the configurations new links use; links already open keep the session they
/// have, so nothing in flight is dropped.
pub struct LinkTls {
    current: ArcSwap<TlsState>,
    files: Option<IdentityFiles>,
    reload_failures: AtomicU64,
}

/// One identity and the rustls configurations made from it.
struct TlsState {
    identity: NodeIdentity,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl TlsState {
    fn new(identity: NodeIdentity) -> Result<TlsState, TlsError> {
        Ok(TlsState {
            acceptor: TlsAcceptor::from(identity.server_config()?),
            connector: TlsConnector::from(identity.client_config()?),
            identity,
        })
    }
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("identity", &self.current.load().identity)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What [`Links::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what the node already uses (or it has no files: insecure links, or an
    /// identity made in memory).
    Unchanged,
    /// New links use the certificate the files hold now.
    Reloaded {
        /// The node's name in the new certificate.
        name: String,
        /// The previous certificate's end of validity, seconds since the epoch.
        previous_not_after: i64,
        /// The new certificate's.
        not_after: i64,
    },
}

impl Links {
    /// Mutual TLS with `identity`, made in memory (no files to reload).
    pub fn tls(identity: NodeIdentity) -> Result<Links, TlsError> {
        Links::secured(identity, None)
    }

    /// Mutual TLS with the identity `files` hold; [`Links::reload`] reads them again.
    pub fn tls_from_files(files: IdentityFiles) -> Result<Links, TlsError> {
        Links::secured(files.load()?, Some(files))
    }

    fn secured(identity: NodeIdentity, files: Option<IdentityFiles>) -> Result<Links, TlsError> {
        Ok(Links::Tls(Arc::new(LinkTls {
            current: ArcSwap::from_pointee(TlsState::new(identity)?),
            files,
            reload_failures: AtomicU64::new(0),
        })))
    }

    /// Whether the identity came from files that [`Links::reload`] can read again (not on
    /// insecure links, nor for an identity made in memory).
    pub fn reloadable(&self) -> bool {
        matches!(self, Links::Tls(tls) if tls.files.is_some())
    }

    /// When this node's current certificate expires, seconds since the epoch (`None` on
    /// insecure links).
    pub fn not_after(&self) -> Option<i64> {
        match self {
            Links::Tls(tls) => Some(tls.current.load().identity.not_after()),
            Links::Insecure => None,
        }
    }

    /// Certificate reloads that failed (the node kept its certificate).
    pub fn reload_failures(&self) -> u64 {
        match self {
            Links::Tls(tls) => tls.reload_failures.load(Ordering::Relaxed),
            Links::Insecure => 0,
        }
    }

    /// Reads the identity's files again and, if they changed, makes new links use them.
    /// Files that do not make a valid identity of this node's role leave the current one in
    /// place and return the error (naming the file); the caller counts it
    /// ([`Links::count_reload_failure`]) once per failure, not once per look.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let Links::Tls(tls) = self else {
            return Ok(Reload::Unchanged);
        };
        let Some(files) = &tls.files else {
            return Ok(Reload::Unchanged);
        };
        tls.reload_from(files)
    }

    /// Counts a reload that failed (in [`Links::reload_failures`]).
    pub fn count_reload_failure(&self) {
        if let Links::Tls(tls) = self {
            tls.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LinkTls {
    fn reload_from(&self, files: &IdentityFiles) -> Result<Reload, TlsError> {
        let identity = files.load()?;
        let current = self.current.load();
        if identity.same_as(&current.identity) {
            return Ok(Reload::Unchanged);
        }
        if identity.role() != current.identity.role() {
            return Err(TlsError::Invalid(format!(
                "{} is now a {} certificate; this node is a {} and keeps its certificate",
                files.cert.display(),
                identity.role(),
                current.identity.role()
            )));
        }
        let reload = Reload::Reloaded {
            name: identity.name().to_owned(),
            previous_not_after: current.identity.not_after(),
            not_after: identity.not_after(),
        };
        self.current.store(Arc::new(TlsState::new(identity)?));
        Ok(reload)
    }
}

/// Who is at the other end of a link a server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its role as its certificate says; `None` on an insecure link.
    pub role: Option<NodeRole>,
    /// Its node name as its certificate says (empty on an insecure link).
    pub name: String,
}

impl Peer {
    /// Whether this peer may act as `role`: its certificate says so, or links are insecure.
    pub fn is(&self, role: NodeRole) -> bool {
        self.role.is_none_or(|r| r == role)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Some(role) => write!(f, "{role} {} ({})", self.name, self.addr),
            None => write!(f, "{} (insecure link)", self.addr),
        }
    }
}

/// A link's byte stream (plain TCP or TLS, either side), holding its server's connection
/// slots (of all links and of its peer's) while it lives.
#[derive(Debug)]
pub struct LinkStream {
    io: Io,
    _slots: Option<(tokio::sync::OwnedSemaphorePermit, PeerSlot)>,
    /// On a server's link from a front: which calls may come in large frames.
    guard: Option<FrameGuard>,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl LinkStream {
    /// A plain TCP link, for tests of what runs over links.
    #[cfg(test)]
    pub(crate) fn plain(tcp: TcpStream) -> LinkStream {
        LinkStream::new(Io::Plain(tcp))
    }

    fn new(io: Io) -> LinkStream {
        LinkStream {
            io,
            _slots: None,
            guard: None,
        }
    }
}

/// Delegates one `AsyncRead`/`AsyncWrite` call to whichever stream the link has.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Io::Server($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
            Io::Client($s) => {
                let $s = Pin::new($s.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = self.get_mut();
        let read = Pin::new(&mut *this);
        match delegate!(read, s => s.poll_read(cx, buf)) {
            // A peer that drops its link closes TCP without TLS's close_notify (tarpc never
            // shuts a transport down). The length-delimited framing already tells a cut-off
            // frame from a clean end, so that is an end, not an error to log.
            Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => match &mut this.guard {
                Some(guard) => Poll::Ready(guard.observe(&buf.filled()[before..])),
                None => Poll::Ready(Ok(())),
            },
            other => other,
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Server(s) => s.is_write_vectored(),
            Io::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Follows the frames of a link as its bytes are read and refuses, as soon as its first bytes
/// name the call, a frame above [`SMALL_FRAME_BYTES`] for a call not in `large_calls`: a front
/// may send a million tokens in a submission, not in a `stats` call. At most one read's bytes
/// of such a frame are buffered before the link is closed.
#[derive(Debug)]
struct FrameGuard {
    large_calls: &'static [u32],
    state: FrameState,
}

#[derive(Debug)]
enum FrameState {
    /// Reading a frame's 4-byte length.
    Length { read: usize, bytes: [u8; 4] },
    /// In a frame that is small enough whatever its call: `left` bytes to pass.
    Body { left: usize },
    /// In a large frame whose call is not known yet: its first bytes so far.
    Head { left: usize, head: Vec<u8> },
}

/// Bytes of a frame within which its call is named (the message kind, the request's context
/// and id, then the call's index; about 50 bytes with bincode's variable-length integers).
const HEAD_BYTES: usize = 128;

impl FrameGuard {
    fn new(large_calls: &'static [u32]) -> FrameGuard {
        FrameGuard {
            large_calls,
            state: FrameState::Length {
                read: 0,
                bytes: [0; 4],
            },
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                FrameState::Length {
                    read,
                    bytes: length,
                } => {
                    length[*read] = bytes[0];
                    *read += 1;
                    bytes = &bytes[1..];
                    if *read == 4 {
                        let len = u32::from_be_bytes(*length) as usize;
                        self.state = if len > SMALL_FRAME_BYTES {
                            FrameState::Head {
                                left: len,
                                head: Vec::with_capacity(HEAD_BYTES),
                            }
                        } else {
                            FrameState::Body { left: len }
                        };
                    }
                }
                FrameState::Body { left } => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                }
                FrameState::Head { left, head } => {
                    let take = (HEAD_BYTES - head.len()).min(bytes.len());
                    head.extend_from_slice(&bytes[..take]);
                    *left -= take;
                    bytes = &bytes[take..];
                    match call_index(head) {
                        Some(call) if self.large_calls.contains(&call) => {
                            self.state = FrameState::Body { left: *left };
                        }
                        Some(call) => return Err(too_large(call)),
                        None if head.len() == HEAD_BYTES => return Err(too_large(u32::MAX)),
                        None => {}
                    }
                }
            }
            if let FrameState::Body { left: 0 } = self.state {
                self.state = FrameState::Length {
                    read: 0,
                    bytes: [0; 4],
                };
            }
        }
        Ok(())
    }
}

fn too_large(call: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a frame above {SMALL_FRAME_BYTES} bytes for call #{call}, which may not be that large"
        ),
    )
}

/// The index of the call a request frame starts with, once `head` holds enough of it; `None`
/// while it does not (or for a frame that is not a request).
fn call_index(head: &[u8]) -> Option<u32> {
    use bincode::Options as _;
    use serde::de::{Deserializer, EnumAccess, Visitor};

    /// A request as far as its call's index.
    #[derive(serde::Deserialize)]
    struct RequestHead {
        _context: ContextHead,
        _id: u64,
        call: CallIndex,
    }

    /// `tarpc::context::Context` as it is encoded, read as plain values: tarpc's own type
    /// adds the deadline to `Instant::now()`, which panics on a peer's absurd deadline.
    #[derive(serde::Deserialize)]
    struct ContextHead {
        _deadline: std::time::Duration,
        _trace_id: [u8; 16],
        _span_id: u64,
        _sampling: Sampling,
    }

    #[derive(serde::Deserialize)]
    enum Sampling {
        _Sampled,
        _Unsampled,
    }

    struct CallIndex(u32);

    impl<'de> serde::Deserialize<'de> for CallIndex {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Index;
            impl<'de> Visitor<'de> for Index {
                type Value = CallIndex;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a call")
                }
                fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<CallIndex, A::Error> {
                    // The call's arguments are not read: only which call it is.
                    let (index, _) = data.variant::<u32>()?;
                    Ok(CallIndex(index))
                }
            }
            deserializer.deserialize_enum("call", &[], Index)
        }
    }

    // `ClientMessage::Request` is variant 0; a cancel is never large.
    let (&kind, rest) = head.split_first()?;
    if kind != 0 {
        return Some(u32::MAX);
    }
    bincode::DefaultOptions::new()
        .allow_trailing_bytes()
        .deserialize::<RequestHead>(rest)
        .ok()
        .map(|request| request.call.0)
}

type ClientTransport<Req, Resp> = LinkTransport<Response<Resp>, ClientMessage<Req>>;

/// How long data sent on a link may stay unacknowledged before the link is given up, and how
/// long an idle link waits before its first keepalive probe.
pub const LINK_SILENCE: Duration = Duration::from_secs(10);

/// A link's socket: no Nagle delay, and a peer the network cut off is noticed within
/// [`LINK_SILENCE`] or so, whether the link is busy (`TCP_USER_TIMEOUT`: sent data
/// unacknowledged that long closes it) or idle (keepalive probes every 2 s after
/// `LINK_SILENCE`, three unanswered close it). Without them, a call on a link whose peer
/// vanished without a reset (a partition, a host gone) waits out its whole deadline: a front
/// held a submission 60 s before answering 503. A peer that is alive but slow acknowledges at
/// the TCP level and is not affected.
fn tune(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(LINK_SILENCE)
            .with_interval(Duration::from_secs(2))
            .with_retries(3),
    )?;
    socket.set_tcp_user_timeout(Some(LINK_SILENCE))
}

/// Dials `addr` and, on secured links, checks that a node of role `server` answers.
async fn dial<Req, Resp>(
    addr: impl ToSocketAddrs,
    links: &Links,
    server: NodeRole,
) -> io::Result<ClientTransport<Req, Resp>>
where
    Req: serde::Serialize,
    Resp: for<'de> serde::Deserialize<'de>,
{
    // A host the network cut off answers no SYN: without a bound, the kernel's retries take
    // two minutes, and a node would wait that long before it tries the next controller.
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tcp connect timed out"))??;
    tune(&tcp)?;
    let stream = match links {
        Links::Insecure => LinkStream::new(Io::Plain(tcp)),
        Links::Tls(tls) => {
            let name = ServerName::try_from(server.dns_name())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let handshake = tls.current.load().connector.connect(name, tcp);
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out")
                })??;
            LinkStream::new(Io::Client(Box::new(stream)))
        }
    };
    // What comes back is bounded by what this side asked for; the server bounds the rest.
    Ok(LinkTransport::new(stream, MAX_FRAME_BYTES))
}

/// Connects to a controller's tarpc server.
pub async fn connect_controller(
    addr: impl ToSocketAddrs,
    links: &Links,
) -> io::Result<ControllerClient> {
    let transport = dial(addr, links, NodeRole::Controller).await?;
    Ok(ControllerClient::new(client::Config::default(), transport).spawn())
}

/// The addresses of `front.controller` or `agent.controller`: one, or several separated by
/// commas (a leader and its standbys).
pub fn controller_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects to the first of `addrs` that answers, starting at `from`; returns the client and
/// the index of the address it reached. A standby answers too: its calls say where the leader
/// is ([`crate::ErrorCode::NotLeader`]).
pub async fn connect_first_controller(
    addrs: &[String],
    from: usize,
    links: &Links,
) -> io::Result<(ControllerClient, usize)> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no controller address given");
    for offset in 0..addrs.len() {
        let index = (from + offset) % addrs.len();
        match connect_controller(addrs[index].as_str(), links).await {
            Ok(client) => return Ok((client, index)),
            Err(error) => last = io::Error::new(error.kind(), format!("{}: {error}", addrs[index])),
        }
    }
    Err(last)
}

/// Connects to an agent's tarpc server.
pub async fn connect_agent(addr: impl ToSocketAddrs, links: &Links) -> io::Result<AgentClient> {
    let transport = dial(addr, links, NodeRole::Agent).await?;
    Ok(AgentClient::new(client::Config::default(), transport).spawn())
}

/// The server side of one tarpc connection.
pub type ServerTransport<Req, Resp> = LinkTransport<ClientMessage<Req>, Response<Resp>>;

/// The largest frame a peer of `role` may send (`None`: an insecure link, any role).
pub fn frame_limit(role: Option<NodeRole>) -> usize {
    match role {
        Some(NodeRole::Front) | None => MAX_FRAME_BYTES,
        Some(NodeRole::Controller | NodeRole::Agent) => NODE_FRAME_BYTES,
    }
}

/// Accepts tarpc links on a bound listener: each completes its TLS handshake on its own task
/// (bounded by [`HANDSHAKE_TIMEOUT`]) before it is yielded, with frames bounded by the peer's
/// role, and a front's frames above [`SMALL_FRAME_BYTES`] allowed only for `large_calls` (the
/// indexes of the service's calls, such as [`CONTROLLER_LARGE_CALLS`]). A refused handshake is
/// logged and counted in `refused`.
pub fn listen<Req, Resp>(
    listener: tokio::net::TcpListener,
    links: Links,
    refused: Arc<std::sync::atomic::AtomicU64>,
    large_calls: &'static [u32],
) -> impl Stream<Item = (Peer, ServerTransport<Req, Resp>)>
where
    Req: for<'de> serde::Deserialize<'de> + Send + 'static,
    Resp: serde::Serialize + Send + 'static,
{
    let (ready, incoming) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_LINKS));
    let per_peer = Arc::new(PeerCounts::default());
    tokio::spawn(async move {
        // Refusals at the cap are logged at most once a second, with how many were not.
        let mut last_warning: Option<tokio::time::Instant> = None;
        let mut unlogged = 0u64;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Accept errors (EMFILE, a reset before accept) are per connection.
                    tracing::warn!(%error, "tarpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if ready.is_closed() {
                return;
            }
            let Some(peer_slot) = per_peer.take(addr.ip()) else {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(peer = %addr, limit = MAX_LINKS_PER_PEER, also_refused = unlogged, "link refused: too many links from this address");
                    last_warning = Some(tokio::time::Instant::now());
                    unlogged = 0;
                } else {
                    unlogged += 1;
                }
                continue;
            };
            let _ = tune(&tcp);
            let links = links.clone();
            let ready = ready.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let (peer, mut stream) = match accept(tcp, addr, &links).await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(peer = %addr, %error, "link refused at the handshake");
                        return;
                    }
                };
                // The slots are free again when the link's stream is dropped.
                stream._slots = Some((slot, peer_slot));
                if peer.role == Some(NodeRole::Front) {
                    stream.guard = Some(FrameGuard::new(large_calls));
                }
                let transport = LinkTransport::new(stream, frame_limit(peer.role));
                let _ = ready.send((peer, transport)).await;
            });
        }
    });
    tokio_stream_from(incoming)
}

fn tokio_stream_from<T: Send + 'static>(
    mut incoming: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| incoming.poll_recv(cx)).boxed()
}

/// Completes the server side of a link: the TLS handshake and the peer's role.
async fn accept(tcp: TcpStream, addr: SocketAddr, links: &Links) -> io::Result<(Peer, LinkStream)> {
    match links {
        Links::Insecure => Ok((
            Peer {
                addr,
                role: None,
                name: String::new(),
            },
            LinkStream::new(Io::Plain(tcp)),
        )),
        Links::Tls(tls) => {
            let acceptor = tls.current.load().acceptor.clone();
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out")
                })??;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first().cloned())
                .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no certificate"))?;
            let role = peer_role(&leaf).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the certificate names no volley role",
                )
            })?;
            let peer = Peer {
                addr,
                role: Some(role),
                name: peer_name(&leaf).unwrap_or_default(),
            };
            Ok((peer, LinkStream::new(Io::Server(Box::new(stream)))))
        }
    }
}

#[cfg(test)]
mod tests {
    use bincode::Options as _;

    use super::*;
    use crate::{ControllerRequest, SubmitJob};

    /// A frame as tarpc's bincode transport writes it: length, then the message.
    fn frame(message: ClientMessage<ControllerRequest>, declared: Option<usize>) -> Vec<u8> {
        let body = bincode::DefaultOptions::new().serialize(&message).unwrap();
        let len = declared.unwrap_or(body.len()) as u32;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    fn request(message: ControllerRequest) -> ClientMessage<ControllerRequest> {
        ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: u64::MAX,
            message,
        })
    }

    fn job() -> SubmitJob {
        SubmitJob {
            app: "shop".into(),
            apns: None,
            fcm: None,
            apns_tokens: Default::default(),
            fcm_tokens: Default::default(),
            webpush: None,
            webpush_tokens: Default::default(),
            idempotency_key: None,
            rejected: Default::default(),
        }
    }

    #[test]
    fn the_large_calls_are_the_controllers_submissions() {
        let index = |message| {
            let frame = frame(request(message), None);
            call_index(&frame[4..]).unwrap()
        };
        assert_eq!(index(ControllerRequest::Submit { job: job() }), 0);
        assert_eq!(
            index(ControllerRequest::SubmitMany { jobs: vec![job()] }),
            1
        );
        assert_eq!(CONTROLLER_LARGE_CALLS, &[0, 1]);
        assert!(!CONTROLLER_LARGE_CALLS.contains(&index(ControllerRequest::Stats {})));
        // An agent's `report` came last: the calls before it kept their places.
        let report = ControllerRequest::Report {
            agent: crate::AgentId(1),
            reports: Vec::new(),
        };
        assert_eq!(index(report), 8);
        let head = frame(request(ControllerRequest::Stats {}), None);
        assert!(
            head.len() - 4 < HEAD_BYTES,
            "a call is named within HEAD_BYTES"
        );
        // A deadline no clock can hold is read, not added to the time (which panics).
        let mut absurd = vec![0u8];
        absurd.extend(
            bincode::DefaultOptions::new()
                .serialize(&(u64::MAX, 999_999_999u32, [0u8; 16], 0u64, 0u32, 0u64, 5u32))
                .unwrap(),
        );
        assert_eq!(call_index(&absurd), Some(5));
    }

    /// Feeds `bytes` to a guard in reads of `step` bytes.
    fn feed(guard: &mut FrameGuard, bytes: &[u8], step: usize) -> io::Result<()> {
        bytes.chunks(step).try_for_each(|read| guard.observe(read))
    }

    #[test]
    fn a_front_sends_large_frames_only_for_submissions() {
        let large = SMALL_FRAME_BYTES + 1;
        for step in [1, 7, 4096] {
            let mut guard = FrameGuard::new(CONTROLLER_LARGE_CALLS);
            // A submission declared large, its bytes up to the declared length, then small
            // calls: all pass.
            let mut submission = frame(
                request(ControllerRequest::Submit { job: job() }),
                Some(large),
            );
            submission.resize(4 + large, 0);
            feed(&mut guard, &submission, step.max(1)).unwrap();
            let stats = frame(request(ControllerRequest::Stats {}), None);
            feed(&mut guard, &stats, step).unwrap();
            let cancel = frame(
                ClientMessage::Cancel {
                    trace_context: Default::default(),
                    request_id: 1,
                },
                None,
            );
            feed(&mut guard, &cancel, step).unwrap();
            // `stats` declared large: refused once its head names it.
            let stats = frame(request(ControllerRequest::Stats {}), Some(large));
            let error = feed(&mut guard, &stats, step).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        }
        // A large frame that names no call within HEAD_BYTES: refused.
        let mut guard = FrameGuard::new(CONTROLLER_LARGE_CALLS);
        let mut garbage = ((SMALL_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; HEAD_BYTES]);
        assert!(feed(&mut guard, &garbage, 16).is_err());
        // On an agent's server nothing from a front may be large.
        let mut guard = FrameGuard::new(&[]);
        let submission = frame(
            request(ControllerRequest::Submit { job: job() }),
            Some(SMALL_FRAME_BYTES + 1),
        );
        assert!(feed(&mut guard, &submission, 4096).is_err());
    }
}
