//! The engine: every channel's state and seq, kept once, and every
//! subscription, spread over fanout shards.
//!
//! Two kinds of task (docs/architecture.md, "The data path"): one
//! [`StateStage`] applies every record once and hands each update that has
//! subscribers, shared by reference, to N [`Shard`]s over a second ring;
//! each shard owns the sessions `id mod N` and fans updates out to them
//! ([`task`]). Sessions reach their shard through a bounded command queue
//! ([`EngineHandle`]). Neither touches a socket or reads a clock: they turn
//! inputs (and the `now` the task passes in) into frames pushed onto each
//! session's outbox, so [`Engine`] can drive both as plain function calls
//! with a virtual clock.
//!
//! Where things live: [`cell`] (one channel: state, seq, history, snapshot
//! frames) and [`directory`] (every channel), [`patch`] (merge patches and
//! their composition), [`stage`] (applying records), [`fanout`] (an applied
//! update and its frames), [`shard`] (sessions and their deliveries),
//! [`index`] (who subscribed to what), [`delivery`] (one channel to one
//! session: filter, throttle, held diff), [`filter`], [`history`] and
//! [`resume`] (`since`), [`timers`] and [`flush`] (held diffs falling due),
//! [`policy`] (modes and history per namespace), [`task`] (the tasks and
//! their queues), [`ingest`] and [`size`] (bounds on what feeds make it
//! hold), [`options`] (what a subscribe asks for), [`stats`] (the
//! engine's counters).

pub mod cell;
pub mod delivery;
pub mod directory;
pub mod fanout;
pub mod filter;
mod flush;
pub mod history;
pub mod index;
pub mod ingest;
pub mod options;
pub mod patch;
pub mod policy;
mod resume;
pub mod shard;
pub mod size;
pub mod stage;
pub mod state_budget;
mod stats;
pub mod task;
pub mod timers;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::channel::Pattern;
use crate::outbox::Outbox;
use crate::record::{FeedRecord, JsonMap};
pub use directory::Directory;
pub use fanout::{Applied, Event};
pub use index::{ChannelId, SessionId};
pub use ingest::{DropReason, IngestLimits};
pub use options::SubscribeOptions;
pub use policy::{Mode, NamespacePolicy, Namespaces};
pub use shard::Shard;
pub use stage::{AtSeq, StateStage};
pub use stats::{EngineStats, StatsSnapshot};
pub use task::{
    channel, hand_off, run_shard, run_state, Command, EngineGone, EngineHandle, HandoffItem,
    HandoffProducer, ShardInputs,
};

/// Limits the engine enforces; see `config::Limits` for defaults and knobs.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    /// Most distinct names and patterns one session may hold.
    pub max_targets_per_session: usize,
    /// Most channels the server keeps; records for new channels past it are
    /// dropped and counted.
    pub max_channels: usize,
}

/// What connections hold because their sockets are behind (for `/stats`).
/// Bounded per connection by `limits.outbox_bytes` (queued and being
/// written; a single larger frame is let through an empty queue) plus one
/// held diff per channel, itself bounded by about twice the channel's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Bytes queued or being written, over all connections.
    pub queued_bytes: u64,
    /// The most any one connection has queued or in flight.
    pub largest_queued_bytes: u64,
    /// Held diffs (slow consumers and `max_hz`), and their size on the wire.
    pub held_diffs: u64,
    pub held_diff_bytes: u64,
    /// The largest single held diff.
    pub largest_held_diff_bytes: u64,
}

impl Backlog {
    /// Adds another shard's figures to these.
    pub fn add(&mut self, other: Backlog) {
        self.queued_bytes += other.queued_bytes;
        self.largest_queued_bytes = self.largest_queued_bytes.max(other.largest_queued_bytes);
        self.held_diffs += other.held_diffs;
        self.held_diff_bytes += other.held_diff_bytes;
        self.largest_held_diff_bytes = self
            .largest_held_diff_bytes
            .max(other.largest_held_diff_bytes);
    }
}

/// Name and seq of one channel, for `GET /channels`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    pub name: String,
    pub seq: u64,
}

/// One channel's state, for `GET /channels/<name>`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelSnapshot {
    pub channel: String,
    pub seq: u64,
    pub epoch: String,
    pub data: JsonMap,
}

/// Every channel with its seq, sorted by name (`GET /channels`).
pub fn channel_list(directory: &Directory) -> Vec<ChannelInfo> {
    let mut list: Vec<ChannelInfo> = directory
        .all()
        .iter()
        .map(|c| ChannelInfo {
            name: c.name.to_string(),
            seq: c.lock().seq,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

/// One channel's state and seq (`GET /channels/<name>`).
pub fn snapshot(directory: &Directory, epoch: &str, name: &str) -> Option<ChannelSnapshot> {
    let cell = directory.get(name)?;
    let channel = cell.lock();
    Some(ChannelSnapshot {
        channel: cell.name.to_string(),
        seq: channel.seq,
        epoch: epoch.to_owned(),
        data: channel.state.clone(),
    })
}

/// The whole engine as plain function calls, for tests and benches: one
/// state stage and `shards` fanout shards wired in-process. Each applied
/// record's hand-off goes to every shard at once, in order, as the task
/// wiring does through its ring; a session's calls go to its shard
/// (`session mod shards`), as its commands do.
pub struct Engine {
    epoch: Arc<str>,
    pub stage: StateStage,
    pub shards: Vec<Shard>,
}

impl Engine {
    /// One state stage and one shard; `stats` counts for both.
    pub fn new(epoch: Arc<str>, limits: EngineLimits, stats: Arc<EngineStats>) -> Self {
        Self::with_shards(epoch, limits, 1, |_| stats.clone())
    }

    /// One state stage and `shards` (at least 1) shards; shard `i` counts
    /// into `stats(i)`, the stage into `stats(shards)`.
    pub fn with_shards(
        epoch: Arc<str>,
        limits: EngineLimits,
        shards: usize,
        stats: impl Fn(usize) -> Arc<EngineStats>,
    ) -> Self {
        let shards = shards.max(1);
        let directory = Arc::new(Directory::default());
        let filters = Arc::new(Mutex::new(filter::FilterInterner::default()));
        let stage = StateStage::new(limits.clone(), stats(shards), directory.clone());
        let shards = (0..shards)
            .map(|i| {
                Shard::new(
                    epoch.clone(),
                    limits.clone(),
                    stats(i),
                    directory.clone(),
                    filters.clone(),
                )
            })
            .collect();
        Self {
            epoch,
            stage,
            shards,
        }
    }

    /// Sets the state, history and log bounds. Call before the first record.
    pub fn with_ingest_limits(mut self, limits: IngestLimits) -> Self {
        self.stage = self.stage.with_ingest_limits(limits);
        self
    }

    /// Sets the per-namespace policies (mode, history depth).
    pub fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.shards = std::mem::take(&mut self.shards)
            .into_iter()
            .map(|s| s.with_namespaces(namespaces.clone()))
            .collect();
        self.stage = self.stage.with_namespaces(namespaces);
        self
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn shard(&mut self, session: SessionId) -> &mut Shard {
        let n = self.shards.len() as u64;
        &mut self.shards[(session % n) as usize]
    }

    /// Applies one record and fans it out on every shard.
    pub fn apply(&mut self, record: &FeedRecord, now: u64) {
        self.apply_shared(&Arc::new(record.clone()), now);
    }

    /// [`apply`](Self::apply) for a record already shared (no copy).
    pub fn apply_shared(&mut self, record: &Arc<FeedRecord>, now: u64) {
        if let Some(event) = self.stage.apply(record, now) {
            for shard in &mut self.shards {
                shard.on_event(&event, now);
            }
        }
    }

    pub fn register(&mut self, session: SessionId, outbox: Arc<Outbox>) {
        self.shard(session).register(session, outbox);
    }

    pub fn deregister(&mut self, session: SessionId) {
        self.shard(session).deregister(session);
    }

    pub fn subscribe(
        &mut self,
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
        options: SubscribeOptions,
        now: u64,
    ) {
        self.shard(session)
            .subscribe(session, id, targets, options, now);
    }

    pub fn unsubscribe(&mut self, session: SessionId, id: Option<i64>, targets: Vec<Pattern>) {
        self.shard(session).unsubscribe(session, id, targets);
    }

    pub fn reply(&mut self, session: SessionId, frame: Bytes) {
        self.shard(session).reply(session, frame);
    }

    pub fn drained(&mut self, session: SessionId, now: u64) {
        self.shard(session).drained(session, now);
    }

    /// The earliest instant a held diff falls due on any shard.
    pub fn next_due(&self) -> Option<u64> {
        self.shards.iter().filter_map(Shard::next_due).min()
    }

    /// Sends every held diff due at `now`, on every shard.
    pub fn flush_due(&mut self, now: u64) {
        for shard in &mut self.shards {
            shard.flush_due(now);
        }
    }

    pub fn backlog(&self) -> Backlog {
        let mut total = Backlog::default();
        for shard in &self.shards {
            total.add(shard.backlog());
        }
        total
    }

    pub fn channel_list(&self) -> Vec<ChannelInfo> {
        channel_list(self.stage.directory())
    }

    pub fn snapshot(&self, name: &str) -> Option<ChannelSnapshot> {
        snapshot(self.stage.directory(), &self.epoch, name)
    }
}

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod tests {
    /// The engine depends on nothing session-side (it pushes to
    /// `crate::outbox` and takes `SubscribeOptions` of its own), so the
    /// dependency between the two runs one way.
    #[test]
    fn the_engine_does_not_import_the_session_module() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/engine");
        // Spelled in pieces so that this file does not match itself.
        let (absolute, relative) = (
            ["crate", "::session"].concat(),
            ["super::super", "::session"].concat(),
        );
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains(&absolute) && !text.contains(&relative),
                "{} imports the session module",
                path.display()
            );
        }
    }
}
