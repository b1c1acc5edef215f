//! Sending held diffs when they fall due.
//!
//! The engine task asks [`Engine::next_due`] how long it may sleep and
//! calls [`Engine::flush_due`] when that time comes. A flushed diff is one
//! `update` carrying the channel's current seq, the delivery's `prev`, the
//! `ts` of the last update merged in and the composed patch; or, when the
//! patches could not be composed or grew past their bound, a (filtered,
//! non-resync) snapshot of the current state.

use std::sync::atomic::Ordering;

use super::shard::Shard;
use super::{ChannelId, Mode, SessionId};
use crate::outbox::QueuedFrame;
use crate::wire;

impl Shard {
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
        let Some(channel) = self.deliveries.get_mut(&cid) else {
            return;
        };
        let cell = channel.cell.clone();
        let Some(delivery) = channel.get_mut(session) else {
            return;
        };
        let Some(pending) = &delivery.pending else {
            return;
        };
        let (bytes, seq) = if pending.snapshot {
            // The state as it is now, which may be ahead of the updates
            // this shard has been handed: those are then skipped as
            // already included (`current`).
            let mut state = cell.lock();
            let deflate = delivery.outbox.deflate();
            let name = cell.name.as_str();
            let frame = state.snapshot_frame(name, &self.epoch, &delivery.filter, false, deflate);
            (frame, state.seq)
        } else {
            let json = serde_json::to_vec(&pending.patch).expect("serializing a JSON map");
            let frame = wire::update(
                cell.name.as_str(),
                pending.seq,
                delivery.last_sent,
                pending.ts,
                &json,
            );
            (frame, pending.seq)
        };
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
            delivery.current = delivery.current.max(seq);
            self.stats.frames_queued.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_queued.fetch_add(len, Ordering::Relaxed);
            self.stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
        } else if cell.mode == Mode::Stream {
            self.close_slow(session);
        } else {
            // Still backed up: keep holding; the refused push asked the
            // writer to report the next drain.
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
            .filter(|cid| {
                self.deliveries
                    .get(cid)
                    .and_then(|c| c.list.iter().find(|d| d.session == session))
                    .is_some_and(|d| d.pending.is_some() && !d.must_wait(now))
            })
            .collect();
        ready.sort_unstable();
        for cid in ready {
            self.flush(cid, session, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::channel::{ChannelName, Pattern};
    use crate::engine::SubscribeOptions;
    use crate::engine::{Engine, EngineLimits, EngineStats};
    use crate::outbox::{Outbox, QueuedFrame};
    use crate::record::{FeedRecord, JsonMap};

    const MS: u64 = 1_000_000;

    fn record(bid: i64) -> FeedRecord {
        let mut data = JsonMap::new();
        data.insert("bid".into(), bid.into());
        FeedRecord {
            channel: ChannelName::new("q.A").unwrap(),
            data,
            ts: None,
            ingest_ns: 1_000 + bid as u64,
        }
    }

    fn drain(outbox: &Outbox) -> Vec<serde_json::Value> {
        use futures_util::FutureExt;
        let mut frames: Vec<QueuedFrame> = Vec::new();
        let _ = outbox.take(&mut frames).now_or_never();
        frames
            .iter()
            .map(|f| serde_json::from_slice(&f.bytes[2..]).unwrap())
            .collect()
    }

    /// Ten thousand throttled subscriptions hold their diffs in one timer
    /// set: one due time to sleep on, one sweep to send them all.
    #[test]
    fn ten_thousand_throttled_subscriptions_share_one_sweep() {
        let stats = Arc::new(EngineStats::default());
        let limits = EngineLimits {
            max_targets_per_session: 4,
            max_channels: 4,
        };
        let mut engine = Engine::new(Arc::from("e"), limits, stats.clone());
        engine.apply(&record(0), 0);
        let options = SubscribeOptions {
            max_hz: Some(10.0),
            ..SubscribeOptions::default()
        };
        let mut outboxes = Vec::new();
        for session in 0..10_000u64 {
            let outbox = Arc::new(Outbox::new(1 << 16));
            engine.register(session, outbox.clone());
            let targets = vec![Pattern::new("q.A").unwrap()];
            engine.subscribe(session, None, targets, options.clone(), MS);
            outboxes.push(outbox);
        }
        engine.apply(&record(1), 2 * MS); // sent at once: the first is free
        for bid in 2..=5 {
            engine.apply(&record(bid), 3 * MS); // held and merged
        }
        assert_eq!(engine.shards[0].timers.len(), 10_000);
        assert_eq!(
            engine.next_due(),
            Some(102 * MS),
            "one interval after the send"
        );
        engine.flush_due(101 * MS);
        assert_eq!(
            engine.shards[0].timers.len(),
            10_000,
            "nothing is due early"
        );
        engine.flush_due(102 * MS);
        assert!(engine.shards[0].timers.is_empty() && engine.next_due().is_none());
        assert_eq!(
            stats
                .coalesced_diffs
                .load(std::sync::atomic::Ordering::Relaxed),
            40_000
        );
        for outbox in [&outboxes[0], &outboxes[9_999]] {
            let messages = drain(outbox);
            let kinds: Vec<&str> = messages
                .iter()
                .map(|m| m["type"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, ["subscribed", "snapshot", "update", "update"]);
            let flushed = &messages[3];
            assert_eq!(
                (
                    &flushed["seq"],
                    &flushed["prev"],
                    &flushed["ts"],
                    &flushed["data"]
                ),
                (
                    &serde_json::json!(6),
                    &serde_json::json!(2),
                    &serde_json::json!(1_005),
                    &serde_json::json!({"bid": 5})
                )
            );
        }
    }
}
