//! A byte-level HTTP/2 frame shim between the transport and the `h2` server.
//!
//! `h2` fixes SETTINGS_MAX_CONCURRENT_STREAMS at the handshake and always puts its own highest
//! processed stream in GOAWAY. Real APNs advertises 1 stream until the first authorised request,
//! then raises it; and `goaway_after` needs last-stream-id to be exactly the Nth stream. So the
//! shim watches the frames `h2` writes and:
//! - rewrites MAX_CONCURRENT_STREAMS to 1 in `h2`'s first SETTINGS frame (when asked to);
//! - injects, at the next frame boundary after [`ShimControl::raise`], a SETTINGS frame carrying
//!   the real limit (`h2` itself is configured with that limit, so it accepts what follows);
//! - caps GOAWAY's last-stream-id at [`ShimControl::cap_goaway`];
//!
//! and on the read side swallows the client's SETTINGS ACK for the injected frame, so that `h2`
//! never sees an ACK it did not ask for (peers ACK SETTINGS in the order they were sent).

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER_LEN: usize = 9;
const CLIENT_PREFACE_LEN: usize = 24;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Above this much buffered output, `poll_write` pushes back instead of buffering more.
const OUT_HIGH_WATER: usize = 256 * 1024;

/// Requests from the connection's tasks to the shim (all on the fake's single thread).
#[derive(Default)]
pub(crate) struct ShimControl {
    raise_to: Cell<Option<u32>>,
    goaway_cap: Cell<Option<u32>>,
}

impl ShimControl {
    /// Asks for a SETTINGS frame advertising `max_concurrent_streams` at the next frame boundary.
    pub(crate) fn raise(&self, max_concurrent_streams: u32) {
        self.raise_to.set(Some(max_concurrent_streams));
    }

    /// Caps the last-stream-id of every GOAWAY written from now on.
    pub(crate) fn cap_goaway(&self, last_stream_id: u32) {
        self.goaway_cap.set(Some(last_stream_id));
    }
}

/// What the shim does to the frame whose payload is being written.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Patch {
    None,
    /// Rewrite MAX_CONCURRENT_STREAMS to 1 once the payload starting at this `out` offset is in.
    FirstSettings(usize),
    /// Cap the last-stream-id at the start of the payload at this `out` offset.
    GoAway(usize),
}

/// Who sent a SETTINGS frame still waiting for the client's ACK.
#[derive(Clone, Copy, PartialEq, Debug)]
enum SettingsFrom {
    H2,
    Shim,
}

/// Wraps the transport `T`; see the module docs.
pub(crate) struct Shim<T> {
    io: T,
    control: Rc<ShimControl>,
    /// Whether the write side parses frames at all (otherwise bytes go straight through).
    active: bool,
    single_stream_until_auth: bool,
    first_settings_seen: bool,
    raised: bool,
    // Write side: bytes from `h2`, possibly patched, waiting for the transport.
    out: Vec<u8>,
    out_pos: usize,
    w_header: [u8; FRAME_HEADER_LEN],
    w_header_len: usize,
    w_payload_left: usize,
    w_patch: Patch,
    w_frame_len: usize,
    pending_acks: VecDeque<SettingsFrom>,
    // Read side: bytes from the transport, filtered, waiting for `h2`.
    read_active: bool,
    r_preface_left: usize,
    r_header: [u8; FRAME_HEADER_LEN],
    r_header_len: usize,
    r_payload_left: usize,
    r_ready: Vec<u8>,
    r_ready_pos: usize,
    r_raw: Box<[u8]>,
}

impl<T> Shim<T> {
    /// A shim that parses only when one of its features is on; otherwise it is a plain pass-through.
    pub(crate) fn new(
        io: T,
        control: Rc<ShimControl>,
        single_stream_until_auth: bool,
        rewrite_goaway: bool,
    ) -> Self {
        let active = single_stream_until_auth || rewrite_goaway;
        Shim {
            io,
            control,
            active,
            single_stream_until_auth,
            first_settings_seen: false,
            raised: false,
            out: Vec::new(),
            out_pos: 0,
            w_header: [0; FRAME_HEADER_LEN],
            w_header_len: 0,
            w_payload_left: 0,
            w_patch: Patch::None,
            w_frame_len: 0,
            pending_acks: VecDeque::new(),
            read_active: single_stream_until_auth,
            r_preface_left: CLIENT_PREFACE_LEN,
            r_header: [0; FRAME_HEADER_LEN],
            r_header_len: 0,
            r_payload_left: 0,
            r_ready: Vec::new(),
            r_ready_pos: 0,
            r_raw: if single_stream_until_auth {
                vec![0; 16 * 1024].into_boxed_slice()
            } else {
                Box::default()
            },
        }
    }

    /// The wrapped transport.
    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &T {
        &self.io
    }

    fn at_write_boundary(&self) -> bool {
        self.w_header_len == 0 && self.w_payload_left == 0 && self.w_patch == Patch::None
    }

    /// Injects the raised SETTINGS frame if one was asked for and the output is between frames.
    fn maybe_inject(&mut self) {
        if self.raised || !self.single_stream_until_auth || !self.at_write_boundary() {
            return;
        }
        let Some(limit) = self.control.raise_to.get() else {
            return;
        };
        self.raised = true;
        self.out
            .extend_from_slice(&[0, 0, 6, TYPE_SETTINGS, 0, 0, 0, 0, 0]);
        self.out
            .extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
        self.out.extend_from_slice(&limit.to_be_bytes());
        self.pending_acks.push_back(SettingsFrom::Shim);
    }

    /// Appends bytes written by `h2` to `out`, tracking frame boundaries and patching as needed.
    fn absorb(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.w_payload_left == 0 && self.w_patch == Patch::None {
                self.maybe_inject();
                let take = (FRAME_HEADER_LEN - self.w_header_len).min(buf.len());
                self.w_header[self.w_header_len..self.w_header_len + take]
                    .copy_from_slice(&buf[..take]);
                self.w_header_len += take;
                self.out.extend_from_slice(&buf[..take]);
                buf = &buf[take..];
                if self.w_header_len == FRAME_HEADER_LEN {
                    self.w_header_len = 0;
                    self.start_write_frame();
                }
            } else {
                let take = self.w_payload_left.min(buf.len());
                self.out.extend_from_slice(&buf[..take]);
                self.w_payload_left -= take;
                buf = &buf[take..];
            }
            if self.w_payload_left == 0 && self.w_header_len == 0 {
                self.finish_write_frame();
            }
        }
        self.maybe_inject();
    }

    fn start_write_frame(&mut self) {
        let h = self.w_header;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        self.w_payload_left = len;
        self.w_frame_len = len;
        self.w_patch = match kind {
            TYPE_SETTINGS if flags & FLAG_ACK == 0 => {
                self.pending_acks.push_back(SettingsFrom::H2);
                let first = !self.first_settings_seen;
                self.first_settings_seen = true;
                if first && self.single_stream_until_auth {
                    Patch::FirstSettings(self.out.len())
                } else {
                    Patch::None
                }
            }
            TYPE_GOAWAY if self.control.goaway_cap.get().is_some() && len >= 8 => {
                Patch::GoAway(self.out.len())
            }
            _ => Patch::None,
        };
    }

    fn finish_write_frame(&mut self) {
        match std::mem::replace(&mut self.w_patch, Patch::None) {
            Patch::None => {}
            Patch::FirstSettings(start) => {
                let payload = &mut self.out[start..start + self.w_frame_len];
                for entry in payload.chunks_exact_mut(6) {
                    if u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
                        entry[2..6].copy_from_slice(&1u32.to_be_bytes());
                    }
                }
            }
            Patch::GoAway(start) => {
                let cap = self.control.goaway_cap.get().unwrap_or(u32::MAX);
                let field = &mut self.out[start..start + 4];
                let last =
                    u32::from_be_bytes([field[0], field[1], field[2], field[3]]) & !(1 << 31);
                if last > cap {
                    field.copy_from_slice(&cap.to_be_bytes());
                }
            }
        }
    }

    /// How far `out` may be written: not into a payload still waiting to be patched.
    fn writable_end(&self) -> usize {
        match self.w_patch {
            Patch::None => self.out.len(),
            Patch::FirstSettings(start) | Patch::GoAway(start) => start,
        }
    }

    /// Filters bytes read from the transport into `r_ready`, dropping the ACK of injected SETTINGS.
    fn filter_read(&mut self, mut raw: &[u8]) {
        while !raw.is_empty() {
            if self.r_preface_left > 0 {
                let take = self.r_preface_left.min(raw.len());
                self.r_ready.extend_from_slice(&raw[..take]);
                self.r_preface_left -= take;
                raw = &raw[take..];
            } else if self.r_payload_left > 0 {
                let take = self.r_payload_left.min(raw.len());
                self.r_ready.extend_from_slice(&raw[..take]);
                self.r_payload_left -= take;
                raw = &raw[take..];
            } else {
                // Headers are held back until complete: only then is it known whether to drop them.
                let take = (FRAME_HEADER_LEN - self.r_header_len).min(raw.len());
                self.r_header[self.r_header_len..self.r_header_len + take]
                    .copy_from_slice(&raw[..take]);
                self.r_header_len += take;
                raw = &raw[take..];
                if self.r_header_len == FRAME_HEADER_LEN {
                    self.r_header_len = 0;
                    let h = self.r_header;
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let is_ack = h[3] == TYPE_SETTINGS && h[4] & FLAG_ACK != 0;
                    let swallow = is_ack
                        && len == 0
                        && self.pending_acks.pop_front() == Some(SettingsFrom::Shim);
                    if !swallow {
                        self.r_ready.extend_from_slice(&h);
                        self.r_payload_left = len;
                    }
                }
            }
        }
    }

    /// Once the injected SETTINGS was acknowledged, reading needs no more parsing.
    fn read_done(&self) -> bool {
        self.raised
            && !self.pending_acks.contains(&SettingsFrom::Shim)
            && self.r_header_len == 0
            && self.r_ready_pos == self.r_ready.len()
    }
}

impl<T: AsyncWrite + Unpin> Shim<T> {
    /// Writes buffered output up to [`Self::writable_end`].
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let end = self.writable_end();
        while self.out_pos < end {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        // Offsets of a payload waiting to be patched point into `out`: keep it until patched.
        if self.out_pos == self.out.len() && self.w_patch == Patch::None {
            self.out.clear();
            self.out_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Shim<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.r_ready_pos < this.r_ready.len() {
                let n = (this.r_ready.len() - this.r_ready_pos).min(buf.remaining());
                buf.put_slice(&this.r_ready[this.r_ready_pos..this.r_ready_pos + n]);
                this.r_ready_pos += n;
                if this.r_ready_pos == this.r_ready.len() {
                    this.r_ready.clear();
                    this.r_ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !this.read_active || this.read_done() {
                this.read_active = false;
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut raw = std::mem::take(&mut this.r_raw);
            let mut rb = ReadBuf::new(&mut raw);
            let result = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let filled = rb.filled().len();
            if let Poll::Ready(Ok(())) = result {
                if filled == 0 {
                    this.r_raw = raw;
                    return Poll::Ready(Ok(()));
                }
                this.filter_read(&raw[..filled]);
            }
            this.r_raw = raw;
            ready!(result)?;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Shim<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.active {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        if this.out.len() - this.out_pos >= OUT_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.absorb(buf);
        // Opportunistic: push bytes on now; a Pending here has registered the waker already.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.active {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        Pin::new(this).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        !self.active && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.active {
            this.maybe_inject();
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.active {
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// A transport that hands out scripted reads in given chunk sizes and accepts at most
    /// `write_chunk` bytes per write.
    struct Script {
        reads: VecDeque<Vec<u8>>,
        written: Vec<u8>,
        write_chunk: usize,
    }

    impl AsyncRead for Script {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut chunk) = this.reads.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    chunk.drain(..n);
                    this.reads.push_front(chunk);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.write_chunk);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in entries {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(TYPE_SETTINGS, 0, 0, &payload)
    }

    fn goaway(last: u32) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&0u32.to_be_bytes());
        frame(TYPE_GOAWAY, 0, 0, &payload)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Writes `bytes` through a shim in pieces cut at `cut` bytes, flushing at the end.
    fn write_through(shim: &mut Shim<Script>, bytes: &[u8], cut: usize) {
        block_on(async {
            for piece in bytes.chunks(cut) {
                let mut off = 0;
                while off < piece.len() {
                    off += poll_fn(|cx| Pin::new(&mut *shim).poll_write(cx, &piece[off..]))
                        .await
                        .unwrap();
                }
            }
            poll_fn(|cx| Pin::new(&mut *shim).poll_flush(cx))
                .await
                .unwrap();
        });
    }

    fn script(write_chunk: usize, reads: Vec<Vec<u8>>) -> Script {
        Script {
            reads: reads.into(),
            written: Vec::new(),
            write_chunk,
        }
    }

    #[test]
    fn first_settings_advertises_one_stream_whatever_the_cuts() {
        let server_settings = settings(&[(0x4, 65535), (0x3, 1000), (0x5, 16384)]);
        let data = frame(0x0, 0x1, 1, b"hello");
        let mut input = server_settings.clone();
        input.extend_from_slice(&data);
        let mut expected = settings(&[(0x4, 65535), (0x3, 1), (0x5, 16384)]);
        expected.extend_from_slice(&data);
        for cut in 1..=input.len() {
            for write_chunk in [1, 3, 7, 1024] {
                let mut shim = Shim::new(script(write_chunk, vec![]), Rc::default(), true, false);
                write_through(&mut shim, &input, cut);
                assert_eq!(
                    shim.get_ref().written,
                    expected,
                    "cut {cut} chunk {write_chunk}"
                );
            }
        }
    }

    #[test]
    fn raise_is_injected_at_the_next_frame_boundary_and_its_ack_swallowed() {
        let headers = frame(0x1, 0x5, 1, &[0x88]);
        let data = frame(0x0, 0x1, 3, b"0123456789");
        for cut in 1..=data.len() {
            let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            let ack = frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]);
            let ping = frame(0x6, 0, 0, &[7; 8]);
            let mut incoming = preface.clone();
            incoming.extend_from_slice(&settings(&[(0x4, 1 << 20)]));
            incoming.extend_from_slice(&ack); // answers h2's SETTINGS: must reach h2
            incoming.extend_from_slice(&ack); // answers the injected SETTINGS: swallowed
            incoming.extend_from_slice(&ping);
            // Deliver the incoming bytes cut into pieces of `cut` bytes.
            let reads = incoming.chunks(cut).map(<[u8]>::to_vec).collect();
            let control = Rc::new(ShimControl::default());
            let mut shim = Shim::new(script(5, reads), control.clone(), true, false);
            write_through(&mut shim, &settings(&[(0x3, 500)]), 4);
            write_through(&mut shim, &headers[..4], 4);
            control.raise(500);
            // Mid-frame: nothing is injected until the HEADERS frame is complete.
            write_through(&mut shim, &headers[4..], 2);
            write_through(&mut shim, &data, cut);

            let mut expected = settings(&[(0x3, 1)]);
            expected.extend_from_slice(&headers);
            expected.extend_from_slice(&settings(&[(0x3, 500)]));
            expected.extend_from_slice(&data);
            assert_eq!(shim.get_ref().written, expected, "cut {cut}");

            let mut seen = Vec::new();
            block_on(async {
                loop {
                    let mut space = [0u8; 11];
                    let mut buf = ReadBuf::new(&mut space);
                    poll_fn(|cx| Pin::new(&mut shim).poll_read(cx, &mut buf))
                        .await
                        .unwrap();
                    if buf.filled().is_empty() {
                        break;
                    }
                    seen.extend_from_slice(buf.filled());
                }
            });
            let mut want = preface;
            want.extend_from_slice(&settings(&[(0x4, 1 << 20)]));
            want.extend_from_slice(&ack);
            want.extend_from_slice(&ping);
            assert_eq!(seen, want, "cut {cut}");
        }
    }

    #[test]
    fn goaway_last_stream_id_is_capped() {
        for cut in 1..=17 {
            let control = Rc::new(ShimControl::default());
            let mut shim = Shim::new(script(3, vec![]), control.clone(), false, true);
            control.cap_goaway(5);
            let mut input = goaway(u32::MAX >> 1);
            input.extend_from_slice(&goaway(3));
            write_through(&mut shim, &input, cut);
            let mut expected = goaway(5);
            expected.extend_from_slice(&goaway(3));
            assert_eq!(shim.get_ref().written, expected, "cut {cut}");
        }
    }

    #[test]
    fn inactive_shim_passes_bytes_through() {
        let mut shim = Shim::new(script(1024, vec![]), Rc::default(), false, false);
        let input = settings(&[(0x3, 1000)]);
        write_through(&mut shim, &input, 5);
        assert_eq!(shim.get_ref().written, input);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A frame `h2` might write: (type, flags, payload).
        fn any_frame() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
            prop_oneof![
                (
                    Just(0x0u8),
                    0u8..2,
                    proptest::collection::vec(any::<u8>(), 0..40)
                ),
                (
                    Just(0x1u8),
                    Just(0x4u8),
                    proptest::collection::vec(any::<u8>(), 1..20)
                ),
                (
                    Just(0x6u8),
                    Just(0u8),
                    proptest::collection::vec(any::<u8>(), 8..=8)
                ),
                (
                    Just(TYPE_GOAWAY),
                    Just(0u8),
                    proptest::collection::vec(any::<u8>(), 8..12)
                ),
                (
                    Just(TYPE_SETTINGS),
                    Just(0u8),
                    proptest::collection::vec((0u16..7, any::<u32>()), 0..4).prop_map(|entries| {
                        entries
                            .iter()
                            .flat_map(|(id, v)| {
                                [id.to_be_bytes().to_vec(), v.to_be_bytes().to_vec()].concat()
                            })
                            .collect()
                    })
                ),
                (Just(TYPE_SETTINGS), Just(FLAG_ACK), Just(Vec::new())),
            ]
        }

        /// What the shim should make of the frames: the first SETTINGS advertises 1 stream,
        /// GOAWAY last-stream-ids are capped, and the raise follows frame `raise_after`.
        fn model(
            frames: &[(u8, u8, Vec<u8>)],
            cap: u32,
            raise_after: usize,
            limit: u32,
        ) -> Vec<u8> {
            let mut out = Vec::new();
            let mut first_settings = true;
            for (i, (kind, flags, payload)) in frames.iter().enumerate() {
                let mut payload = payload.clone();
                if *kind == TYPE_SETTINGS
                    && flags & FLAG_ACK == 0
                    && std::mem::take(&mut first_settings)
                {
                    for entry in payload.chunks_exact_mut(6) {
                        if entry[0] == 0 && entry[1] == 3 {
                            entry[2..6].copy_from_slice(&1u32.to_be_bytes());
                        }
                    }
                }
                if *kind == TYPE_GOAWAY {
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & !(1 << 31);
                    if last > cap {
                        payload[..4].copy_from_slice(&cap.to_be_bytes());
                    }
                }
                out.extend_from_slice(&frame(*kind, *flags, 0, &payload));
                if i + 1 == raise_after {
                    out.extend_from_slice(&settings(&[(0x3, limit)]));
                }
            }
            out
        }

        proptest! {
            #[test]
            fn output_matches_the_model_however_writes_are_cut(
                frames in proptest::collection::vec(any_frame(), 1..12),
                cut in 1usize..30,
                write_chunk in 1usize..30,
                cap in 0u32..1000,
                raise_at in 0usize..12,
                limit in 2u32..2000,
            ) {
                let raise_after = raise_at.min(frames.len()).max(1);
                let control = Rc::new(ShimControl::default());
                let mut shim = Shim::new(script(write_chunk, vec![]), control.clone(), true, true);
                control.cap_goaway(cap);
                for (i, (kind, flags, payload)) in frames.iter().enumerate() {
                    write_through(&mut shim, &frame(*kind, *flags, 0, payload), cut);
                    if i + 1 == raise_after {
                        control.raise(limit);
                    }
                }
                write_through(&mut shim, &[], 1);
                prop_assert_eq!(&shim.get_ref().written, &model(&frames, cap, raise_after, limit));
            }
        }
    }
}
