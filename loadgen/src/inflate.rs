//! permessage-deflate (RFC 7692) on the receiving side, for `--deflate`.
//!
//! fastwebsockets refuses frames with RSV1 set, so the socket's read half is
//! wrapped: whole server frames are taken off the stream, a compressed one
//! (RSV1) is inflated and handed on as the plain frame it stands for, and
//! anything else is handed on untouched. The loadgen offers
//! `client_no_context_takeover` and never sends compressed messages, and
//! every message is inflated on its own (tickcast agrees to no context
//! takeover both ways; a server that keeps its context gets a fresh inflater
//! per message too, which is wrong for it, so `--deflate` is for servers
//! that agree to `server_no_context_takeover`: the handshake checks that).
//!
//! Without the extension agreed the wrapper passes reads straight through.
//!
//! The server compresses each update once and sends every subscriber the
//! same bytes, so thousands of connections receive one compressed payload.
//! Inflating it once per client made the loadgen, not the server, the
//! limit (two whole cores at 8,000 clients: docs/benchmarks.md). Each
//! thread keeps its inflater and a table of the payloads it inflated, keyed
//! by the whole compressed payload: a payload equal byte for byte to one
//! already inflated gets that result (inflating is deterministic), anything
//! else is inflated. Every frame is still taken apart, checked and handed on.
//!
//! The table holds thousands of payloads, not a few: a client that is behind
//! reads many updates at once, and a short last-N list is then scanned in
//! order and evicted in the same order, so every lookup missed and the
//! loadgen fell further behind the more it fell behind (seen at 2,000
//! clients: 40 % of its time in miniz's `init_tree`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, ReadBuf};

/// What the loadgen offers with `--deflate`.
pub const OFFER: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";

/// The tail a sync flush ends with, dropped by the sender (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest message inflated; more fails the connection (as fastwebsockets'
/// own limit, set to 16 MiB in `ws::connect_with`).
const MAX_MESSAGE: usize = 16 << 20;

/// Compressed frames handed on plain by this process so far.
static INFLATED: AtomicU64 = AtomicU64::new(0);

/// How many compressed frames this process has handed on plain.
pub fn inflated_frames() -> u64 {
    INFLATED.load(Ordering::Relaxed)
}

/// Room made in the read buffer before each read.
const READ_AHEAD: usize = 16 * 1024;

/// Payloads remembered per thread: at 100 updates/s on one channel, about
/// 40 s of them, so a client many updates behind still finds its frames.
const REMEMBERED: usize = 4096;

/// Bytes (compressed and inflated) the table may hold per thread: a server
/// sending large distinct messages (up to [`MAX_MESSAGE`] each) must not
/// make it hold thousands of them. Frames larger than a sixteenth of this
/// are inflated every time rather than kept.
const REMEMBERED_BYTES: usize = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// A thread's inflater and what it inflated.
struct ThreadInflater {
    inflater: Decompress,
    /// Compressed payload -> the message it stands for.
    inflated: HashMap<Bytes, Bytes, foldhash::fast::RandomState>,
    /// The keys of `inflated`, oldest first, to forget the oldest.
    order: VecDeque<Bytes>,
    /// Bytes of keys and messages in `inflated`.
    bytes: usize,
}

thread_local! {
    /// Payloads this thread inflated (not found in its table): for tests.
    static INFLATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static THREAD: RefCell<ThreadInflater> = RefCell::new(ThreadInflater {
        inflater: Decompress::new(false),
        inflated: HashMap::with_capacity_and_hasher(REMEMBERED, Default::default()),
        order: VecDeque::with_capacity(REMEMBERED),
        bytes: 0,
    });
}

/// The message a compressed `payload` stands for.
fn message_of(payload: &[u8]) -> io::Result<Bytes> {
    THREAD.with(|thread| {
        let thread = &mut *thread.borrow_mut();
        if let Some(message) = thread.inflated.get(payload) {
            return Ok(message.clone());
        }
        let message = Bytes::from(inflate(&mut thread.inflater, payload)?);
        INFLATIONS.set(INFLATIONS.get() + 1);
        let size = payload.len() + message.len();
        if size > REMEMBERED_BYTES / 16 {
            return Ok(message);
        }
        while thread.order.len() >= REMEMBERED || thread.bytes + size > REMEMBERED_BYTES {
            let Some(oldest) = thread.order.pop_front() else {
                break;
            };
            if let Some(forgotten) = thread.inflated.remove(&oldest) {
                thread.bytes -= oldest.len() + forgotten.len();
            }
        }
        let key = Bytes::copy_from_slice(payload);
        thread.order.push_back(key.clone());
        thread.inflated.insert(key, message.clone());
        thread.bytes += size;
        Ok(message)
    })
}

/// The read half, inflating compressed frames when `active`.
pub struct Inflating<R> {
    inner: R,
    /// Compressed frames arrive: take frames apart. Off: pass reads through.
    active: bool,
    /// Bytes read, not yet a whole frame.
    raw: BytesMut,
    /// Frames ready to hand on.
    ready: BytesMut,
}

impl<R> Inflating<R> {
    pub fn new(inner: R, active: bool) -> Self {
        Self {
            inner,
            active,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }
}

/// Whether the server's `Sec-WebSocket-Extensions` answer agrees to
/// permessage-deflate with no server context takeover; an error for an
/// answer the loadgen cannot follow.
pub fn agreed(answer: Option<&str>) -> Result<bool, &'static str> {
    let Some(answer) = answer else {
        return Ok(false);
    };
    let mut params = answer.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("permessage-deflate"))
    {
        return Err("the server answered with an extension that was not offered");
    }
    if !params.any(|p| p.eq_ignore_ascii_case("server_no_context_takeover")) {
        return Err("permessage-deflate without server_no_context_takeover (not supported)");
    }
    Ok(true)
}

/// One whole frame at the start of `raw`: (header length, payload length).
fn frame_at(raw: &[u8]) -> Option<(usize, usize)> {
    let (&b1, rest) = raw.get(1).zip(raw.get(2..))?;
    let (head, len) = match b1 & 0x7F {
        126 => (
            4,
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    let len = usize::try_from(len).ok()?;
    (raw.len() >= head + len).then_some((head, len))
}

fn inflate(inflater: &mut Decompress, payload: &[u8]) -> io::Result<Vec<u8>> {
    inflater.reset(false);
    let mut out = Vec::with_capacity(payload.len() * 4 + 64);
    for (input, flush) in [
        (payload, FlushDecompress::None),
        (&TAIL[..], FlushDecompress::Sync),
    ] {
        let start = inflater.total_in();
        loop {
            let offset = (inflater.total_in() - start) as usize;
            let status = inflater
                .decompress_vec(&input[offset..], &mut out, flush)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if out.len() > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "inflated message too large",
                ));
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
                continue;
            }
            if (inflater.total_in() - start) as usize == input.len() {
                break;
            }
        }
    }
    Ok(out)
}

impl<R: AsyncRead + Unpin> Inflating<R> {
    /// Moves every whole frame from `raw` to `ready`, inflating as needed.
    fn take_frames(&mut self) -> io::Result<()> {
        while let Some((head, len)) = frame_at(&self.raw) {
            let b0 = self.raw[0];
            if b0 & 0x40 == 0 {
                self.ready.extend_from_slice(&self.raw[..head + len]);
            } else {
                let message = message_of(&self.raw[head..head + len])?;
                INFLATED.fetch_add(1, Ordering::Relaxed);
                self.ready.extend_from_slice(&[b0 & !0x40]);
                match message.len() {
                    n if n < 126 => self.ready.extend_from_slice(&[n as u8]),
                    n if n <= 0xFFFF => {
                        self.ready.extend_from_slice(&[126]);
                        self.ready.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        self.ready.extend_from_slice(&[127]);
                        self.ready.extend_from_slice(&(n as u64).to_be_bytes());
                    }
                }
                self.ready.extend_from_slice(&message);
            }
            self.raw.advance(head + len);
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Inflating<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.active {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Straight into `raw`'s spare room: a zeroed stack buffer per
            // read cost more than the inflating (a 16 KB memset for each
            // ~150-byte frame).
            this.raw.reserve(READ_AHEAD);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.raw
            ))?;
            if read == 0 {
                // The end: hand on what is left (a cut frame), then the end.
                let rest = this.raw.split();
                this.ready.extend_from_slice(&rest);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.take_frames()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::AsyncReadExt;

    fn compressed_frame(message: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(message.len() + 64);
        c.compress_vec(message, &mut out, FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        let mut frame = vec![0xC1];
        match out.len() {
            n if n < 126 => frame.push(n as u8),
            n => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&out);
        frame
    }

    #[tokio::test]
    async fn compressed_frames_come_out_plain_and_others_untouched() {
        let big = br#"{"type":"update","data":{"bids":"#.repeat(40);
        let mut stream = compressed_frame(&big);
        stream.extend_from_slice(&[0x81, 2, b'h', b'i']);
        stream.extend_from_slice(&compressed_frame(b"{\"a\":1}"));
        let mut reader = Inflating::new(&stream[..], true);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        let mut want = vec![0x81, 126];
        want.extend_from_slice(&(big.len() as u16).to_be_bytes());
        want.extend_from_slice(&big);
        want.extend_from_slice(&[0x81, 2, b'h', b'i', 0x81, 7]);
        want.extend_from_slice(b"{\"a\":1}");
        assert_eq!(out, want);
    }

    /// The per-thread memory of recent payloads: one seen again gives its
    /// own message, a different one of the same length is inflated anew.
    #[tokio::test]
    async fn a_payload_seen_again_gives_its_own_message_and_never_another() {
        let (one, two) = (br#"{"n":1,"pad":"xyzxyz"}"#, br#"{"n":2,"pad":"xyzxyz"}"#);
        let (a, b) = (compressed_frame(one), compressed_frame(two));
        assert_eq!(a.len(), b.len());
        let stream = [a.clone(), b.clone(), a, b].concat();
        let before = inflated_frames();
        let mut reader = Inflating::new(&stream[..], true);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        let plain = |m: &[u8]| [&[0x81, m.len() as u8][..], m].concat();
        let want = [plain(one), plain(two), plain(one), plain(two)].concat();
        assert_eq!(out, want);
        assert!(inflated_frames() - before >= 4, "every frame is counted");
    }

    /// A client far behind reads a long run of updates at once, and the next
    /// client the same run: each payload is inflated once per thread, not
    /// once per client (a short last-N memory missed every one of these).
    #[tokio::test]
    async fn clients_reading_a_long_backlog_share_one_inflation_per_payload() {
        let updates = 200;
        let stream: Vec<u8> = (0..updates)
            .flat_map(|n| compressed_frame(format!(r#"{{"n":{n},"pad":"xyzxyzxyz"}}"#).as_bytes()))
            .collect();
        let before = INFLATIONS.get();
        for _client in 0..3 {
            let mut out = Vec::new();
            let mut reader = Inflating::new(&stream[..], true);
            reader.read_to_end(&mut out).await.unwrap();
            assert!(out[2..].starts_with(br#"{"n":0,"#), "{:?}", &out[..8]);
        }
        assert_eq!(INFLATIONS.get() - before, updates);
    }

    /// Large distinct messages: the table stays within its byte bound
    /// (and one past a sixteenth of it is not kept at all).
    #[tokio::test]
    async fn the_table_of_inflated_payloads_stays_within_its_bytes() {
        let big = |n: usize, len: usize| -> Vec<u8> {
            // Distinct, and poorly compressible, so the payloads are big too.
            let mut x = n as u64 + 1;
            let text: String = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            compressed_frame(text.as_bytes())
        };
        let stream: Vec<u8> = (0..40).flat_map(|n| big(n, 60_000)).collect();
        let mut reader = Inflating::new(&stream[..], true);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        THREAD.with(|t| {
            let t = t.borrow();
            assert!(t.bytes <= REMEMBERED_BYTES, "{} bytes kept", t.bytes);
            let counted: usize = t.inflated.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert_eq!(counted, t.bytes);
        });
        let huge = big(99, REMEMBERED_BYTES / 16 + 1);
        let before = THREAD.with(|t| t.borrow().inflated.len());
        let mut reader = Inflating::new(&huge[..], true);
        reader.read_to_end(&mut Vec::new()).await.unwrap();
        assert_eq!(
            THREAD.with(|t| t.borrow().inflated.len()),
            before,
            "not kept"
        );
    }

    #[test]
    fn only_no_server_context_takeover_is_followed() {
        assert_eq!(agreed(None), Ok(false));
        assert_eq!(
            agreed(Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            )),
            Ok(true)
        );
        assert!(agreed(Some("permessage-deflate")).is_err());
        assert!(agreed(Some("x-other")).is_err());
    }
}
