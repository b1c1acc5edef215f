//! A channel, kept once for the whole process: its state, seq, history and
//! snapshot frames in one [`ChannelCell`] that the state stage writes and
//! the fanout shards read.
//!
//! The name and mode never change. The rest sits behind one lock, taken by
//! the state stage for each record of the channel and by a shard when it
//! starts a delivery (snapshot, resume) or flushes one as a snapshot; both
//! hold it for a merge or one encoding, never across an await, so it is
//! uncontended in practice. `attached` counts the deliveries of the channel
//! over every shard: the state stage hands an update off only if it is not
//! zero (see [`ChannelCell::attach`] for why that cannot lose an update).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::filter::{self, FieldFilter};
use super::history::{Entry, History, HistoryBudget};
use super::index::ChannelId;
use super::patch::merge_patch;
use super::policy::{Mode, NamespacePolicy};
use super::size;
use super::state_budget::{StateBudget, StateTooLarge};
use crate::channel::ChannelName;
use crate::deflate::{self, Negotiated};
use crate::record::{FeedRecord, JsonMap};
use crate::wire;

/// Distinct snapshot frames kept per channel between two updates.
const SNAPSHOT_CACHE: usize = 8;

/// One channel, shared by the state stage and every fanout shard.
pub struct ChannelCell {
    /// Index in creation order (the directory's list, timers, deliveries).
    pub id: ChannelId,
    pub name: ChannelName,
    pub mode: Mode,
    /// Made by this node alone (a NATS node's own status), so its seqs
    /// are this node's: a resume with `since` is always answered with a
    /// resync snapshot, since the seq a client holds may be another node's.
    pub local: bool,
    /// Deliveries of this channel over all shards.
    attached: AtomicUsize,
    inner: Mutex<ChannelState>,
}

/// The mutable part of a channel.
pub struct ChannelState {
    pub state: JsonMap,
    /// Bytes of `state` as JSON, kept up to date by [`size::merged_len`].
    pub state_len: usize,
    pub seq: u64,
    pub history: History,
    /// Snapshot frames for `seq`, by filter and resync flag, shared by
    /// everyone who subscribes before the next update.
    snapshots: Vec<CachedSnapshot>,
}

/// One snapshot frame of the current seq, plain and (once a subscriber that
/// agreed to permessage-deflate asked for it) compressed.
struct CachedSnapshot {
    /// Held, not just its address, so a freed filter's address cannot be
    /// reused.
    filter: Option<Arc<FieldFilter>>,
    resync: bool,
    plain: Bytes,
    /// `None`: not compressed yet; `Some(None)`: compressing does not make
    /// it smaller.
    deflated: Option<Option<Bytes>>,
}

impl CachedSnapshot {
    fn frame_for(&mut self, deflate: Option<Negotiated>) -> Bytes {
        match deflate {
            Some(agreed) if agreed.compresses_frame(&self.plain) => self
                .deflated
                .get_or_insert_with(|| deflate::deflate_frame(&self.plain))
                .clone()
                .unwrap_or_else(|| self.plain.clone()),
            _ => self.plain.clone(),
        }
    }
}

impl ChannelCell {
    /// A channel created by its first record (seq 1), unless that record
    /// does not fit the state `budget`.
    pub fn create(
        id: ChannelId,
        record: &FeedRecord,
        policy: NamespacePolicy,
        budget: &mut StateBudget,
        history: &mut HistoryBudget,
    ) -> Result<Self, StateTooLarge> {
        let mut state = ChannelState {
            state: JsonMap::new(),
            state_len: size::EMPTY_OBJECT,
            seq: 0,
            history: History::new(policy.history),
            snapshots: Vec::new(),
        };
        state.apply(record, budget, history, false)?;
        Ok(Self {
            id,
            name: record.channel.clone(),
            mode: policy.mode,
            local: false,
            attached: AtomicUsize::new(0),
            inner: Mutex::new(state),
        })
    }

    /// This cell, marked [`local`](Self::local) if `local`.
    pub fn made_here(self, local: bool) -> Self {
        Self { local, ..self }
    }

    /// The channel's state, seq and history. Never hold the guard across an
    /// await. A panic while it was held (none is expected) leaves the last
    /// complete state, which is still served.
    pub fn lock(&self) -> MutexGuard<'_, ChannelState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shard starts a delivery of this channel. It must call this BEFORE
    /// it takes the lock to read the (state, seq) or history it starts
    /// from, and then skip every handed-off update whose seq is at or below
    /// the seq it read. That loses nothing:
    ///
    /// The state stage applies update `s` under the lock and reads
    /// [`attached`](Self::attached) while still holding it. Either the
    /// shard's lock came after the stage's, and the shard read seq >= `s`
    /// (the update is in what it started from), or it came before: then the
    /// increment happened before the shard released the lock, which
    /// happened before the stage acquired it, so the stage's read sees the
    /// increment (a read that happens after a write sees it or a later
    /// value; every later value still includes it until this delivery
    /// detaches) and hands `s` off. The mutex's release/acquire is the only
    /// ordering needed, so the counter itself can be relaxed.
    pub fn attach(&self) {
        self.attached.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery of this channel ended.
    pub fn detach(&self) {
        self.attached.fetch_sub(1, Ordering::Relaxed);
    }

    /// Deliveries over all shards; the state stage reads it under the lock.
    pub fn attached(&self) -> usize {
        self.attached.load(Ordering::Relaxed)
    }
}

impl ChannelState {
    /// Merges `record`, advances the seq and remembers the update. Returns
    /// the patch serialized when it was needed (for history, or for
    /// subscribers if `subscribed`). A record that does not fit the state
    /// `budget` changes nothing (no seq is used, so subscribers see no
    /// gap).
    pub fn apply(
        &mut self,
        record: &FeedRecord,
        budget: &mut StateBudget,
        history: &mut HistoryBudget,
        subscribed: bool,
    ) -> Result<Option<Bytes>, StateTooLarge> {
        let would_be = size::merged_len(&self.state, self.state_len, &record.data);
        budget.resize(self.state_len, would_be)?;
        merge_patch(&mut self.state, &record.data);
        self.state_len = would_be;
        self.seq += 1;
        self.snapshots.clear();
        if !subscribed && !self.history.keeps_anything() {
            return Ok(None);
        }
        let mut json = serde_json::to_vec(&record.data).expect("serializing a JSON map");
        // History holds this buffer: no spare capacity (serde_json starts
        // at 128 bytes), and an exact Vec becomes Bytes without a second
        // allocation, so what history is charged is close to what it holds.
        json.shrink_to_fit();
        let json = Bytes::from(json);
        let entry = Entry {
            seq: self.seq,
            ts: record.ingest_ns,
            patch: json.clone(),
        };
        self.history.push(entry, history);
        Ok(Some(json))
    }

    /// Replaces the state and seq wholesale (a snapshot from the NATS
    /// stream) and forgets the history, which would chain across the
    /// updates in between. `state_len` is `state`'s size, already charged
    /// to the state budget.
    pub fn replace(
        &mut self,
        state: JsonMap,
        state_len: usize,
        seq: u64,
        history: &mut HistoryBudget,
    ) {
        self.state = state;
        self.state_len = state_len;
        self.seq = seq;
        self.snapshots.clear();
        self.history.clear(history);
    }

    /// The snapshot frame of the current state of channel `name` for
    /// `filter`, compressed if `deflate` (the subscriber's agreement) allows
    /// it. Every form is built once per seq and shared, as update frames
    /// are: a reconnect storm compresses a big book once, not per client.
    pub fn snapshot_frame(
        &mut self,
        name: &str,
        epoch: &str,
        filter: &Option<Arc<FieldFilter>>,
        resync: bool,
        deflate: Option<Negotiated>,
    ) -> Bytes {
        if let Some(cached) = self
            .snapshots
            .iter_mut()
            .find(|c| c.resync == resync && filter::same(&c.filter, filter))
        {
            return cached.frame_for(deflate);
        }
        let plain = match filter {
            None => wire::snapshot(name, self.seq, epoch, &self.state, resync),
            Some(f) => {
                let data = f.restrict(&self.state);
                wire::snapshot(name, self.seq, epoch, &data, resync)
            }
        };
        let mut cached = CachedSnapshot {
            filter: filter.clone(),
            resync,
            plain,
            deflated: None,
        };
        let frame = cached.frame_for(deflate);
        if self.snapshots.len() < SNAPSHOT_CACHE {
            self.snapshots.push(cached);
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state_budget::StateBudget;
    use serde_json::json;

    fn cell(data: serde_json::Value) -> ChannelCell {
        let serde_json::Value::Object(data) = data else {
            panic!("not an object")
        };
        let record = FeedRecord {
            channel: ChannelName::new("book.A").unwrap(),
            data,
            ts: None,
            ingest_ns: 1,
        };
        ChannelCell::create(
            0,
            &record,
            NamespacePolicy::default(),
            &mut StateBudget::unbounded(),
            &mut HistoryBudget::new(usize::MAX),
        )
        .unwrap()
    }

    /// Every subscriber that agreed to compression gets the one compressed
    /// snapshot of a seq; one that did not, the plain one; a snapshot under
    /// the size threshold goes plain to both.
    #[test]
    fn a_snapshot_is_compressed_once_per_seq_and_shared() {
        let levels: Vec<_> = (0..50).map(|i| json!([100 + i, "1.5"])).collect();
        let cell = cell(json!({ "bids": levels }));
        let agreed = Some(Negotiated::new(15, 96));
        let mut state = cell.lock();
        let a = state.snapshot_frame("book.A", "e", &None, false, agreed);
        let b = state.snapshot_frame("book.A", "e", &None, false, agreed);
        let plain = state.snapshot_frame("book.A", "e", &None, false, None);
        assert_eq!(a[0] & 0x40, 0x40, "RSV1: compressed");
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not compressed again");
        assert_eq!(plain[0] & 0x40, 0, "plain for a client without it");
        assert!(a.len() < plain.len());

        let small = self::cell(json!({ "x": 1 }));
        let mut state = small.lock();
        let frame = state.snapshot_frame("book.A", "e", &None, false, agreed);
        assert_eq!(frame[0] & 0x40, 0, "under min_bytes: plain");
    }
}
