//! The write half: everything queued goes out in one vectored write.

use std::io::IoSlice;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::outbox::{Outbox, QueuedFrame};
use crate::clock;
use crate::metrics::{Metrics, Stage};

/// Most frames handed to one `writev` (Linux allows 1024).
const MAX_IOVECS: usize = 64;

/// Writes batches until a close frame has been sent or the socket fails.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    outbox: &Outbox,
    write_timeout: Duration,
    metrics: &Metrics,
) {
    let mut frames: Vec<QueuedFrame> = Vec::new();
    loop {
        let batch = outbox.take(&mut frames).await;
        if let Some(close) = batch.close {
            frames.push(close.into());
            let _ = tokio::time::timeout(write_timeout, write_all(&mut write, &frames)).await;
            let _ = tokio::time::timeout(write_timeout, write.shutdown()).await;
            return;
        }
        match tokio::time::timeout(write_timeout, write_all(&mut write, &frames)).await {
            Ok(Ok(())) => {
                record_written(&frames, metrics);
                frames.clear();
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

/// Writes every frame, gathering up to [`MAX_IOVECS`] per system call.
async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    frames: &[QueuedFrame],
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < frames.len() {
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, frame) in frames[index..].iter().take(MAX_IOVECS).enumerate() {
                let start = if i == 0 { offset } else { 0 };
                slices[count] = IoSlice::new(&frame.bytes[start..]);
                count += 1;
            }
            write.write_vectored(&slices[..count]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Accepts at most `chunk` bytes per call, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.chunk - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
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
            let mut sink = Trickle {
                out: Vec::new(),
                chunk,
            };
            write_all(&mut sink, &frames).await.unwrap();
            assert_eq!(sink.out, expected, "chunk {chunk}");
        }
    }
}
