//! Reading client WebSocket frames (RFC 6455 section 5) with a buffer that
//! costs nothing while the connection is idle.
//!
//! tickcast writes its own frames (pre-encoded, shared) and reads only small
//! JSON requests, so an idle connection should hold no read buffer at all:
//! the reader waits for the socket to become readable before it allocates,
//! and gives the buffer back once every byte it holds has been consumed.
//! (fastwebsockets' reader keeps an 8 KiB buffer per connection for its
//! whole life, which is most of an idle connection's memory.)

use std::io;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::net::TcpStream;

use super::watch::Activity;

/// Bytes reserved for the first read of a burst: a typical request fits.
const FIRST_READ: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One frame, unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    /// RSV1 on a message's first frame: its payload is compressed
    /// (permessage-deflate, RFC 7692); only where the handshake agreed.
    pub compressed: bool,
    pub payload: BytesMut,
}

/// Why reading stopped; each maps to a close code in the session.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

/// A socket read half as the frame reader needs it.
pub trait ReadSocket {
    /// Ready when a read may succeed. A poll function rather than a future:
    /// it keeps no waiter of its own (168 bytes for tokio's `readable()`)
    /// in every idle connection's task; the socket's one reader slot holds
    /// the waker.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
}

impl ReadSocket for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only this reader polls the read side, so its waker is never
        // displaced by another's.
        TcpStream::poll_read_ready(self, cx)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
}

/// A socket shared by the reader and the writer.
impl<S: ReadSocket> ReadSocket for std::sync::Arc<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        (**self).try_read_buf(buf)
    }
}

/// Reads masked client frames of at most `max_payload` bytes each.
pub struct FrameReader<S> {
    socket: S,
    buf: BytesMut,
}

impl<S: ReadSocket> FrameReader<S> {
    /// `read_ahead` holds bytes already read from the socket (during the
    /// HTTP upgrade); they come first.
    pub fn new(socket: S, read_ahead: &[u8]) -> Self {
        Self {
            socket,
            buf: BytesMut::from(read_ahead),
        }
    }

    /// Bytes the reader holds right now (0 while idle).
    #[cfg(test)]
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// One read into the buffer, making room for at least `want` bytes in
    /// all; waits for the socket if nothing is there yet.
    ///
    /// This is the reader's only await point, so an idle connection's task
    /// holds just this small future (docs/benchmarks.md, memory).
    async fn read_more(&mut self, want: usize, activity: &Activity) -> Result<(), FrameError> {
        loop {
            if self.buf.capacity() < want {
                let additional = (want - self.buf.len()).max(FIRST_READ);
                // Reuse the allocation if it is big enough, else allocate
                // just this much: `reserve` may double a buffer shared with
                // frames split off it, so a client could make a connection
                // hold twice `max_payload` (found by fuzz/, target frames).
                if !self.buf.try_reclaim(additional) {
                    let mut grown = BytesMut::with_capacity(self.buf.len() + additional);
                    grown.extend_from_slice(&self.buf);
                    self.buf = grown;
                }
            }
            match self.socket.try_read_buf(&mut self.buf) {
                Ok(0) => return Err(FrameError::Eof),
                Ok(_) => {
                    activity.read_now();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        // Idle: hold no memory while waiting.
                        self.buf = BytesMut::new();
                    }
                    std::future::poll_fn(|cx| self.socket.poll_read_ready(cx)).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next frame. Not cancel-safe in general (call it from one task
    /// that is dropped only when the session ends), although bytes read so
    /// far stay in the buffer. Every read, and every frame left half
    /// received, is stamped on `activity` for the read timeouts (`watch`).
    /// `max_payload` is passed each time rather than kept: one word less
    /// in every idle connection's reader. `deflate`: the connection agreed
    /// to permessage-deflate, so RSV1 may mark a compressed message.
    pub async fn read_frame(
        &mut self,
        activity: &Activity,
        max_payload: usize,
        deflate: bool,
    ) -> Result<Frame, FrameError> {
        loop {
            // Decided before the wait, so the parse result is not held
            // across it (80 bytes in every idle connection's reader).
            let want = match self.parse(max_payload, deflate)? {
                Parsed::Frame(frame) => return Ok(frame),
                Parsed::Need(want) => want,
            };
            if !self.buf.is_empty() {
                activity.frame_begun();
            }
            self.read_more(want, activity).await?
        }
    }

    /// Takes one whole frame off the buffer, or says how many bytes the
    /// buffer must hold before it can.
    fn parse(&mut self, max_payload: usize, deflate: bool) -> Result<Parsed, FrameError> {
        if self.buf.len() < 2 {
            return Ok(Parsed::Need(2));
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let compressed = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (compressed && !deflate) {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension agreed to them)",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
        if compressed && (opcode.is_control() || opcode == OpCode::Continuation) {
            // RFC 7692 section 6: RSV1 marks a message's first frame only.
            return Err(FrameError::Protocol(
                "RSV1 set on a control or continuation frame",
            ));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len_bytes, short) = match b1 & 0x7F {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let head = 2 + len_bytes;
        if self.buf.len() < head + 4 {
            return Ok(Parsed::Need(head + 4));
        }
        let len = match short {
            Some(n) => n,
            None if len_bytes == 2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            None => u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")),
        };
        if opcode.is_control() && (!fin || len > 125) {
            return Err(FrameError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        if len > max_payload as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let total = head + 4 + len as usize;
        if self.buf.len() < total {
            return Ok(Parsed::Need(total));
        }
        let mask: [u8; 4] = self.buf[head..head + 4].try_into().expect("4 bytes");
        self.buf.advance(head + 4);
        let mut payload = self.buf.split_to(len as usize);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        if self.buf.is_empty() {
            // Everything consumed: the next read starts from nothing.
            self.buf = BytesMut::new();
        }
        Ok(Parsed::Frame(Frame {
            fin,
            opcode,
            compressed,
            payload,
        }))
    }
}

enum Parsed {
    Frame(Frame),
    /// The buffer must hold this many bytes in all.
    Need(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Hands out the scripted chunks one `try_read` at a time.
    struct Script(Mutex<Vec<Vec<u8>>>);

    impl ReadSocket for Script {
        fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
            let mut chunks = self.0.lock().unwrap();
            if chunks.is_empty() {
                return Ok(0);
            }
            let chunk = chunks.remove(0);
            let room = buf.capacity() - buf.len();
            let n = chunk.len().min(room);
            buf.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                chunks.insert(0, chunk[n..].to_vec());
            }
            Ok(n)
        }
    }

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// A reader with its `max_payload` and whether deflate was agreed, as
    /// the session's reader holds them.
    struct Limited(FrameReader<Script>, usize, bool);

    impl Limited {
        async fn read_frame(&mut self, activity: &Activity) -> Result<Frame, FrameError> {
            self.0.read_frame(activity, self.1, self.2).await
        }
        fn buffered_capacity(&self) -> usize {
            self.0.buffered_capacity()
        }
    }

    fn reader(chunks: Vec<Vec<u8>>, max: usize) -> Limited {
        Limited(
            FrameReader::new(Script(Mutex::new(chunks)), b""),
            max,
            false,
        )
    }

    fn deflate_reader(chunks: Vec<Vec<u8>>) -> Limited {
        Limited(FrameReader::new(Script(Mutex::new(chunks)), b""), 100, true)
    }

    /// With permessage-deflate agreed, RSV1 marks a compressed message's
    /// first frame, and is still refused anywhere else.
    #[tokio::test]
    async fn rsv1_is_read_only_where_deflate_allows_it() {
        let a = Activity::default();
        let mut r = deflate_reader(vec![masked(0xC1, b"x"), masked(0x01, b"y")]);
        let f = r.read_frame(&a).await.unwrap();
        assert!(f.compressed && f.opcode == OpCode::Text && f.fin);
        let f = r.read_frame(&a).await.unwrap();
        assert!(!f.compressed && !f.fin);
        for (first, what) in [
            (0xC0, "continuation"),
            (0xC9, "ping"),
            (0xC8, "close"),
            (0xA1, "rsv2"),
            (0x91, "rsv3"),
        ] {
            let mut r = deflate_reader(vec![masked(first, b"z")]);
            assert!(
                matches!(r.read_frame(&a).await, Err(FrameError::Protocol(_))),
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_read_whole_and_unmasked() {
        let text = masked(0x81, b"{\"op\":\"ping\"}");
        let big = masked(0x82, &vec![7u8; 70_000]);
        let mut bytes = text.clone();
        bytes.extend_from_slice(&big);
        bytes.extend_from_slice(&masked(0x89, b"hi"));
        for step in [1, 3, 7, 100, bytes.len()] {
            let chunks = bytes.chunks(step).map(|c| c.to_vec()).collect();
            let mut r = reader(chunks, 1 << 20);
            let f = r.read_frame(&Activity::default()).await.unwrap();
            assert_eq!(
                (f.fin, f.opcode, &f.payload[..]),
                (true, OpCode::Text, &b"{\"op\":\"ping\"}"[..])
            );
            let f = r.read_frame(&Activity::default()).await.unwrap();
            assert_eq!((f.opcode, f.payload.len()), (OpCode::Binary, 70_000));
            assert!(f.payload.iter().all(|&b| b == 7));
            let f = r.read_frame(&Activity::default()).await.unwrap();
            assert_eq!((f.opcode, &f.payload[..]), (OpCode::Ping, &b"hi"[..]));
            assert_eq!(r.buffered_capacity(), 0, "nothing held once consumed");
            assert!(matches!(
                r.read_frame(&Activity::default()).await,
                Err(FrameError::Eof)
            ));
        }
    }

    /// What the sweeper's frame timeout reads: a frame left half received
    /// starts the clock; reading it whole does not clear it (the session
    /// does, once a message is complete).
    #[tokio::test]
    async fn a_half_received_frame_is_stamped() {
        let frame = masked(0x81, b"{\"op\":\"ping\"}");
        let activity = Activity::default();
        let mut r = reader(vec![frame.clone()], 100);
        r.read_frame(&activity).await.unwrap();
        assert!(!activity.frame_in_progress(), "read whole at once");
        let mut r = reader(vec![frame[..5].to_vec(), frame[5..].to_vec()], 100);
        r.read_frame(&activity).await.unwrap();
        assert!(activity.frame_in_progress(), "stamped while half received");
    }

    #[tokio::test]
    async fn limits_and_rules_are_enforced() {
        let mut r = reader(vec![masked(0x81, &[b'x'; 200])], 100);
        assert!(matches!(
            r.read_frame(&Activity::default()).await,
            Err(FrameError::TooLarge(200))
        ));
        let mut unmasked = masked(0x81, b"a");
        unmasked[1] &= 0x7F;
        let mut r = reader(vec![unmasked], 100);
        assert!(matches!(
            r.read_frame(&Activity::default()).await,
            Err(FrameError::Protocol(_))
        ));
        let mut r = reader(vec![masked(0xC1, b"a")], 100);
        assert!(
            matches!(
                r.read_frame(&Activity::default()).await,
                Err(FrameError::Protocol(_))
            ),
            "rsv1"
        );
        let mut r = reader(vec![masked(0x09, b"a")], 100);
        assert!(
            matches!(
                r.read_frame(&Activity::default()).await,
                Err(FrameError::Protocol(_))
            ),
            "fragmented ping"
        );
        let mut r = reader(vec![masked(0x83, b"a")], 100);
        assert!(
            matches!(
                r.read_frame(&Activity::default()).await,
                Err(FrameError::Protocol(_))
            ),
            "opcode 3"
        );
    }
}
