//! Sending held diffs when they fall due.
//!
//! The engine task asks [`Engine::next_due`] how long it may sleep and
//! calls [`Engine::flush_due`] when that time comes. A flushed diff is one
//! `update` carrying the channel's current seq, the delivery's `prev`, the
//! `ts` of the last update merged in and the composed patch; or, when the
//! patches could not be composed or grew past their bound, a (filtered,
//! non-resync) snapshot of the current state.

use std::sync::atomic::Ordering;

use super::{ChannelId, Engine, Mode, SessionId};
use crate::session::outbox::QueuedFrame;
use crate::wire;

impl Engine {
    /// The earliest instant a held diff falls due (engine monotonic ns).
    pub fn next_due(&self) -> Option<u64> {
        self.timers.next_due()
    }

    /// Sends every held diff that is due at `now`.
    pub fn flush_due(&mut self, now: u64) {
        while let Some((cid, session)) = self.timers.pop_due(now) {
            self.flush(cid, session, now);
        }
    }

    fn flush(&mut self, cid: ChannelId, session: SessionId, now: u64) {
        let channel = &mut self.channels[cid];
        let seq = channel.seq;
        let Some(delivery) = channel.subscribers.iter().find(|d| d.session == session) else {
            return;
        };
        let Some(pending) = &delivery.pending else {
            return;
        };
        let bytes = if pending.snapshot {
            let filter = delivery.filter.clone();
            channel.snapshot_frame(&self.epoch, &filter, false)
        } else {
            let json = serde_json::to_vec(&pending.patch).expect("serializing a JSON map");
            wire::update(
                channel.name.as_str(),
                seq,
                delivery.last_sent,
                pending.ts,
                &json,
            )
        };
        let mode = channel.mode;
        let delivery = channel.delivery_mut(session).expect("found just above");
        let len = bytes.len() as u64;
        // Not timed for latency: the wait was asked for by the client (or
        // caused by its own slow reading).
        let frame = QueuedFrame {
            bytes,
            ingest_ns: 0,
            queued_ns: now,
        };
        if delivery.outbox.push(frame) {
            delivery.discard_pending();
            delivery.sent(seq, now);
            self.stats.frames_queued.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_queued.fetch_add(len, Ordering::Relaxed);
            self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
        } else if mode == Mode::Stream {
            self.close_slow(session);
        } else {
            // Still backed up: keep holding; the drain will bring it back.
            delivery.outbox.mark_lagging();
        }
    }

    /// The session's socket drained after it lagged: send every held diff
    /// that its rate limit (if any) allows now; the rest wait for their timer.
    pub fn drained(&mut self, session: SessionId, now: u64) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        let mut ready: Vec<ChannelId> = entry
            .attached
            .iter()
            .copied()
            .filter(|&cid| {
                self.channels[cid]
                    .subscribers
                    .iter()
                    .find(|d| d.session == session)
                    .is_some_and(|d| d.pending.is_some() && !d.must_wait(now))
            })
            .collect();
        ready.sort_unstable();
        for cid in ready {
            self.flush(cid, session, now);
        }
    }
}
