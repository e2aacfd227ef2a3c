//! A raw HTTP/2 server speaking frames directly (h2c), for what an `h2` server will not do
//! on request: a GOAWAY whose last-stream-id is below streams already in flight, and exact
//! bookkeeping of how many streams the client has open against the advertised limit.
//!
//! It decodes no HPACK: requests are told apart by their bodies, and every answer is
//! `:status 200` (static table index 8) with the request body echoed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;

/// What the raw server does.
#[derive(Clone, Debug, Default)]
pub struct RawConfig {
    /// SETTINGS_MAX_CONCURRENT_STREAMS sent at the start of each connection.
    pub max_concurrent_streams: Option<u32>,
    /// After the first answer, raise the limit to this (APNs does once it saw a valid token).
    pub raise_to: Option<u32>,
    /// Send GOAWAY once this many requests are complete on a connection...
    pub goaway_after: Option<usize>,
    /// ...on connections numbered up to this one (1-based).
    pub goaway_connections: u64,
    /// Drop the first connection, unanswered, once this many requests are complete on it.
    pub close_after: Option<usize>,
    /// Hold complete requests until this many wait (or the line is quiet for a moment), so
    /// that the client really has several streams open; 0 or 1 answers at once.
    pub batch: usize,
}

/// What the raw server saw.
#[derive(Default)]
pub struct RawStats {
    pub connections: AtomicU64,
    pub answered: AtomicU64,
    /// Streams above a GOAWAY's last-stream-id, dropped unprocessed.
    pub discarded: AtomicU64,
    pub goaways: AtomicU64,
    /// HEADERS that opened a stream beyond the advertised limit.
    pub violations: AtomicU64,
    pub max_open: AtomicUsize,
    /// Request bodies answered, with how often each was answered.
    pub bodies: Mutex<HashMap<Vec<u8>, u32>>,
}

/// A raw HTTP/2 server on 127.0.0.1.
pub struct RawServer {
    pub addr: SocketAddr,
    pub stats: Arc<RawStats>,
}

impl RawServer {
    pub async fn start(config: RawConfig) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(RawStats::default());
        let server_stats = stats.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let number = server_stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (config, stats) = (config.clone(), server_stats.clone());
                tokio::spawn(async move {
                    let _ = serve(tcp, number, config, stats).await;
                });
            }
        });
        RawServer { addr, stats }
    }

    pub fn endpoint(&self) -> volley_provider::Endpoint {
        format!("http://{}", self.addr).parse().unwrap()
    }
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.put_slice(payload);
}

fn settings(out: &mut BytesMut, max_concurrent_streams: Option<u32>) {
    let mut payload = BytesMut::new();
    if let Some(max) = max_concurrent_streams {
        payload.put_u16(SETTINGS_MAX_CONCURRENT_STREAMS);
        payload.put_u32(max);
    }
    frame(out, SETTINGS, 0, 0, &payload);
}

struct Connection {
    number: u64,
    config: RawConfig,
    stats: Arc<RawStats>,
    limit: Option<u32>,
    /// Streams the client opened and we have not answered, with the body so far.
    open: BTreeMap<u32, Vec<u8>>,
    /// Complete requests waiting for their answer.
    complete: Vec<u32>,
    complete_count: usize,
    answered_here: u64,
    goaway_last: Option<u32>,
    abort: bool,
    out: BytesMut,
}

impl Connection {
    fn on_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let above_goaway = self.goaway_last.is_some_and(|last| stream > last);
        match kind {
            HEADERS if above_goaway => {
                self.stats.discarded.fetch_add(1, Ordering::SeqCst);
            }
            HEADERS => {
                self.open.insert(stream, Vec::new());
                let open = self.open.len();
                self.stats.max_open.fetch_max(open, Ordering::SeqCst);
                if self.limit.is_some_and(|limit| open > limit as usize) {
                    self.stats.violations.fetch_add(1, Ordering::SeqCst);
                }
                if flags & END_STREAM != 0 {
                    self.completed(stream);
                }
            }
            DATA => {
                if !payload.is_empty() {
                    // Hand the connection window back; stream windows are never exhausted here.
                    frame(
                        &mut self.out,
                        WINDOW_UPDATE,
                        0,
                        0,
                        &(payload.len() as u32).to_be_bytes(),
                    );
                }
                if let Some(body) = self.open.get_mut(&stream) {
                    body.extend_from_slice(payload);
                    if flags & END_STREAM != 0 {
                        self.completed(stream);
                    }
                }
            }
            SETTINGS if flags & ACK == 0 => frame(&mut self.out, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, payload),
            RST_STREAM => {
                self.open.remove(&stream);
                self.complete.retain(|id| *id != stream);
            }
            GOAWAY => return false,
            _ => {}
        }
        true
    }

    fn completed(&mut self, stream: u32) {
        self.complete.push(stream);
        self.complete_count += 1;
        if self.number == 1 && self.config.close_after == Some(self.complete_count) {
            self.abort = true;
        }
        let goaway_due = self.goaway_last.is_none()
            && self.number <= self.config.goaway_connections
            && self
                .config
                .goaway_after
                .is_some_and(|after| self.complete_count >= after);
        if goaway_due {
            // Everything at or below `stream` is answered; everything above is dropped.
            let above: Vec<u32> = self.open.range(stream + 1..).map(|(id, _)| *id).collect();
            for id in above {
                self.open.remove(&id);
                self.stats.discarded.fetch_add(1, Ordering::SeqCst);
            }
            self.complete.retain(|id| *id <= stream);
            self.goaway_last = Some(stream);
            let mut payload = BytesMut::new();
            payload.put_u32(stream);
            payload.put_u32(0);
            frame(&mut self.out, GOAWAY, 0, 0, &payload);
            self.stats.goaways.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn answer(&mut self) {
        for stream in std::mem::take(&mut self.complete) {
            let Some(body) = self.open.remove(&stream) else {
                continue;
            };
            let flags = if body.is_empty() {
                END_HEADERS | END_STREAM
            } else {
                END_HEADERS
            };
            frame(&mut self.out, HEADERS, flags, stream, &[0x88]);
            if !body.is_empty() {
                frame(&mut self.out, DATA, END_STREAM, stream, &body);
            }
            *self.stats.bodies.lock().entry(body).or_default() += 1;
            self.stats.answered.fetch_add(1, Ordering::SeqCst);
            self.answered_here += 1;
        }
        if self.answered_here > 0 {
            if let Some(raise) = self.config.raise_to.take() {
                settings(&mut self.out, Some(raise));
                // Checked against the higher limit at once: the client cannot exceed the
                // old one before it has read this frame.
                self.limit = Some(raise);
            }
        }
    }

    /// After a GOAWAY, done once every stream at or below its last-stream-id is answered.
    fn drained(&self) -> bool {
        self.goaway_last.is_some() && self.open.is_empty() && self.complete.is_empty()
    }
}

async fn serve(
    mut tcp: TcpStream,
    number: u64,
    config: RawConfig,
    stats: Arc<RawStats>,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await?;
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut conn = Connection {
        number,
        limit: config.max_concurrent_streams,
        config,
        stats,
        open: BTreeMap::new(),
        complete: Vec::new(),
        complete_count: 0,
        answered_here: 0,
        goaway_last: None,
        abort: false,
        out: BytesMut::new(),
    };
    settings(&mut conn.out, conn.limit);
    let mut input = BytesMut::with_capacity(64 * 1024);
    loop {
        // Parse every whole frame buffered so far.
        let mut any = false;
        while input.len() >= 9 {
            let len = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() < 9 + len {
                break;
            }
            let (kind, flags) = (input[3], input[4]);
            let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
            input.advance(9);
            let payload = input.split_to(len);
            any = true;
            if !conn.on_frame(kind, flags, stream, &payload) {
                return Ok(());
            }
            if conn.abort {
                return Ok(());
            }
        }
        let batch = conn.config.batch.max(1);
        let at_limit = conn
            .limit
            .is_some_and(|limit| conn.open.len() >= limit as usize);
        if any && (conn.complete.len() >= batch || at_limit) {
            conn.answer();
        }
        if !conn.out.is_empty() {
            tcp.write_all(&conn.out).await?;
            conn.out.clear();
        }
        if conn.drained() {
            tcp.shutdown().await?;
            // Read until the client closes: closing with unread input would reset the
            // connection and could destroy answers the client has not read yet.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(n) = tcp.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            return Ok(());
        }
        // Cancel-safe: `read_buf` loses nothing when the quiet-line timer fires first.
        match tokio::time::timeout(Duration::from_millis(5), tcp.read_buf(&mut input)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => conn.answer(),
        }
    }
}
