//! The write half: what the outbox could not write directly goes out here,
//! everything queued at once, in vectored writes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use super::outbox::{Outbox, QueuedFrame, TryWrite};
use crate::clock;
use crate::engine::{Command, EngineHandle, SessionId};
use crate::metrics::{Metrics, Stage};

/// Whom to tell when a lagging session's socket has drained.
pub struct Drained<'a> {
    pub engine: &'a EngineHandle,
    pub session: SessionId,
}

/// Most frames handed to one `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// A socket's write side as the writer uses it: non-blocking writes, and a
/// way to wait until one can succeed.
pub trait SocketWrite: TryWrite {
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl SocketWrite for tokio::net::tcp::OwnedWriteHalf {
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::tcp::OwnedWriteHalf::writable(self)
    }
}

/// Writes batches until a close frame has been sent or the socket fails.
/// Returns the socket so the caller can shut it down.
pub async fn write_loop<S: SocketWrite>(
    socket: &Arc<S>,
    outbox: &Outbox,
    write_timeout: Duration,
    metrics: &Metrics,
    drained: &Drained<'_>,
) {
    let mut frames: Vec<QueuedFrame> = Vec::new();
    loop {
        let batch = outbox.take(&mut frames).await;
        if let Some(close) = batch.close {
            outbox.detach_socket();
            frames.push(close.into());
            let _ = tokio::time::timeout(write_timeout, write_all(&**socket, &frames)).await;
            return;
        }
        match tokio::time::timeout(write_timeout, write_all(&**socket, &frames)).await {
            Ok(Ok(())) => {
                record_written(&frames, metrics);
                frames.clear();
                if outbox.done() {
                    // The engine held diffs back while this socket lagged.
                    let command = Command::Drained {
                        session: drained.session,
                    };
                    // Boxed for the same reason as the reader's sends: rare,
                    // and large next to an idle connection's footprint.
                    let _ = Box::pin(drained.engine.send(command)).await;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("write failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(
                    "peer took longer than {write_timeout:?} to accept a write; dropping it"
                );
                return;
            }
        }
        if frames.capacity() > 4 * MAX_IOVECS {
            frames.shrink_to(MAX_IOVECS);
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

/// Writes every frame, gathering up to [`MAX_IOVECS`] per system call and
/// waiting for room when the socket is full.
async fn write_all<S: SocketWrite>(socket: &S, frames: &[QueuedFrame]) -> io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < frames.len() {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in frames[index..].iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { offset } else { 0 };
                slices[count] = IoSlice::new(&frame.bytes[start..]);
                count += 1;
            }
            socket.try_write_vectored(&slices[..count])
        };
        let n = match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                socket.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            let remaining = frames[index].bytes.len() - offset;
            if left >= remaining {
                left -= remaining;
                index += 1;
                offset = 0;
            } else {
                offset += left;
                left = 0;
            }
        }
        while index < frames.len() && frames[index].bytes.len() == offset {
            index += 1;
            offset = 0;
        }
    }
    Ok(())
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
        fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
            std::future::ready(Ok(()))
        }
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
            write_all(&sink, &frames).await.unwrap();
            assert_eq!(*sink.out.lock().unwrap(), expected, "chunk {chunk}");
        }
    }
}
