//! The write half: what the outbox could not write directly goes out here,
//! everything queued at once, in vectored writes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::outbox::{Outbox, QueuedFrame, TryWrite};
use super::watch::Activity;
use super::Shared;
use crate::clock;
use crate::engine::{Command, SessionId};
use crate::metrics::{Metrics, Stage};
use crate::wire::{self, CloseCode};

/// Most frames handed to one `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// A socket's write side as the writer uses it: non-blocking writes, and a
/// way to wait until one can succeed.
pub trait SocketWrite: TryWrite {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whom to name in a log line.
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }
}

impl SocketWrite for tokio::net::TcpStream {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only the writer waits on the write side.
        tokio::net::TcpStream::poll_write_ready(self, cx)
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        tokio::net::TcpStream::peer_addr(self).ok()
    }
}

/// The peer accepted no byte for the write timeout.
#[derive(Debug)]
struct Stalled {
    /// How far the batch got.
    at: Progress,
}

/// Writes batches until a close frame has been sent or the socket fails.
///
/// Owns what it uses and keeps little across its waits: an idle
/// connection holds this future for its whole life (docs/benchmarks.md).
/// (A function returning an `async move` block: an `async fn` would keep
/// its arguments twice.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn write_loop<S: SocketWrite + Send + Sync + 'static>(
    socket: Arc<S>,
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    session: SessionId,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut frames: Vec<QueuedFrame> = Vec::new();
        loop {
            let close = outbox.take(&mut frames).await.close;
            let closing = close.is_some();
            if let Some(close) = close {
                outbox.detach_socket();
                frames.push(close.into());
            }
            let outcome = match write_now(&*socket, &frames) {
                Ok(done) => Ok(done),
                // The socket is full: wait for room, with a timer (boxed: rare,
                // and inline it would triple the size of this future).
                Err(at) => {
                    let timeout = shared.limits.write_timeout;
                    Box::pin(write_all(&*socket, &frames, at, timeout, outbox.activity())).await
                }
            };
            match outcome {
                Ok(Ok(())) if closing => return,
                Ok(Ok(())) => {
                    record_written(&frames, &shared.metrics);
                    // Written: let the buffer go (it came from the outbox's
                    // queue), so an idle connection holds none.
                    frames = Vec::new();
                    if outbox.done() {
                        // The engine held diffs back while this socket lagged.
                        let command = Command::Drained { session };
                        // Boxed for the same reason as the reader's sends: rare,
                        // and large next to an idle connection's footprint.
                        let _ = Box::pin(shared.engine.send(command)).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!("write failed: {e}");
                    return;
                }
                Err(Stalled { at }) => {
                    if !closing {
                        let close = wire::close(CloseCode::PolicyViolation, "write timeout");
                        // Nothing more is queued for this peer, nor closed twice.
                        outbox.close(close.clone(), true);
                        outbox.detach_socket();
                        if at.index > 0 && at.offset == 0 {
                            // Best effort, right after a frame this batch
                            // finished (the batch's first frame may be the tail
                            // of a direct write): the socket is full, so it may
                            // well not fit.
                            let _ = socket.try_write_vectored(&[IoSlice::new(&close)]);
                        }
                    }
                    // (When closing, the close frame was in the batch: nothing
                    // more to try.)
                    let timeout = shared.limits.write_timeout;
                    stalled(&*socket, session, timeout, &shared.metrics);
                    return;
                }
            }
        }
    }
}

/// Times every update frame of a batch the socket has accepted: one clock
/// read per batch, one histogram record per frame and stage.
fn record_written(frames: &[QueuedFrame], metrics: &Metrics) {
    let (mono, wall) = (metrics.mono_ns(), clock::unix_nanos());
    let bytes: usize = frames.iter().map(|f| f.bytes.len()).sum();
    metrics.count_written(frames.len() as u64, bytes as u64);
    metrics.with_local(|h| {
        for frame in frames.iter().filter(|f| f.ingest_ns != 0) {
            h.record(Stage::QueuedToWritten, mono.saturating_sub(frame.queued_ns));
            h.record(Stage::EndToEnd, wall.saturating_sub(frame.ingest_ns));
        }
    });
}

/// Counts and logs a peer dropped for accepting nothing.
fn stalled<S: SocketWrite>(
    socket: &S,
    session: SessionId,
    write_timeout: Duration,
    metrics: &Metrics,
) {
    metrics.write_stalls_closed.fetch_add(1, Ordering::Relaxed);
    let peer = socket.peer_addr();
    tracing::info!(
        session,
        peer = ?peer,
        "peer accepted no byte for {write_timeout:?}; dropping it (limits.write_timeout_ms)"
    );
}

/// Writes what the socket takes of a batch now, without waiting: the
/// outcome when the batch is written or the socket failed, or how far it
/// got when the socket is full (then [`write_all`] waits for room, giving
/// up only when the socket has taken no byte for the write timeout: a peer
/// that reads slowly but steadily is never dropped).
fn write_now<S: SocketWrite>(
    socket: &S,
    frames: &[QueuedFrame],
) -> Result<io::Result<()>, Progress> {
    let mut progress = Progress::default();
    match write_ready(socket, frames, &mut progress) {
        Ok(true) => Ok(Ok(())),
        Ok(false) => Err(progress),
        Err(e) => Ok(Err(e)),
    }
}

/// How far into a batch the socket has taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// The first frame not wholly written.
    index: usize,
    /// Bytes of that frame already written.
    offset: usize,
}

/// Writes what the socket takes now, gathering up to [`MAX_IOVECS`] frames
/// per system call, without waiting. `Ok(true)` when every frame is out.
fn write_ready<S: SocketWrite>(
    socket: &S,
    frames: &[QueuedFrame],
    at: &mut Progress,
) -> io::Result<bool> {
    while at.index < frames.len() {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in frames[at.index..].iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { at.offset } else { 0 };
                slices[count] = IoSlice::new(&frame.bytes[start..]);
                count += 1;
            }
            socket.try_write_vectored(&slices[..count])
        };
        let mut left = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        while left > 0 {
            let remaining = frames[at.index].bytes.len() - at.offset;
            if left >= remaining {
                left -= remaining;
                at.index += 1;
                at.offset = 0;
            } else {
                at.offset += left;
                left = 0;
            }
        }
        while at.index < frames.len() && frames[at.index].bytes.len() == at.offset {
            at.index += 1;
            at.offset = 0;
        }
    }
    Ok(true)
}

/// Writes the rest of the frames from `at`, waiting for room when the
/// socket is full, until it has taken no byte for `stall`.
///
/// The kernel signals room only once a good part of the send buffer is
/// free, which for a large buffer and a slow reader can take longer than
/// `stall`; so when the deadline passes, one more write decides: a socket
/// that takes any byte is making progress and the clock starts over.
async fn write_all<S: SocketWrite>(
    socket: &S,
    frames: &[QueuedFrame],
    mut at: Progress,
    stall: Duration,
    activity: &Activity,
) -> Result<io::Result<()>, Stalled> {
    let deadline = tokio::time::sleep(stall);
    tokio::pin!(deadline);
    let mut deadline_passed = false;
    loop {
        let before = at;
        match write_ready(socket, frames, &mut at) {
            Ok(true) => return Ok(Ok(())),
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        if at != before {
            deadline.as_mut().reset(tokio::time::Instant::now() + stall);
            deadline_passed = false;
            activity.peer_acked();
        } else if deadline_passed {
            return Err(Stalled { at });
        }
        let ready = std::future::poll_fn(|cx| match socket.poll_write_ready(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending => deadline.as_mut().poll(cx).map(|()| None),
        })
        .await;
        match ready {
            Some(Ok(())) => {}
            Some(Err(e)) => return Ok(Err(e)),
            None => deadline_passed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Accepts at most `chunk` bytes per call and would block every other
    /// call, to exercise partial writes and waiting for room.
    struct Trickle {
        out: Mutex<Vec<u8>>,
        chunk: usize,
        blocked: AtomicBool,
    }

    impl TryWrite for Trickle {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if !self.blocked.fetch_xor(true, Ordering::Relaxed) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut out = self.out.lock().unwrap();
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.chunk - n);
                out.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Ok(n)
        }
    }

    impl SocketWrite for Trickle {
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Takes one byte per `every` and never signals room, the way a full
    /// kernel buffer drained slowly by its reader may not.
    struct Dribble {
        out: Mutex<Vec<u8>>,
        next: Mutex<tokio::time::Instant>,
        every: Duration,
    }

    impl TryWrite for Dribble {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let now = tokio::time::Instant::now();
            let mut next = self.next.lock().unwrap();
            let Some(byte) = bufs.iter().find_map(|b| b.first()) else {
                return Ok(0);
            };
            if now < *next {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            *next = now + self.every;
            self.out.lock().unwrap().push(*byte);
            Ok(1)
        }
    }

    impl SocketWrite for Dribble {
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    fn dribble(every: Duration) -> Dribble {
        Dribble {
            out: Mutex::new(Vec::new()),
            next: Mutex::new(tokio::time::Instant::now() + every),
            every,
        }
    }

    /// The write timeout measures no progress, not the whole batch: a slow
    /// but steady socket gets the batch however long it takes, one that
    /// takes nothing is given up on after the timeout.
    #[tokio::test(start_paused = true)]
    async fn only_a_socket_that_takes_nothing_stalls() {
        let frames: Vec<QueuedFrame> = vec![Bytes::from_static(b"0123456789").into()];
        let slow = dribble(Duration::from_millis(60));
        let started = tokio::time::Instant::now();
        let result = write_all(
            &slow,
            &frames,
            Progress::default(),
            Duration::from_millis(100),
            &Activity::default(),
        )
        .await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
        assert_eq!(&slow.out.lock().unwrap()[..], b"0123456789");
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "ten bytes, 60 ms apart"
        );

        let dead = dribble(Duration::from_secs(3600));
        let started = tokio::time::Instant::now();
        let result = write_all(
            &dead,
            &frames,
            Progress::default(),
            Duration::from_millis(100),
            &Activity::default(),
        )
        .await;
        assert!(matches!(result, Err(Stalled { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(250));
    }

    #[tokio::test]
    async fn partial_vectored_writes_keep_every_byte_in_order() {
        let frames: Vec<QueuedFrame> = (0..200u32)
            .map(|i| Bytes::from(format!("frame-{i};").repeat((i % 7) as usize)).into())
            .collect();
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.bytes.iter().copied())
            .collect();
        for chunk in [1, 3, 7, 64, 4096] {
            let sink = Trickle {
                out: Mutex::new(Vec::new()),
                chunk,
                blocked: AtomicBool::new(false),
            };
            write_all(
                &sink,
                &frames,
                Progress::default(),
                Duration::from_secs(5),
                &Activity::default(),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(*sink.out.lock().unwrap(), expected, "chunk {chunk}");
        }
    }
}
