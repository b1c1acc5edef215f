//! What a session's reader and writer stamp as they go, for the one
//! sweeper (`session::watch`) that enforces the read-side timeouts, and
//! what the connection's token allows. Kept in each connection's outbox,
//! which the engine shares; so it lives here, beside the outbox, not in the
//! session module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on a process-wide monotonic clock, from 1 (0 means "not
/// set" in the stamps below).
pub(crate) fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_millis() as u64 + 1
}

/// What a session's reader and writer stamp for the sweeper.
#[derive(Debug)]
pub struct Activity {
    /// When the peer was last heard from: a byte read from it, or a full
    /// socket taking more bytes (room the peer's acknowledgements made; a
    /// slow reader with a long backlog may have no chance to answer a ping
    /// in time, but is plainly there).
    pub(crate) last_heard_ms: AtomicU64,
    /// When the frame or fragmented message now in progress began; 0 when
    /// none is.
    pub(crate) frame_started_ms: AtomicU64,
    /// The `last_heard_ms` a ping was sent for: one ping per quiet spell.
    pub(crate) pinged_for_ms: AtomicU64,
    /// When the connection's token expires (close 1008); 0 when it has none.
    pub(crate) token_expires_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            last_heard_ms: AtomicU64::new(now_ms()),
            frame_started_ms: AtomicU64::new(0),
            pinged_for_ms: AtomicU64::new(0),
            token_expires_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Bytes came from the peer.
    pub fn read_now(&self) {
        self.last_heard_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A full socket took more bytes: the peer acknowledged some.
    pub fn peer_acked(&self) {
        self.last_heard_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Part of a frame or message is held; its clock starts unless it runs.
    pub fn frame_begun(&self) {
        let _ = self.frame_started_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The connection's token expires at `unix_secs` (its `exp`); a
    /// refreshed token moves the deadline.
    pub(crate) fn expire_token_at(&self, unix_secs: u64) {
        let unix_now_ms = crate::clock::unix_nanos() / 1_000_000;
        let left_ms = unix_secs.saturating_mul(1000).saturating_sub(unix_now_ms);
        let deadline = now_ms().saturating_add(left_ms);
        self.token_expires_ms.store(deadline, Ordering::Relaxed);
    }

    /// No frame or message is in progress.
    pub fn frame_done(&self) {
        self.frame_started_ms.store(0, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn frame_in_progress(&self) -> bool {
        self.frame_started_ms.load(Ordering::Relaxed) != 0
    }
}
