//! The frames of a link: a 4-byte big-endian length, then one bincode message — the format of
//! tarpc's `serde_transport` over `LengthDelimitedCodec`, written and read without copying a
//! job's tokens.
//!
//! A million-token submission is a 64 MB token buffer. Serialised the usual way it is copied
//! twice on the sending side (into bincode's `Vec`, then into the framed write buffer) and
//! once on the receiving side (out of the frame into the message's `Bytes`). Here:
//! - **Writing**, a message is serialised into segments: the bytes bincode writes, and, in
//!   place of a large token buffer, the buffer itself, shared (a [`TokenList`] offers it with
//!   [`offer`] as it is serialised; the writer recognises the write of exactly that memory).
//!   The segments go out with vectored writes.
//! - **Reading**, a frame is decoded while [`FRAME`] holds it, and a large token buffer is a
//!   slice of the frame ([`shared_bytes`]).
//!
//! Either way the bytes on the wire are exactly bincode's, so either end may be tarpc's own
//! transport.
//!
//! [`TokenList`]: crate::TokenList

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bincode::Options as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Sink, Stream};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::AsyncWrite;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};
use tokio_util::io::poll_read_buf;

use crate::transport::LinkStream;

/// Buffers at least this large are shared between a message and its frame, not copied.
pub(crate) const SHARE_AT_BYTES: usize = 64 * 1024;

/// Queued bytes above which a send waits for the link to take them.
const BACKPRESSURE_BYTES: usize = 64 * 1024;

/// Room made in the read buffer before each read.
const READ_BYTES: usize = 64 * 1024;

/// An emptied buffer with more capacity than this is let go rather than kept for the next
/// frame: one large submission must not pin its size for the link's life.
const KEEP_CAPACITY_BYTES: usize = 1024 * 1024;

/// At most this many segments per vectored write.
const MAX_SLICES: usize = 64;

thread_local! {
    /// While a message is serialised: the large buffers it offered to share.
    static OFFERED: RefCell<Option<Vec<Bytes>>> = const { RefCell::new(None) };
    /// While a frame is decoded: the frame, for large buffers to be sliced from.
    static FRAME: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Offers `bytes` to the frame being written, if any: written as one segment, not copied.
fn offer(bytes: &Bytes) {
    if bytes.len() < SHARE_AT_BYTES {
        return;
    }
    OFFERED.with(|offered| {
        if let Some(offered) = offered.borrow_mut().as_mut() {
            offered.push(bytes.clone());
        }
    });
}

/// Serialises a buffer as bytes (as `Bytes` itself does), offering it to the frame.
pub(crate) fn serialize_shared<S: Serializer>(
    bytes: &Bytes,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    offer(bytes);
    serializer.serialize_bytes(bytes)
}

/// Deserialises a buffer; a large one read from a frame is a slice of the frame.
pub(crate) fn shared_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        if v.len() >= SHARE_AT_BYTES {
            let sliced = FRAME.with(|frame| {
                let frame = frame.borrow();
                let frame = frame.as_ref()?;
                let base = frame.as_ptr() as usize;
                let at = v.as_ptr() as usize;
                (at >= base && at + v.len() <= base + frame.len()).then(|| frame.slice_ref(v))
            });
            if let Some(sliced) = sliced {
                return Ok(sliced);
            }
        }
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes::from(bytes))
    }
}

fn options() -> impl bincode::Options + Copy {
    bincode::DefaultOptions::new()
}

/// Serialises `item` into `tail` as one frame; large offered buffers become segments of their
/// own, pushed with everything before them onto `queue`.
fn encode<T: Serialize>(
    item: &T,
    queue: &mut VecDeque<Bytes>,
    tail: &mut BytesMut,
    max_frame: usize,
) -> io::Result<()> {
    let start = tail.len();
    tail.put_u32(0);
    OFFERED.with(|offered| *offered.borrow_mut() = Some(Vec::new()));
    let mut writer = SegmentWriter {
        tail,
        parts: Vec::new(),
    };
    let written = options().serialize_into(&mut writer, item);
    OFFERED.with(|offered| *offered.borrow_mut() = None);
    let SegmentWriter { tail, mut parts } = writer;
    let length = parts
        .iter()
        .map(|(before, shared)| before.len() + shared.len())
        .sum::<usize>()
        + tail.len()
        - start
        - 4;
    let refused = match written {
        Err(error) => Some(io::Error::new(io::ErrorKind::InvalidData, error)),
        Ok(()) if length > max_frame => Some(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a {length}-byte frame is above the link's {max_frame}-byte limit"),
        )),
        Ok(()) => None,
    };
    if let Some(error) = refused {
        // Whatever was queued before this frame stays; the frame goes.
        match parts.first_mut() {
            Some((before, _)) => {
                before.truncate(start);
                queue.push_back(std::mem::take(before).freeze());
                tail.clear();
            }
            None => tail.truncate(start),
        }
        return Err(error);
    }
    let head = match parts.first_mut() {
        Some((before, _)) => &mut before[start..start + 4],
        None => &mut tail[start..start + 4],
    };
    head.copy_from_slice(&(length as u32).to_be_bytes());
    for (before, shared) in parts {
        queue.push_back(before.freeze());
        queue.push_back(shared);
    }
    Ok(())
}

/// What bincode writes into: copied into `tail`, except an offered buffer's bytes.
struct SegmentWriter<'a> {
    tail: &'a mut BytesMut,
    /// Each shared buffer with the bytes written before it.
    parts: Vec<(BytesMut, Bytes)>,
}

impl io::Write for SegmentWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() >= SHARE_AT_BYTES {
            let shared = OFFERED.with(|offered| {
                let mut offered = offered.borrow_mut();
                let offered = offered.as_mut()?;
                let at = offered
                    .iter()
                    .position(|b| b.as_ptr() == buf.as_ptr() && b.len() == buf.len())?;
                Some(offered.swap_remove(at))
            });
            if let Some(shared) = shared {
                self.parts.push((self.tail.split(), shared));
                return Ok(buf.len());
            }
        }
        self.tail.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decodes one frame's message; a large buffer in it is a slice of the frame.
fn decode<T: for<'de> Deserialize<'de>>(frame: BytesMut) -> io::Result<T> {
    let frame = frame.freeze();
    FRAME.with(|slot| *slot.borrow_mut() = Some(frame.clone()));
    let decoded = options().deserialize(&frame);
    FRAME.with(|slot| *slot.borrow_mut() = None);
    decoded.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// One link as a tarpc transport: a stream of `In` messages and a sink of `Out` ones.
pub struct LinkTransport<In, Out> {
    io: LinkStream,
    codec: LengthDelimitedCodec,
    max_frame: usize,
    read: BytesMut,
    ended: bool,
    /// Frames (and shared buffers) ready to write, in order, then the bytes after them.
    queue: VecDeque<Bytes>,
    tail: BytesMut,
    types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> LinkTransport<In, Out> {
    /// Frames `io`, refusing frames above `max_frame` bytes either way.
    pub(crate) fn new(io: LinkStream, max_frame: usize) -> Self {
        LinkTransport {
            io,
            codec: LengthDelimitedCodec::builder()
                .max_frame_length(max_frame)
                .new_codec(),
            max_frame,
            read: BytesMut::new(),
            ended: false,
            queue: VecDeque::new(),
            tail: BytesMut::new(),
            types: PhantomData,
        }
    }

    fn queued(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }
}

impl<In, Out> Unpin for LinkTransport<In, Out> {}

impl<In: for<'de> Deserialize<'de>, Out> Stream for LinkTransport<In, Out> {
    type Item = io::Result<In>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<In>>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.codec.decode(&mut this.read)? {
                if this.read.is_empty() && this.read.capacity() > KEEP_CAPACITY_BYTES {
                    this.read = BytesMut::new();
                }
                return Poll::Ready(Some(decode(frame)));
            }
            if this.ended {
                return Poll::Ready(if this.read.is_empty() {
                    None
                } else {
                    Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the link ended inside a frame",
                    )))
                });
            }
            this.read.reserve(READ_BYTES);
            let read = ready!(poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read))?;
            this.ended = read == 0;
        }
    }
}

impl<In, Out: Serialize> Sink<Out> for LinkTransport<In, Out> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.queued() >= BACKPRESSURE_BYTES {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Out) -> io::Result<()> {
        let this = self.get_mut();
        encode(&item, &mut this.queue, &mut this.tail, this.max_frame)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.queue.is_empty() {
                if this.tail.is_empty() {
                    break;
                }
                this.queue.push_back(this.tail.split().freeze());
                if this.tail.capacity() > KEEP_CAPACITY_BYTES {
                    this.tail = BytesMut::new();
                }
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slice, segment) in slices.iter_mut().zip(&this.queue) {
                *slice = IoSlice::new(segment);
                count += 1;
            }
            let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut left = written;
            while left > 0 {
                let front = this.queue.front_mut().expect("written bytes were queued");
                if front.len() <= left {
                    left -= front.len();
                    this.queue.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::TokenList;

    /// A message with a token list in it (a tarpc request's context carries its deadline as
    /// time left, so two encodings of one request differ).
    type Message = (String, TokenList, u64);

    fn tokens(n: usize) -> TokenList {
        (0..n).map(|i| format!("{i:064x}")).collect()
    }

    fn submit(tokens: TokenList) -> Message {
        ("shop".into(), tokens, 7)
    }

    fn list_of(message: &Message) -> &TokenList {
        &message.1
    }

    /// A link over plain TCP carrying test messages.
    fn link(tcp: TcpStream, max_frame: usize) -> LinkTransport<Message, Message> {
        LinkTransport::new(LinkStream::plain(tcp), max_frame)
    }

    /// Compares two byte strings without printing them.
    fn same(left: &[u8], right: &[u8]) {
        let first = left.iter().zip(right).position(|(l, r)| l != r);
        assert!(
            first.is_none() && left.len() == right.len(),
            "{} against {} bytes, first difference at {first:?}",
            left.len(),
            right.len()
        );
    }

    /// What tarpc's own transport writes: the length, then bincode's bytes.
    fn tarpc_frame(message: &Message) -> Vec<u8> {
        let body = options().serialize(message).unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn a_large_token_buffer_is_a_segment_of_its_own_and_the_bytes_are_bincodes() {
        let list = tokens(5_000);
        let message = submit(list.clone());
        let (mut queue, mut tail) = (VecDeque::new(), BytesMut::new());
        encode(&message, &mut queue, &mut tail, usize::MAX).unwrap();
        let (data, _) = list.raw_parts();
        assert!(
            queue
                .iter()
                .any(|segment| segment.as_ptr() == data.as_ptr()),
            "the token buffer was copied"
        );
        let mut wire: Vec<u8> = queue.iter().flat_map(|s| s.iter().copied()).collect();
        wire.extend_from_slice(&tail);
        same(&wire, &tarpc_frame(&message));
        // Decoded, the buffer is a slice of the frame and the list is the same.
        let frame = BytesMut::from(&wire[4..]);
        let base = frame.as_ptr() as usize;
        let decoded: Message = decode(frame).unwrap();
        let (data, _) = list_of(&decoded).raw_parts();
        let at = data.as_ptr() as usize;
        assert!(
            at > base && at < base + wire.len(),
            "the token buffer was copied"
        );
        assert_eq!(list_of(&decoded), &list);
    }

    #[test]
    fn small_messages_share_one_buffer_and_a_refused_frame_leaves_the_others() {
        let (mut queue, mut tail) = (VecDeque::new(), BytesMut::new());
        let small = submit(tokens(3));
        encode(&small, &mut queue, &mut tail, 1024).unwrap();
        encode(&small, &mut queue, &mut tail, 1024).unwrap();
        assert!(queue.is_empty(), "small frames are copied into the tail");
        let large = submit(tokens(5_000));
        let error = encode(&large, &mut queue, &mut tail, 1024).unwrap_err();
        assert!(error
            .to_string()
            .contains("above the link's 1024-byte limit"));
        let mut wire: Vec<u8> = queue.iter().flat_map(|s| s.iter().copied()).collect();
        wire.extend_from_slice(&tail);
        same(&wire, &[tarpc_frame(&small), tarpc_frame(&small)].concat());
    }

    #[tokio::test]
    async fn messages_cross_a_real_socket_in_order_and_the_wire_is_tarpcs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut link = link(TcpStream::connect(addr).await.unwrap(), usize::MAX);
            for n in [2, 20_000, 1, 3_000] {
                link.feed(submit(tokens(n))).await.unwrap();
            }
            link.flush().await.unwrap();
            // Then read what comes back over the same link.
            let echoed = link.next().await.unwrap().unwrap();
            assert_eq!(list_of(&echoed).len(), 20_000);
        });
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut expected = Vec::new();
        for n in [2, 20_000, 1, 3_000] {
            expected.extend(tarpc_frame(&submit(tokens(n))));
        }
        let mut wire = vec![0; expected.len()];
        tcp.read_exact(&mut wire).await.unwrap();
        same(&wire, &expected);
        // An answer over the same link, read by the sender's transport.
        let mut link = link(tcp, usize::MAX);
        link.send(submit(tokens(20_000))).await.unwrap();
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_frame_above_the_readers_limit_ends_the_link_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut link = link(TcpStream::connect(addr).await.unwrap(), usize::MAX);
            link.send(submit(tokens(3))).await.unwrap();
            link.send(submit(tokens(1_000))).await.unwrap();
            link
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut link = link(tcp, 1024);
        assert_eq!(list_of(&link.next().await.unwrap().unwrap()).len(), 3);
        let error = link.next().await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        drop(sender.await.unwrap());
    }
}
