//! One channel delivered to one session: where its `prev` chain stands, its
//! field filter, its rate limit and the diff it is holding back.
//!
//! A delivery either sends an update at once or *holds* it: the update's
//! (already filtered) patch is folded into one pending diff that goes out
//! later as a single `update` (or, when no single patch can say it, as a
//! snapshot). `max_hz` decides when a held diff may go; the holding itself
//! does not care why, so slow-consumer coalescing can reuse it.

use std::sync::Arc;

use super::filter::FieldFilter;
use super::index::SessionId;
use super::patch::{compose, NeedsSnapshot};
use crate::outbox::Outbox;
use crate::record::JsonMap;

pub use super::patch::serialized_len;

/// Bytes a pending diff may reach before it is measured against its bound.
const FIRST_CHECK_BYTES: usize = 1024;

pub struct Delivery {
    pub session: SessionId,
    pub outbox: Arc<Outbox>,
    /// Seq of the last snapshot or update sent on this channel: the next
    /// update's `prev`.
    pub last_sent: u64,
    /// The channel seq this delivery is up to date with: it started from a
    /// snapshot or replay at this seq, or has seen every update up to it.
    /// A handed-off update at or below it is already accounted for and is
    /// skipped (see `ChannelCell::attach`).
    pub current: u64,
    pub filter: Option<Arc<FieldFilter>>,
    pub throttle: Option<Throttle>,
    /// Boxed: rare (a throttled or lagging subscriber), and inline it would
    /// more than double every delivery (one per session and channel).
    pub pending: Option<Box<Pending>>,
}

/// A `max_hz` limit: at most one message per `interval_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub interval_ns: u64,
    /// The earliest instant the next update may be sent.
    pub next_allowed_ns: u64,
}

impl Throttle {
    /// The interval for `max_hz` (> 0); absurdly low rates saturate.
    pub fn from_hz(max_hz: f64, now: u64) -> Self {
        let interval = 1e9 / max_hz;
        Self {
            interval_ns: if interval >= u64::MAX as f64 {
                u64::MAX
            } else {
                interval as u64
            },
            next_allowed_ns: now,
        }
    }
}

/// Updates held back and merged into one diff.
#[derive(Debug)]
pub struct Pending {
    /// The composed patch, already filtered; empty once `snapshot` is set.
    pub patch: JsonMap,
    /// Ingest stamp of the last update merged in (the flushed `ts`).
    pub ts: u64,
    /// Seq of the last update merged in (the flushed `seq`).
    pub seq: u64,
    /// Send a snapshot at flush instead of a patch: the patches could not be
    /// composed, or the diff grew past its bound.
    pub snapshot: bool,
    /// An upper bound on the serialized size of `patch`: the sum of the
    /// sizes of the patches merged since it was last measured.
    bound: usize,
    /// Measure `patch` when `bound` passes this.
    check_at: usize,
}

impl Pending {
    fn new(patch: JsonMap, len: usize, ts: u64, seq: u64) -> Self {
        Self {
            patch,
            ts,
            seq,
            snapshot: false,
            bound: len,
            check_at: FIRST_CHECK_BYTES,
        }
    }

    /// Bytes the held diff would take on the wire (0 when a snapshot is
    /// owed instead: that is the channel's state, which exists anyway).
    pub fn held_bytes(&self) -> usize {
        if self.snapshot {
            0
        } else {
            serialized_len(&self.patch)
        }
    }

    fn give_up_on_patch(&mut self) {
        self.snapshot = true;
        self.patch = JsonMap::new();
    }
}

impl Delivery {
    pub fn new(session: SessionId, outbox: Arc<Outbox>, last_sent: u64) -> Self {
        Self {
            session,
            outbox,
            last_sent,
            current: last_sent,
            filter: None,
            throttle: None,
            pending: None,
        }
    }

    /// Whether an update arriving at `now` must be held rather than sent.
    /// Once something is held, later updates join it, keeping order.
    pub fn must_hold(&self, now: u64) -> bool {
        self.pending.is_some() || self.throttle.is_some_and(|t| now < t.next_allowed_ns)
    }

    /// Whether its rate limit forbids sending at `now`.
    pub fn must_wait(&self, now: u64) -> bool {
        self.throttle.is_some_and(|t| now < t.next_allowed_ns)
    }

    /// When the held diff may go out; `None` if nothing decides that yet.
    pub fn due_ns(&self) -> Option<u64> {
        self.pending.as_ref()?;
        self.throttle.map(|t| t.next_allowed_ns)
    }

    /// Folds an update's filtered `patch` (serialized length `len`, ingest
    /// stamp `ts`, seq `seq`) into the held diff. `bound` gives the most bytes the diff
    /// may hold (computed only when needed). Returns true if this started a
    /// held diff, so the caller can schedule it.
    pub fn hold(
        &mut self,
        patch: &JsonMap,
        len: usize,
        ts: u64,
        seq: u64,
        bound: impl FnOnce() -> usize,
    ) -> bool {
        let Some(pending) = &mut self.pending else {
            self.pending = Some(Box::new(Pending::new(patch.clone(), len, ts, seq)));
            return true;
        };
        pending.ts = ts;
        pending.seq = seq;
        if pending.snapshot {
            return false;
        }
        if let Err(NeedsSnapshot) = compose(&mut pending.patch, patch) {
            pending.give_up_on_patch();
            return false;
        }
        pending.bound += len;
        if pending.bound > pending.check_at {
            let limit = bound();
            let actual = serialized_len(&pending.patch);
            if actual > limit {
                pending.give_up_on_patch();
            } else {
                // Measuring costs the diff's size; wait for at least half a
                // bound of new bytes before the next look, so it stays cheap.
                pending.bound = actual;
                pending.check_at = limit.max(actual + limit / 2);
            }
        }
        false
    }

    /// Drops the held diff without sending it (restart, detach).
    pub fn discard_pending(&mut self) -> Option<Box<Pending>> {
        self.pending.take()
    }

    /// Records that a message carrying `seq` went out at `now`.
    pub fn sent(&mut self, seq: u64, now: u64) {
        self.last_sent = seq;
        if let Some(t) = &mut self.throttle {
            t.next_allowed_ns = now.saturating_add(t.interval_ns);
        }
    }
}

/// The bound on a held diff for a channel whose state serializes to
/// `state_len` bytes: past it, a snapshot is the cheaper message.
pub fn pending_limit(state_len: usize) -> usize {
    state_len * 2 + 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::patch::tests::map;
    use serde_json::{json, Value};

    fn delivery() -> Delivery {
        let mut d = Delivery::new(1, Arc::new(Outbox::new(1 << 20)), 0);
        d.throttle = Some(Throttle::from_hz(10.0, 0));
        d
    }

    /// One delivery per session and channel: what a subscriber costs the
    /// shard beyond its session entry (docs/benchmarks.md, memory).
    #[test]
    fn a_delivery_stays_small() {
        let size = std::mem::size_of::<Delivery>();
        assert!(size <= 72, "a delivery is {size} bytes: box what is rare");
    }

    #[test]
    fn throttle_holds_between_allowed_instants() {
        let mut d = delivery();
        assert!(!d.must_hold(0));
        d.sent(1, 0);
        assert!(d.must_hold(50_000_000));
        assert!(!d.must_hold(100_000_000));
        assert_eq!(d.throttle.unwrap().interval_ns, 100_000_000);
    }

    #[test]
    fn held_updates_compose_keeping_the_latest_values() {
        let mut d = delivery();
        let p = map(json!({"bid": 1, "ask": 2}));
        assert!(d.hold(&p, 17, 10, 1, || unreachable!()));
        assert!(!d.hold(&map(json!({"bid": 3, "ask": null})), 21, 11, 2, || 0));
        let pending = d.pending.as_ref().unwrap();
        assert_eq!(
            Value::Object(pending.patch.clone()),
            json!({"bid": 3, "ask": null})
        );
        assert_eq!((pending.ts, pending.seq), (11, 2));
        assert!(!pending.snapshot);
        assert_eq!(d.due_ns(), Some(0));
    }

    #[test]
    fn an_uncomposable_pair_turns_into_a_snapshot() {
        let mut d = delivery();
        d.hold(&map(json!({"a": 1})), 7, 1, 1, || 0);
        d.hold(&map(json!({"a": {"b": 1}})), 13, 2, 2, || 0);
        let pending = d.pending.as_ref().unwrap();
        assert!(pending.snapshot && pending.patch.is_empty());
        d.hold(&map(json!({"c": 1})), 7, 3, 3, || 0);
        assert_eq!(d.pending.as_ref().unwrap().ts, 3, "ts still follows");
    }

    #[test]
    fn a_diff_past_its_bound_turns_into_a_snapshot() {
        let mut d = delivery();
        // Distinct keys: the diff really grows.
        for i in 0..200 {
            let patch = map(json!({ format!("key{i}"): i }));
            let len = serialized_len(&patch);
            d.hold(&patch, len, i, i, || pending_limit(100));
        }
        assert!(d.pending.as_ref().unwrap().snapshot);
        // The same key over and over: the diff stays small.
        let mut d = delivery();
        for i in 0..10_000 {
            let patch = map(json!({"bid": i}));
            let len = serialized_len(&patch);
            d.hold(&patch, len, i, i, || pending_limit(100));
        }
        let pending = d.pending.as_ref().unwrap();
        assert!(!pending.snapshot);
        assert_eq!(Value::Object(pending.patch.clone()), json!({"bid": 9999}));
    }
}
