//! The state stage: the one place records are applied.
//!
//! It is the only gating consumer of the feed ring. For each record it
//! finds or creates the channel (within `limits.max_channels`), merges the
//! patch (within `limits.max_state_bytes` for the channel and
//! `limits.max_total_state_bytes` for all of them), advances the seq and pushes the
//! history entry (within `limits.max_history_bytes`), once for the whole
//! process. Only if the channel has deliveries on some shard does it hand
//! the update off ([`Event::Update`]); with none, nothing is handed off, so
//! what an update costs without subscribers does not depend on the number
//! of shards. Channel creation is always handed off ([`Event::Created`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cell::ChannelCell;
use super::directory::Directory;
use super::fanout::{Applied, Event};
use super::history::HistoryBudget;
use super::ingest::IngestLimits;
use super::policy::Namespaces;
use super::state_budget::StateBudget;
use super::{EngineLimits, EngineStats};
use crate::channel::ChannelName;
use crate::feed::log_budget::LogBudget;
use crate::feed::record::RecordTap;
use crate::nats::ReplicationTap;
use crate::record::FeedRecord;

pub struct StateStage {
    pub(super) limits: EngineLimits,
    pub(super) namespaces: Namespaces,
    pub(super) stats: Arc<EngineStats>,
    directory: Arc<Directory>,
    /// The stage's own index of the directory, read without a lock on
    /// every record (the stage is the directory's only writer).
    by_name: HashMap<ChannelName, Arc<ChannelCell>>,
    pub(super) ingest: IngestLimits,
    pub(super) history: HistoryBudget,
    pub(super) state: StateBudget,
    pub(super) drop_log: LogBudget,
    /// `--record`: where accepted records are offered (never waits).
    recorder: Option<RecordTap>,
    /// `--nats`, on the node that assigns seqs: where accepted records go
    /// to be published to the stream (the task waits for room first).
    replication: Option<ReplicationTap>,
}

/// What became of a record applied at the seq it was given
/// ([`StateStage::apply_at`], on nodes that follow a NATS stream).
pub enum AtSeq {
    /// It was the channel's next seq: applied, with what shards must see.
    Applied(Option<Event>),
    /// The channel is already at or past that seq (seen before): skipped.
    Seen,
    /// Seqs between the channel's and this one are missing: not applied.
    Gap { expected: u64 },
}

impl StateStage {
    pub fn new(limits: EngineLimits, stats: Arc<EngineStats>, directory: Arc<Directory>) -> Self {
        Self {
            limits,
            namespaces: Namespaces::default(),
            stats,
            directory,
            by_name: HashMap::new(),
            ingest: IngestLimits::default(),
            history: HistoryBudget::new(IngestLimits::default().max_history_bytes),
            state: IngestLimits::default().state_budget(),
            drop_log: IngestLimits::default().log_budget(),
            recorder: None,
            replication: None,
        }
    }

    /// Offers every record this stage accepts, with its seq, to `tap`
    /// (the NATS publisher of the node that assigns seqs).
    ///
    /// Every channel state is then also bounded by what fits one stream
    /// message (the NATS server's `max_payload`), so every channel can be
    /// snapshotted: a channel without a snapshot could not be resynced
    /// after a hole in its records.
    pub fn set_replication(&mut self, tap: Option<ReplicationTap>) {
        if let Some(tap) = &tap {
            self.state.cap_per_channel(tap.max_state_bytes());
        }
        self.replication = tap;
    }

    /// The NATS publisher's tap, if this stage feeds one: the state task
    /// waits for room in it before each record, so no accepted record is
    /// left unpublished.
    pub fn replication(&self) -> Option<&ReplicationTap> {
        self.replication.as_ref()
    }

    /// Applies `record` only if `seq` is its channel's next seq: how a node
    /// following a NATS stream keeps the seqs the ingest assigned, instead
    /// of assigning its own. The stage is the directory's only writer, so
    /// the seq read here is still the channel's when `apply` runs.
    pub fn apply_at(&mut self, record: &Arc<FeedRecord>, seq: u64, now: u64) -> AtSeq {
        let current = self
            .by_name
            .get(&record.channel)
            .map_or(0, |cell| cell.lock().seq);
        if seq <= current {
            AtSeq::Seen
        } else if seq > current + 1 {
            AtSeq::Gap {
                expected: current + 1,
            }
        } else {
            AtSeq::Applied(self.apply(record, now))
        }
    }

    /// Replaces channel `snapshot.channel`'s state with `snapshot.data` at
    /// `seq`, creating the channel if needed: how a node following a NATS
    /// stream recovers from records it cannot get (a hole in the stream)
    /// or starts from a snapshot instead of the whole stream. Only forward:
    /// a seq at or below the channel's is `Seen`. Its history is dropped (it
    /// would chain across the hole), so a `since` from before is answered
    /// with a resync, and the shards send every subscriber a resync
    /// snapshot ([`Event::Replaced`]). A state over the budget changes
    /// nothing and is logged like a record that is too large.
    pub fn replace(&mut self, snapshot: &Arc<FeedRecord>, seq: u64, now: u64) -> AtSeq {
        let Some(cell) = self.by_name.get(&snapshot.channel).cloned() else {
            return match self.create(snapshot, now, false) {
                Some(Event::Created { cell, first }) => {
                    // Created at seq 1 from the snapshot's state: move it to
                    // the snapshot's seq.
                    let mut channel = cell.lock();
                    let len = channel.state_len;
                    channel.replace(first.data.clone(), len, seq, &mut self.history);
                    drop(channel);
                    self.count_history();
                    AtSeq::Applied(Some(Event::Created { cell, first }))
                }
                _ => AtSeq::Seen,
            };
        };
        let mut channel = cell.lock();
        if seq <= channel.seq {
            return AtSeq::Seen;
        }
        let len = super::size::counted_len(&snapshot.data);
        if let Err(too_large) = self.state.resize(channel.state_len, len) {
            drop(channel);
            self.drop_too_large(snapshot, too_large, now);
            return AtSeq::Seen;
        }
        channel.replace(snapshot.data.clone(), len, seq, &mut self.history);
        let subscribed = cell.attached() > 0;
        drop(channel);
        self.stats
            .state_bytes
            .store(self.state.used() as u64, Ordering::Relaxed);
        self.count_history();
        AtSeq::Applied(subscribed.then_some(Event::Replaced(cell)))
    }

    /// A stage with this one's limits and namespace policies over channels
    /// of its own that nothing serves (fresh counters, no recorder, no
    /// replication): a `--role both` node assigns seqs in it, while its
    /// clients are served from the stream like an edge's. It keeps no
    /// history: nobody resumes from it.
    pub fn detached(&self) -> StateStage {
        let ingest = IngestLimits {
            max_history_bytes: 0,
            ..self.ingest
        };
        StateStage::new(
            self.limits.clone(),
            Arc::new(EngineStats::default()),
            Arc::new(Directory::default()),
        )
        .with_namespaces(self.namespaces.clone())
        .with_ingest_limits(ingest)
    }

    /// Offers every record this stage accepts to `tap` (`--record`).
    pub fn with_recorder(mut self, tap: Option<RecordTap>) -> Self {
        self.recorder = tap;
        self
    }

    /// Sets the state, history and log bounds (the defaults otherwise).
    /// Call before the first record.
    pub fn with_ingest_limits(mut self, limits: IngestLimits) -> Self {
        self.ingest = limits;
        self.history = HistoryBudget::new(limits.max_history_bytes);
        self.state = limits.state_budget();
        self.drop_log = limits.log_budget();
        self
    }

    /// Sets the per-namespace policies (mode, history depth). Channels that
    /// already exist keep the policy they were created with.
    pub fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Applies one record: merge, seq + 1, history; returns what the fanout
    /// shards must see, if anything. `now` is the caller's monotonic clock
    /// (for the drop-log budget and the hand-off's latency stamp).
    pub fn apply(&mut self, record: &Arc<FeedRecord>, now: u64) -> Option<Event> {
        self.apply_as(record, now, false)
    }

    /// [`apply`](Self::apply) for a channel this node makes alone (a NATS
    /// node's own status, never in the stream): created as `local`, so a
    /// resume of it is always a resync.
    pub fn apply_local(&mut self, record: &Arc<FeedRecord>, now: u64) -> Option<Event> {
        self.apply_as(record, now, true)
    }

    fn apply_as(&mut self, record: &Arc<FeedRecord>, now: u64, local: bool) -> Option<Event> {
        if let Some(tap) = &self.replication {
            if let Err(size) = tap.fits(record) {
                let max_payload = tap.max_payload();
                self.drop_over_nats_payload(record, size, max_payload, now);
                return None;
            }
        }
        let Some(cell) = self.by_name.get(&record.channel).cloned() else {
            return self.create(record, now, local);
        };
        let mut channel = cell.lock();
        // Read under the lock, after the merge below would be just as good:
        // see `ChannelCell::attach` for why this loses no update.
        let subscribed = cell.attached() > 0;
        let applied = channel.apply(record, &mut self.state, &mut self.history, subscribed);
        let seq = channel.seq;
        drop(channel);
        let data_json = match applied {
            Ok(json) => json,
            Err(too_large) => {
                self.drop_too_large(record, too_large, now);
                return None;
            }
        };
        self.accepted(record, seq);
        let data_json = data_json.filter(|_| subscribed)?;
        let applied = Applied::new(cell, seq, record.clone(), data_json, now);
        Some(Event::Update(Arc::new(applied)))
    }

    /// Counts a record the stage accepted (applied to its channel, seq + 1)
    /// and offers it to the recorder, if one is on.
    fn accepted(&mut self, record: &Arc<FeedRecord>, seq: u64) {
        self.stats.updates_applied.fetch_add(1, Ordering::Relaxed);
        self.count_history();
        self.stats
            .state_bytes
            .store(self.state.used() as u64, Ordering::Relaxed);
        if let Some(tap) = &self.recorder {
            tap.offer(record);
        }
        if let Some(tap) = &self.replication {
            tap.offer(record, seq);
        }
    }

    /// A channel's first record creates it (seq 1).
    fn create(&mut self, record: &Arc<FeedRecord>, now: u64, local: bool) -> Option<Event> {
        if self.by_name.len() >= self.limits.max_channels {
            self.drop_past_max_channels(record, now);
            return None;
        }
        let policy = self.namespaces.policy(record.channel.namespace());
        let id = self.by_name.len();
        let cell = match ChannelCell::create(id, record, policy, &mut self.state, &mut self.history)
        {
            Ok(cell) => Arc::new(cell.made_here(local)),
            Err(too_large) => {
                self.drop_too_large(record, too_large, now);
                return None;
            }
        };
        self.accepted(record, 1);
        self.by_name.insert(record.channel.clone(), cell.clone());
        self.directory.insert(cell.clone());
        self.stats
            .channels
            .store(self.by_name.len() as u64, Ordering::Relaxed);
        Some(Event::Created {
            cell,
            first: record.clone(),
        })
    }
}
