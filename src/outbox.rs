//! A session's outbound path: a byte-bounded queue of encoded frames, and a
//! direct write to the socket when nothing is queued.
//!
//! Shared by the engine (which pushes) and the session (whose writer drains
//! it), so it lives at the crate level: the engine does not depend on the
//! session module. (`session::outbox` re-exports it.)
//!
//! The engine pushes shared [`Bytes`] frames. When the session is idle (no
//! queued frames, writer not busy) a push writes the frame to the socket
//! right away with a non-blocking `try_write`: no task wake-up, no second
//! hand-off, the way a corked uWebSockets publish goes out. Only what the
//! socket does not take at once is queued, and then the session's writer task
//! is woken; it takes everything queued and writes it with vectored writes.
//! Order holds because a direct write happens only when nothing is queued or
//! in the writer's hands.
//!
//! The queue is bounded in bytes, counting what is queued and what the writer
//! has taken but not finished writing: a push past the bound is refused, and
//! the caller decides what that means (the engine holds merge-channel diffs
//! back until the session drains, and closes stream subscribers with 1013).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::activity::Activity;
use crate::auth::Grant;
use crate::clock;
use crate::deflate::Negotiated;
use crate::metrics::{Metrics, Stage};

/// A frame waiting in an outbox, with what the latency histograms need.
#[derive(Debug, Clone)]
pub struct QueuedFrame {
    pub bytes: Bytes,
    /// The update's feed stamp (Unix ns); 0 for replies and control frames.
    pub ingest_ns: u64,
    /// When it was queued (`Metrics::mono_ns`); 0 when not timed.
    pub queued_ns: u64,
}

impl From<Bytes> for QueuedFrame {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            ingest_ns: 0,
            queued_ns: 0,
        }
    }
}

/// The non-blocking half of a socket's write side.
pub trait TryWrite: Send + Sync {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match bufs {
            // Most writes are one frame. send(2) takes it without writev(2)'s
            // trip through the file layer: about 0.4 us less per call on
            // loopback here (`cargo bench --bench syscall`: 2.39 against 2.80).
            [one] => self.try_write(one),
            _ => tokio::net::TcpStream::try_write_vectored(self, bufs),
        }
    }
}

struct Direct {
    socket: Arc<dyn TryWrite>,
    metrics: Arc<Metrics>,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    /// 32 bits, so that `deflate` fits beside it in one word (a bound past
    /// 4 GiB per connection is taken as 4 GiB).
    limit_bytes: u32,
    /// permessage-deflate, if the handshake agreed to it: the fanout then
    /// sends the compressed form of frames it allows (`crate::deflate`),
    /// and the reader inflates messages with RSV1 set.
    deflate: Option<Negotiated>,
    /// The session's stamps for the read timeouts; kept here, in an
    /// allocation every session has anyway, rather than in one more.
    activity: Activity,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<QueuedFrame>,
    bytes: usize,
    /// Bytes the writer took and has not finished writing; they count
    /// against the bound until it has.
    in_flight: usize,
    /// The close frame to send after what is queued, until the writer
    /// takes it. Boxed, like `direct`: each is rare or set once, and
    /// inline the two would put every outbox in mimalloc's 224-byte size
    /// class instead of 160 (docs/benchmarks.md, memory).
    close: Option<Box<Bytes>>,
    /// A close frame was given: set once, never cleared (the writer taking
    /// the frame does not reopen the outbox).
    closing: bool,
    /// The writer task holds frames it has not finished writing.
    writer_busy: bool,
    /// Where direct writes go; `None` for a queue-only outbox.
    direct: Option<Box<Direct>>,
    /// The engine is holding diffs back for this session until it drains.
    lagging: bool,
    /// The writer, waiting for something to write. A waker under the
    /// queue's lock rather than a `Notify`: the writer waits with a poll
    /// function and keeps no waiter of its own in the connection's task.
    writer: Option<Waker>,
    /// What the connection's token allows; `None` without a token (public
    /// namespaces only). Under the queue's lock rather than a lock of its
    /// own (16 bytes more per outbox): it is read only on a subscribe and
    /// written only on `{"op":"auth"}`.
    grant: Option<Arc<Grant>>,
}

/// What the writer gets from [`Outbox::take`].
pub struct Batch {
    /// The close frame to send after the frames, ending the session.
    pub close: Option<Bytes>,
}

impl Outbox {
    /// A queue-only outbox (frames reach the socket through the writer task).
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            limit_bytes: u32::try_from(limit_bytes).unwrap_or(u32::MAX),
            deflate: None,
            activity: Activity::default(),
        }
    }

    /// This outbox for a connection that agreed to permessage-deflate.
    pub fn with_deflate(mut self, deflate: Option<Negotiated>) -> Self {
        self.deflate = deflate;
        self
    }

    /// What the connection agreed to, if it compresses.
    pub fn deflate(&self) -> Option<Negotiated> {
        self.deflate
    }

    /// The connection's token is now `grant`: it allows what its claim
    /// says, and the sweeper closes the connection at its `exp` unless
    /// another replaces it first.
    pub fn set_grant(&self, grant: Arc<Grant>) {
        self.activity.expire_token_at(grant.expires_at());
        self.lock().grant = Some(grant);
    }

    /// What the connection's token allows, if it has one.
    pub fn grant(&self) -> Option<Arc<Grant>> {
        self.lock().grant.clone()
    }

    /// What the session's reader and writer stamp for the sweeper.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Lets pushes write straight to `socket` while the session is idle.
    pub fn attach_socket(&self, socket: Arc<dyn TryWrite>, metrics: Arc<Metrics>) {
        self.lock().direct = Some(Box::new(Direct { socket, metrics }));
    }

    /// Stops direct writes (the writer is about to close the socket).
    pub fn detach_socket(&self) {
        self.lock().direct = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (every update is a single push/drain), so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends or queues `frame`; false if it would pass the byte bound or the
    /// session is closing (the frame is dropped). A frame is always taken
    /// into an empty queue, however large: the bound is on backlog, and a
    /// refusal must always mean there is a backlog that will drain.
    pub fn push(&self, frame: impl Into<QueuedFrame>) -> bool {
        self.push_within(frame.into(), true)
    }

    /// [`Outbox::push`] for the server's own small control frames (the idle
    /// ping), which go out past the byte bound: they are rare and tiny,
    /// and a client that reads slowly must still get them.
    pub fn push_control(&self, frame: Bytes) -> bool {
        self.push_within(frame.into(), false)
    }

    fn push_within(&self, mut frame: QueuedFrame, bounded: bool) -> bool {
        let mut queue = self.lock();
        if queue.closing {
            return false;
        }
        let backlog = queue.bytes + queue.in_flight;
        if bounded && backlog > 0 && backlog + frame.bytes.len() > self.limit_bytes() {
            // Refused with a backlog the writer has yet to take: when it has
            // written it, `done` reports the drain, so a caller holding data
            // back is always called again. (Set under the same lock as the
            // refusal: set later, the writer could finish in between.)
            queue.lagging = true;
            return false;
        }
        let idle = queue.frames.is_empty() && !queue.writer_busy;
        if idle {
            if let Some(direct) = &queue.direct {
                match direct
                    .socket
                    .try_write_vectored(&[IoSlice::new(&frame.bytes)])
                {
                    Ok(n) if n == frame.bytes.len() => {
                        record_direct(&frame, &direct.metrics);
                        return true;
                    }
                    // The rest waits for the writer, which waits for room.
                    Ok(n) => frame.bytes = frame.bytes.slice(n..),
                    // Would block, or a broken socket the writer will find.
                    Err(_) => {}
                }
            }
        }
        queue.bytes += frame.bytes.len();
        queue.frames.push_back(frame);
        // A writer not waiting yet finds the frame when it next looks (under
        // this lock), so no wake-up is lost.
        let writer = if idle { queue.writer.take() } else { None };
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
        true
    }

    /// Ends the session with `close_frame`. With `discard_queued`, frames not
    /// yet taken are dropped; without, they go out before the close (the
    /// engine's 1013 keeps them, so the client resumes from further on).
    pub fn close(&self, close_frame: Bytes, discard_queued: bool) {
        let mut queue = self.lock();
        if queue.closing {
            return;
        }
        queue.closing = true;
        if discard_queued {
            queue.frames.clear();
            queue.bytes = 0;
        }
        queue.close = Some(Box::new(close_frame));
        let writer = queue.writer.take();
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// The byte bound given at creation: nothing bigger can ever be queued.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes as usize
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Bytes queued or being written: what this session holds against its
    /// bound.
    pub fn backlog_bytes(&self) -> usize {
        let queue = self.lock();
        queue.bytes + queue.in_flight
    }

    /// Waits until there is something to write, then moves every queued
    /// frame into `into` and marks the writer busy until [`Outbox::done`].
    /// Cancel-safe: nothing is taken unless it returns.
    pub async fn take(&self, into: &mut Vec<QueuedFrame>) -> Batch {
        std::future::poll_fn(|cx| self.poll_take(cx, into)).await
    }

    /// [`Outbox::take`] as a poll function: `Pending` (the writer is woken
    /// by the next push or close) while there is nothing to write. Only
    /// the one writer may call it.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<QueuedFrame>) -> Poll<Batch> {
        let mut queue = self.lock();
        if queue.frames.is_empty() && queue.close.is_none() {
            match &mut queue.writer {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        queue.writer = None;
        if into.is_empty() {
            // The queue's buffer goes with the frames, and the taker's
            // (empty) buffer becomes the queue's. The session writer drops
            // its buffer once a batch is written, so an idle session keeps
            // none on either side (192 bytes each for the first frame), at
            // the price of one allocation per write batch; a taker that
            // keeps its buffer (the benches) gives the queue room back.
            let spare = VecDeque::from(std::mem::take(into));
            *into = Vec::from(std::mem::replace(&mut queue.frames, spare));
        } else {
            into.extend(queue.frames.drain(..));
        }
        queue.in_flight += queue.bytes;
        queue.bytes = 0;
        queue.writer_busy = true;
        Poll::Ready(Batch {
            close: queue.close.take().map(|close| *close),
        })
    }

    /// The writer has written everything it took; direct writes may resume
    /// unless more was queued meanwhile (then the writer takes that next).
    /// True when this drained a session the engine marked as lagging: the
    /// writer then tells the engine, which sends what it held back.
    pub fn done(&self) -> bool {
        let mut queue = self.lock();
        queue.in_flight = 0;
        if queue.frames.is_empty() {
            queue.writer_busy = false;
            if queue.lagging {
                queue.lagging = false;
                return true;
            }
        }
        false
    }
}

/// Times a frame the socket took at once: it waited only for the fanout.
fn record_direct(frame: &QueuedFrame, metrics: &Metrics) {
    metrics.count_written(1, frame.bytes.len() as u64);
    if frame.ingest_ns != 0 {
        let (mono, wall) = (metrics.mono_ns(), clock::unix_nanos());
        metrics.with_local(|h| {
            h.record(Stage::QueuedToWritten, mono.saturating_sub(frame.queued_ns));
            h.record(Stage::EndToEnd, wall.saturating_sub(frame.ingest_ns));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A socket that takes at most `room` more bytes, then would block.
    pub struct Narrow {
        pub written: Mutex<Vec<u8>>,
        pub room: Mutex<usize>,
    }

    impl TryWrite for Narrow {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut out = self.written.lock().unwrap();
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(*room - n);
                out.extend_from_slice(&buf[..take]);
                n += take;
            }
            *room -= n;
            Ok(n)
        }
    }

    /// What the writer has taken but not yet written still counts: a
    /// session never holds more than its bound, queued and in flight.
    /// Every connection has one outbox (with the engine's `Arc` header):
    /// past 144 bytes it takes a larger allocator size class (192 instead
    /// of 160). The token grant sits under the queue's lock for that reason.
    #[test]
    fn an_outbox_stays_small() {
        let size = std::mem::size_of::<Outbox>();
        assert!(size <= 144, "an outbox is {size} bytes: box what is rare");
    }

    #[tokio::test]
    async fn frames_being_written_count_against_the_bound() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Bytes::from_static(b"12345678")));
        let mut taken = Vec::new();
        outbox.take(&mut taken).await;
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.backlog_bytes(), 8, "in the writer's hands");
        assert!(outbox.push(Bytes::from_static(b"12")));
        assert!(
            !outbox.push(Bytes::from_static(b"3")),
            "8 in flight + 2 queued"
        );
        assert!(!outbox.done(), "more was queued: the writer goes on");
        assert_eq!(outbox.backlog_bytes(), 2, "the batch was written");
        taken.clear();
        outbox.take(&mut taken).await;
        assert!(outbox.done(), "drained after a refusal: the engine is told");
        assert_eq!(outbox.backlog_bytes(), 0);
    }

    #[test]
    fn bound_is_in_bytes_and_refuses_past_it() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Bytes::from_static(b"123456")));
        assert!(outbox.push(Bytes::from_static(b"1234")));
        assert!(!outbox.push(Bytes::from_static(b"1")));
        assert_eq!(outbox.queued_bytes(), 10);
        // An empty queue takes any one frame, so a refusal always means a
        // backlog the writer will drain.
        let outbox = Outbox::new(10);
        assert!(outbox.push(Bytes::from(vec![0u8; 50])));
        assert!(!outbox.push(Bytes::from_static(b"1")));
    }

    #[tokio::test]
    async fn take_waits_for_a_push_and_returns_everything_in_order() {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                outbox.take(&mut got).await;
                got
            })
        };
        outbox.push(Bytes::from_static(b"a"));
        let got = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got[0].bytes, Bytes::from_static(b"a"));
    }

    #[tokio::test]
    async fn a_refused_push_is_reported_once_the_backlog_is_written() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Bytes::from_static(b"123456789")));
        assert!(!outbox.push(Bytes::from_static(b"12")), "over the bound");
        let mut got = Vec::new();
        outbox.take(&mut got).await;
        assert!(outbox.done(), "the writer reports the drain");
        assert!(!outbox.done(), "once");
        // A writer that finished just before the refusal still reports it.
        assert!(outbox.push(Bytes::from_static(b"123456789")));
        assert!(!outbox.push(Bytes::from_static(b"12")));
        got.clear();
        outbox.take(&mut got).await;
        assert!(outbox.done());
    }

    #[tokio::test]
    async fn close_discards_the_backlog_and_refuses_more() {
        let outbox = Outbox::new(1 << 20);
        outbox.push(Bytes::from_static(b"old"));
        outbox.close(Bytes::from_static(b"bye"), true);
        assert!(!outbox.push(Bytes::from_static(b"new")));
        let mut got = Vec::new();
        let batch = outbox.take(&mut got).await;
        assert!(got.is_empty());
        assert_eq!(batch.close.unwrap(), Bytes::from_static(b"bye"));
        // Taken by the writer, the close still holds: nothing more queues.
        assert!(outbox.is_closing());
        assert!(!outbox.push(Bytes::from_static(b"late")));
        outbox.close(Bytes::from_static(b"again"), false);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn idle_pushes_go_straight_to_the_socket_and_the_rest_keeps_order() {
        let socket = Arc::new(Narrow {
            written: Mutex::new(Vec::new()),
            room: Mutex::new(6),
        });
        let outbox = Outbox::new(1 << 20);
        outbox.attach_socket(socket.clone(), Arc::new(Metrics::new()));
        assert!(outbox.push(Bytes::from_static(b"abc")));
        assert_eq!(outbox.queued_bytes(), 0, "written directly");
        // 3 bytes of room left: "de" fits, "fgh" is cut after "f", "jk" queues.
        assert!(outbox.push(Bytes::from_static(b"de")));
        assert!(outbox.push(Bytes::from_static(b"fgh")));
        assert!(outbox.push(Bytes::from_static(b"jk")));
        assert_eq!(&socket.written.lock().unwrap()[..], b"abcdef");
        let mut got = Vec::new();
        outbox.take(&mut got).await;
        let rest: Vec<u8> = got.iter().flat_map(|f| f.bytes.iter().copied()).collect();
        assert_eq!(
            rest, b"ghjk",
            "the unwritten tail first, then what came after"
        );
        // While the writer is busy, pushes queue even if the socket has room.
        *socket.room.lock().unwrap() = 100;
        assert!(outbox.push(Bytes::from_static(b"l")));
        assert_eq!(outbox.queued_bytes(), 1);
        got.clear();
        outbox.take(&mut got).await;
        outbox.done();
        assert!(outbox.push(Bytes::from_static(b"m")));
        assert_eq!(outbox.queued_bytes(), 0, "idle again: direct");
    }
}
