//! Starting (or restarting) a channel for a session: a snapshot, or, from a
//! client's `since`, exactly the updates it missed.
//!
//! The rules (PROTOCOL.md, `since` and `epoch`): a position from another
//! epoch, one older than the channel's history, or one ahead of the channel
//! is answered with a snapshot marked `"resync":true`; a position at the
//! channel's seq needs no message (the chain goes on from it); any other is
//! replayed in order, filtered like live updates and not throttled.

use std::sync::Arc;

use bytes::Bytes;

use super::cell::{ChannelCell, ChannelState};
use super::delivery::Throttle;
use super::filter::FieldFilter;
use super::index::DeliveryOptions;
use super::patch::merge_patch;
use super::policy::Mode;
use super::shard::Shard;
use super::SessionId;
use crate::deflate::Negotiated;
use crate::outbox::QueuedFrame;
use crate::record::{FeedRecord, JsonMap};
use crate::wire;

/// How a delivery begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// No resume position: a plain snapshot.
    Snapshot,
    /// The client holds the channel at `since`, in the numbering of the
    /// epoch it named (`epoch_matches` if that is this server's).
    Since { since: u64, epoch_matches: bool },
}

impl Start {
    pub fn from_request(since: Option<u64>, epoch_matches: bool) -> Self {
        match since {
            None => Start::Snapshot,
            Some(since) => Start::Since {
                since,
                epoch_matches,
            },
        }
    }
}

/// What one channel's (re)start sends, worked out before anything is sent
/// so that a subscribe can check its answers fit the session's queue.
pub(super) struct Plan {
    cell: Arc<ChannelCell>,
    frames: Vec<Bytes>,
    bytes: usize,
    last_sent: u64,
    /// The channel's seq when the frames were read: later updates follow.
    current: u64,
    /// The frames replay a resume; a resync snapshot could replace them.
    replay: bool,
}

impl Shard {
    /// Works out how `cell` starts for a subscriber with `filter` (and
    /// `deflate`, its permessage-deflate agreement: a snapshot goes
    /// compressed when it allows; replayed updates are built for this
    /// subscriber alone and go plain). The delivery must already be counted
    /// on the cell (`ensure_delivery`).
    pub(super) fn plan(
        &self,
        cell: &Arc<ChannelCell>,
        filter: &Option<Arc<FieldFilter>>,
        start: Start,
        deflate: Option<Negotiated>,
    ) -> Plan {
        let mut channel = cell.lock();
        let name = cell.name.as_str();
        let replayed = match start {
            Start::Snapshot => None,
            // Its seqs are this node's alone (`ChannelCell::local`).
            Start::Since { .. } if cell.local => None,
            Start::Since {
                since,
                epoch_matches: true,
            } if since == channel.seq => Some((Vec::new(), since)),
            Start::Since {
                since,
                epoch_matches: true,
            } => replay(name, &channel, since, filter),
            Start::Since { .. } => None,
        };
        let replay = replayed.as_ref().is_some_and(|(f, _)| !f.is_empty());
        let (frames, last_sent) = replayed.unwrap_or_else(|| {
            // A resume that cannot be honoured is announced as a resync.
            let resync = start != Start::Snapshot;
            let frame = channel.snapshot_frame(name, &self.epoch, filter, resync, deflate);
            (vec![frame], channel.seq)
        });
        let current = channel.seq;
        drop(channel);
        #[cfg(test)]
        self.race_hook.run();
        Plan {
            cell: cell.clone(),
            current,
            bytes: frames.iter().map(Bytes::len).sum(),
            frames,
            last_sent,
            replay,
        }
    }

    /// How `cell`, just created by `first`, starts for a subscriber whose
    /// target was waiting for it: from its first state (seq 1), as if the
    /// shard had seen it created. The state stage may have applied more
    /// since (the shard reads the cell later than the stage wrote it, and
    /// did not count as a subscriber yet): those come from history, as a
    /// resume from seq 1 would; if history no longer holds them all, a
    /// plain snapshot of the current state.
    pub(super) fn plan_from_first(
        &self,
        cell: &Arc<ChannelCell>,
        first: &FeedRecord,
        filter: &Option<Arc<FieldFilter>>,
        deflate: Option<Negotiated>,
    ) -> Plan {
        let channel = cell.lock();
        let name = cell.name.as_str();
        let caught_up = (channel.seq > 1)
            .then(|| replay(name, &channel, 1, filter))
            .flatten();
        let Some((updates, last_sent)) = caught_up else {
            drop(channel);
            return self.plan(cell, filter, Start::Snapshot, deflate);
        };
        let mut state = JsonMap::new();
        merge_patch(&mut state, &first.data);
        if let Some(filter) = filter {
            state = filter.restrict(&state);
        }
        let mut frames = vec![wire::snapshot(name, 1, &self.epoch, &state, false)];
        frames.extend(updates);
        Plan {
            cell: cell.clone(),
            current: channel.seq,
            bytes: frames.iter().map(Bytes::len).sum(),
            frames,
            last_sent,
            replay: false,
        }
    }

    /// Makes `plans` fit in `room` (the queue's free bytes) by answering
    /// the biggest replays with resync snapshots instead: a resume that the
    /// queue cannot hold is announced as a resync rather than closed with
    /// 1013, which would only repeat when the client resumes the same way.
    pub(super) fn fit(
        &self,
        plans: &mut [Plan],
        room: usize,
        filter: &Option<Arc<FieldFilter>>,
        deflate: Option<Negotiated>,
    ) {
        let mut total: usize = plans.iter().map(|p| p.bytes).sum();
        while total > room {
            let Some(plan) = plans
                .iter_mut()
                .filter(|p| p.replay)
                .max_by_key(|p| p.bytes)
            else {
                return;
            };
            let mut channel = plan.cell.lock();
            let name = plan.cell.name.as_str();
            let frame = channel.snapshot_frame(name, &self.epoch, filter, true, deflate);
            total = total - plan.bytes + frame.len();
            plan.bytes = frame.len();
            plan.frames = vec![frame];
            plan.last_sent = channel.seq;
            plan.current = channel.seq;
            drop(channel);
            plan.replay = false;
        }
    }

    /// Sends `plan` to `session` and (re)sets its delivery with `options`.
    /// A restart drops anything the old delivery was holding. Returns false
    /// if the session's queue was full and it has been closed.
    pub(super) fn start(
        &mut self,
        session: SessionId,
        plan: Plan,
        options: &Arc<DeliveryOptions>,
        now: u64,
    ) -> bool {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return false;
        };
        let outbox = entry.outbox.clone();
        for bytes in plan.frames {
            let frame = QueuedFrame {
                bytes,
                ingest_ns: 0,
                queued_ns: now,
            };
            if !outbox.push(frame) {
                self.close_slow(session);
                return false;
            }
        }
        let cell = &plan.cell;
        // `max_hz` never applies to stream channels, even via a pattern.
        let throttle = match (cell.mode, options.max_hz) {
            (Mode::Merge, Some(hz)) => Some(Throttle::from_hz(hz, now)),
            _ => None,
        };
        let cid = cell.id;
        // `ensure_delivery` made it before the plan was read.
        let Some(delivery) = self
            .deliveries
            .get_mut(&cid)
            .and_then(|d| d.get_mut(session))
        else {
            return false;
        };
        if let Some(due) = delivery.due_ns() {
            self.timers.disarm(due, cid, session);
        }
        delivery.discard_pending();
        delivery.last_sent = plan.last_sent;
        delivery.current = plan.current;
        delivery.filter = options.filter.clone();
        delivery.throttle = throttle;
        true
    }
}
/// The updates after `since` as frames, filtered and chained, and the seq
/// the chain ends at; `None` if history no longer holds them all.
fn replay(
    name: &str,
    channel: &ChannelState,
    since: u64,
    filter: &Option<Arc<FieldFilter>>,
) -> Option<(Vec<Bytes>, u64)> {
    let mut frames = Vec::new();
    let mut prev = since;
    for entry in channel.history.after(since)? {
        let frame = match filter {
            None => wire::update(name, entry.seq, prev, entry.ts, &entry.patch),
            Some(filter) => {
                let patch: JsonMap =
                    serde_json::from_slice(&entry.patch).expect("history holds JSON objects");
                let kept = filter.restrict(&patch);
                if kept.is_empty() {
                    continue;
                }
                let json = serde_json::to_vec(&kept).expect("serializing a JSON map");
                wire::update(name, entry.seq, prev, entry.ts, &json)
            }
        };
        prev = entry.seq;
        frames.push(frame);
    }
    Some((frames, prev))
}
