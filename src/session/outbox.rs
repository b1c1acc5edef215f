//! A session's bounded outbound queue of encoded frames.
//!
//! The engine (and the session's own reader, through the engine) push shared
//! [`Bytes`] frames; the session's writer takes everything queued at once and
//! writes it with one vectored write. The queue is bounded in bytes: a push
//! that would pass the bound is refused, and the caller decides what a full
//! queue means (today: the engine closes the session with 1013).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

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

pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    limit_bytes: usize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<QueuedFrame>,
    bytes: usize,
    /// The close frame to send after what is queued; set once.
    close: Option<Bytes>,
}

/// What the writer gets from [`Outbox::take`].
pub struct Batch {
    /// The close frame to send after the frames, ending the session.
    pub close: Option<Bytes>,
}

impl Outbox {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            limit_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (every update is a single push/drain), so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame`; false if it would pass the byte bound or the session is
    /// closing (the frame is dropped).
    pub fn push(&self, frame: impl Into<QueuedFrame>) -> bool {
        let frame = frame.into();
        let len = frame.bytes.len();
        let mut queue = self.lock();
        if queue.close.is_some() || queue.bytes + len > self.limit_bytes {
            return false;
        }
        let was_empty = queue.frames.is_empty();
        queue.bytes += len;
        queue.frames.push_back(frame);
        drop(queue);
        if was_empty {
            // notify_one keeps a permit if the writer is not waiting yet, so
            // a push between its check and its wait is not lost.
            self.ready.notify_one();
        }
        true
    }

    /// Ends the session with `close_frame`. With `discard_queued`, frames not
    /// yet taken are dropped; without, they go out before the close (the
    /// engine's 1013 keeps them, so the client resumes from further on).
    pub fn close(&self, close_frame: Bytes, discard_queued: bool) {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return;
        }
        if discard_queued {
            queue.frames.clear();
            queue.bytes = 0;
        }
        queue.close = Some(close_frame);
        drop(queue);
        self.ready.notify_one();
    }

    /// The byte bound given at creation: nothing bigger can ever be queued.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Waits until there is something to write, then moves every queued
    /// frame into `into`. Cancel-safe: nothing is taken unless it returns.
    pub async fn take(&self, into: &mut Vec<QueuedFrame>) -> Batch {
        loop {
            {
                let mut queue = self.lock();
                if !queue.frames.is_empty() || queue.close.is_some() {
                    into.extend(queue.frames.drain(..));
                    queue.bytes = 0;
                    if queue.frames.capacity() > 1024 {
                        // Give back what a burst grew; idle sessions stay small.
                        queue.frames.shrink_to(64);
                    }
                    return Batch {
                        close: queue.close.take(),
                    };
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn bound_is_in_bytes_and_refuses_past_it() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Bytes::from_static(b"123456")));
        assert!(outbox.push(Bytes::from_static(b"1234")));
        assert!(!outbox.push(Bytes::from_static(b"1")));
        assert_eq!(outbox.queued_bytes(), 10);
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
    async fn close_discards_the_backlog_and_refuses_more() {
        let outbox = Outbox::new(1 << 20);
        outbox.push(Bytes::from_static(b"old"));
        outbox.close(Bytes::from_static(b"bye"), true);
        assert!(!outbox.push(Bytes::from_static(b"new")));
        let mut got = Vec::new();
        let batch = outbox.take(&mut got).await;
        assert!(got.is_empty());
        assert_eq!(batch.close.unwrap(), Bytes::from_static(b"bye"));
    }
}
