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

use super::delivery::{Delivery, Throttle};
use super::filter::FieldFilter;
use super::index::DeliveryOptions;
use super::policy::Mode;
use super::state::Channel;
use super::{ChannelId, Engine, SessionId};
use crate::record::JsonMap;
use crate::session::outbox::QueuedFrame;
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

impl Engine {
    /// Starts (or restarts) delivering `cid` to `session` with `options`.
    /// A restart drops anything the old delivery was holding.
    pub(super) fn attach(
        &mut self,
        session: SessionId,
        cid: ChannelId,
        options: &Arc<DeliveryOptions>,
        start: Start,
        now: u64,
    ) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let channel = &mut self.channels[cid];
        let filter = options.filter.clone();
        let outbox = entry.outbox.clone();
        let replayed = match start {
            Start::Snapshot => None,
            Start::Since {
                since,
                epoch_matches: true,
            } if since == channel.seq => Some((Vec::new(), since)),
            Start::Since {
                since,
                epoch_matches: true,
            } => replay(channel, since, &filter, outbox.limit_bytes()),
            Start::Since { .. } => None,
        };
        let (frames, last_sent) = replayed.unwrap_or_else(|| {
            // A resume that cannot be honoured is announced as a resync.
            let resync = start != Start::Snapshot;
            let frame = channel.snapshot_frame(&self.epoch, &filter, resync);
            (vec![frame], channel.seq)
        });
        for bytes in frames {
            let frame = QueuedFrame {
                bytes,
                ingest_ns: 0,
                queued_ns: now,
            };
            if !outbox.push(frame) {
                return self.close_slow(session);
            }
        }
        // `max_hz` never applies to stream channels, even via a pattern.
        let throttle = match (channel.mode, options.max_hz) {
            (Mode::Merge, Some(hz)) => Some(Throttle::from_hz(hz, now)),
            _ => None,
        };
        let delivery = if entry.attached.insert(cid) {
            channel
                .subscribers
                .push(Delivery::new(session, outbox, last_sent));
            channel.subscribers.last_mut().expect("just pushed")
        } else {
            let delivery = channel
                .delivery_mut(session)
                .expect("an attached channel lists its session");
            if let Some(due) = delivery.due_ns() {
                self.timers.disarm(due, cid, session);
            }
            delivery.discard_pending();
            delivery.last_sent = last_sent;
            delivery
        };
        delivery.filter = filter;
        delivery.throttle = throttle;
    }
}

/// The updates after `since` as frames, filtered and chained, and the seq
/// the chain ends at; `None` if history no longer holds them all, or if
/// together they could never fit the session's queue (`room` bytes), in
/// which case a resync is the only answer that can arrive.
fn replay(
    channel: &Channel,
    since: u64,
    filter: &Option<Arc<FieldFilter>>,
    room: usize,
) -> Option<(Vec<Bytes>, u64)> {
    let name = channel.name.as_str();
    let mut frames = Vec::new();
    let mut prev = since;
    let mut total = 0;
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
        total += frame.len();
        if total > room {
            return None;
        }
        prev = entry.seq;
        frames.push(frame);
    }
    Some((frames, prev))
}
