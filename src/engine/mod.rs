//! The engine: owns every channel's state and seq, and every subscription.
//!
//! One task owns an [`Engine`] ([`task::run`]); feeds reach it through the
//! ring and sessions through a bounded command queue ([`EngineHandle`]). It
//! never touches a socket or reads a clock: it turns inputs (and the `now`
//! the task passes in) into frames pushed onto each session's [`Outbox`], so
//! it can be tested as plain function calls with a virtual clock.
//!
//! Where things live: [`state`] (a channel, merge patches and their
//! composition), [`index`] (who subscribed to what), [`fanout`] (an update
//! into shared frames), [`delivery`] (one channel to one session: filter,
//! throttle, held diff), [`filter`], [`history`] and [`resume`] (`since`),
//! [`timers`] and [`flush`] (held diffs falling due), [`policy`] (modes and
//! history per namespace), [`task`] (the task and its command queue),
//! [`ingest`] and [`size`] (bounds on what feeds make it hold).

pub mod delivery;
pub mod fanout;
pub mod filter;
mod flush;
pub mod history;
pub mod index;
pub mod ingest;
pub mod policy;
mod resume;
pub mod size;
pub mod state;
pub mod task;
pub mod timers;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::channel::{ChannelName, Pattern};
use crate::feed::log_budget::LogBudget;
use crate::record::{FeedRecord, JsonMap};
use crate::session::outbox::{Outbox, QueuedFrame};
use crate::session::protocol::SubscribeOptions;
use crate::wire::{self, CloseCode, ErrorCode};
use delivery::pending_limit;
use fanout::UpdateFrames;
use filter::FilterInterner;
use history::HistoryBudget;
pub use index::{ChannelId, SessionId};
use index::{DeliveryOptions, SessionEntry, Target, TargetIndex};
pub use ingest::{DropReason, IngestLimits};
pub use policy::{Mode, NamespacePolicy, Namespaces};
use state::Channel;
pub use task::{channel, run, Command, EngineGone, EngineHandle, ShardInputs};
use timers::Timers;

/// Limits the engine enforces; see `config::Limits` for defaults and knobs.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    /// Most distinct names and patterns one session may hold.
    pub max_targets_per_session: usize,
    /// Most channels the server keeps; records for new channels past it are
    /// dropped and counted.
    pub max_channels: usize,
}

/// Counters the engine updates and /metrics reads.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub updates_applied: AtomicU64,
    pub frames_queued: AtomicU64,
    pub bytes_queued: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    /// Times a merge-channel subscriber's queue was full and its diffs were
    /// held back until the socket drained (coalescing, no close).
    pub slow_consumer_holds: AtomicU64,
    /// Diffs merged into a pending diff (throttling, slow consumers).
    pub coalesced_diffs: AtomicU64,
    pub records_dropped_channel_limit: AtomicU64,
    pub records_dropped_state_size: AtomicU64,
    /// Bytes of resume history held (patches + per-entry overhead).
    pub history_bytes: AtomicU64,
    /// History entries forgotten, or never kept, for `max_history_bytes`.
    pub history_trimmed: AtomicU64,
    pub channels: AtomicU64,
    pub sessions: AtomicU64,
    pub subscriptions: AtomicU64,
}

/// The engine's counters at one moment, added up over the shards.
///
/// Every shard applies every record, so the per-channel counters (updates,
/// channels, records dropped, history) are the same in each and are taken
/// from the first (history bytes are per shard: the total held is that
/// times the shard count); the per-session ones are summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub updates_applied: u64,
    pub frames_queued: u64,
    pub bytes_queued: u64,
    pub frames_encoded: u64,
    pub slow_consumer_closes: u64,
    pub slow_consumer_holds: u64,
    pub coalesced_diffs: u64,
    pub records_dropped_channel_limit: u64,
    pub records_dropped_state_size: u64,
    pub history_bytes: u64,
    pub history_trimmed: u64,
    pub channels: u64,
    pub sessions: u64,
    pub subscriptions: u64,
}

impl StatsSnapshot {
    /// Records dropped for `reason`.
    pub fn records_dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::MaxChannels => self.records_dropped_channel_limit,
            DropReason::MaxStateBytes => self.records_dropped_state_size,
        }
    }

    pub fn total(shards: &[Arc<EngineStats>]) -> Self {
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let sum = |field: fn(&EngineStats) -> &AtomicU64| {
            shards.iter().map(|s| load(field(s))).sum::<u64>()
        };
        let first =
            |field: fn(&EngineStats) -> &AtomicU64| shards.first().map_or(0, |s| load(field(s)));
        Self {
            updates_applied: first(|s| &s.updates_applied),
            frames_queued: sum(|s| &s.frames_queued),
            bytes_queued: sum(|s| &s.bytes_queued),
            frames_encoded: sum(|s| &s.frames_encoded),
            slow_consumer_closes: sum(|s| &s.slow_consumer_closes),
            slow_consumer_holds: sum(|s| &s.slow_consumer_holds),
            coalesced_diffs: sum(|s| &s.coalesced_diffs),
            records_dropped_channel_limit: first(|s| &s.records_dropped_channel_limit),
            records_dropped_state_size: first(|s| &s.records_dropped_state_size),
            history_bytes: first(|s| &s.history_bytes),
            history_trimmed: first(|s| &s.history_trimmed),
            channels: first(|s| &s.channels),
            sessions: sum(|s| &s.sessions),
            subscriptions: sum(|s| &s.subscriptions),
        }
    }
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

pub struct Engine {
    epoch: Arc<str>,
    limits: EngineLimits,
    namespaces: Namespaces,
    stats: Arc<EngineStats>,
    channels: Vec<Channel>,
    by_name: HashMap<ChannelName, ChannelId>,
    sessions: HashMap<SessionId, SessionEntry>,
    index: TargetIndex,
    filters: FilterInterner,
    timers: Timers,
    /// Counts subscribes, so the latest one covering a channel wins.
    generation: u64,
    ingest: IngestLimits,
    history: HistoryBudget,
    /// Whether this shard logs dropped records (one shard does: all drop
    /// the same ones), and how many it may.
    logs_drops: bool,
    drop_log: LogBudget,
}

impl Engine {
    pub fn new(epoch: Arc<str>, limits: EngineLimits, stats: Arc<EngineStats>) -> Self {
        Self {
            epoch,
            limits,
            namespaces: Namespaces::default(),
            stats,
            channels: Vec::new(),
            by_name: HashMap::new(),
            sessions: HashMap::new(),
            index: TargetIndex::default(),
            filters: FilterInterner::default(),
            timers: Timers::default(),
            generation: 0,
            ingest: IngestLimits::default(),
            history: HistoryBudget::new(IngestLimits::default().max_history_bytes),
            logs_drops: true,
            drop_log: IngestLimits::default().log_budget(),
        }
    }

    /// Sets the state, history and log bounds (the defaults otherwise).
    /// Call before the first record.
    pub fn with_ingest_limits(mut self, limits: IngestLimits) -> Self {
        self.ingest = limits;
        self.history = HistoryBudget::new(limits.max_history_bytes);
        self.drop_log = limits.log_budget();
        self
    }

    /// Whether this shard logs the records it drops (counted either way).
    pub fn logging_drops(mut self, logs: bool) -> Self {
        self.logs_drops = logs;
        self
    }

    /// Sets the per-namespace policies (mode, history depth). Channels that
    /// already exist keep the policy they were created with.
    pub fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn register(&mut self, session: SessionId, outbox: Arc<Outbox>) {
        self.sessions.insert(
            session,
            SessionEntry {
                outbox,
                targets: Vec::new(),
                attached: HashSet::new(),
            },
        );
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    /// Forgets a session and everything it was subscribed to.
    pub fn deregister(&mut self, session: SessionId) {
        let Some(entry) = self.sessions.remove(&session) else {
            return;
        };
        for target in &entry.targets {
            self.index.remove(&target.pattern, session);
        }
        for cid in entry.attached {
            self.remove_delivery(cid, session);
        }
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        self.count_subscriptions();
    }

    /// Takes `session` off `cid`'s list, cancelling any held diff's timer.
    fn remove_delivery(&mut self, cid: ChannelId, session: SessionId) {
        let subscribers = &mut self.channels[cid].subscribers;
        if let Some(pos) = subscribers.iter().position(|d| d.session == session) {
            let delivery = subscribers.swap_remove(pos);
            if let Some(due) = delivery.due_ns() {
                self.timers.disarm(due, cid, session);
            }
        }
    }

    /// Stops delivering `cid` to `session`.
    fn detach(&mut self, session: SessionId, cid: ChannelId) {
        if let Some(entry) = self.sessions.get_mut(&session) {
            if entry.attached.remove(&cid) {
                self.remove_delivery(cid, session);
            }
        }
    }

    /// What this shard's connections hold back; walks every session and
    /// subscription, so it is for occasional questions like `/stats`.
    pub fn backlog(&self) -> Backlog {
        let mut backlog = Backlog::default();
        for entry in self.sessions.values() {
            let bytes = entry.outbox.backlog_bytes() as u64;
            backlog.queued_bytes += bytes;
            backlog.largest_queued_bytes = backlog.largest_queued_bytes.max(bytes);
        }
        let held = self
            .channels
            .iter()
            .flat_map(|c| &c.subscribers)
            .filter_map(|d| d.pending.as_ref());
        for pending in held {
            let bytes = pending.held_bytes() as u64;
            backlog.held_diffs += 1;
            backlog.held_diff_bytes += bytes;
            backlog.largest_held_diff_bytes = backlog.largest_held_diff_bytes.max(bytes);
        }
        backlog
    }

    fn count_subscriptions(&self) {
        let total: usize = self.sessions.values().map(|s| s.targets.len()).sum();
        self.stats
            .subscriptions
            .store(total as u64, Ordering::Relaxed);
    }

    /// Applies one feed record: merge, seq + 1, fan out. `now` is the
    /// caller's monotonic clock (`Metrics::mono_ns`): it decides what a
    /// throttled subscription may send, and is stamped on queued frames for
    /// the latency histograms.
    pub fn apply(&mut self, record: &FeedRecord, now: u64) {
        let cid = match self.by_name.get(&record.channel) {
            Some(&cid) => cid,
            None => return self.create_channel(record, now),
        };
        let channel = &mut self.channels[cid];
        let applied = channel.apply(record, self.ingest.max_state_bytes, &mut self.history);
        let data_json = match applied {
            Ok(json) => {
                self.stats.updates_applied.fetch_add(1, Ordering::Relaxed);
                self.count_history();
                json
            }
            Err(too_large) => return self.drop_too_large(record, too_large, now),
        };
        let Some(data_json) = data_json else {
            return;
        };
        let channel = &mut self.channels[cid];
        if channel.subscribers.is_empty() {
            return;
        }
        let Channel {
            name,
            state,
            seq,
            mode,
            subscribers,
            ..
        } = channel;
        let mode = *mode;
        let seq = *seq;
        let ts = record.ingest_ns;
        let mut frames = UpdateFrames::new(name.as_str(), seq, ts, &record.data, &data_json);
        // Measured at most once per update, and only if a held diff grows big.
        let mut state_len = None;
        let mut slow = Vec::new();
        let (mut queued, mut bytes, mut held) = (0u64, 0u64, 0u64);
        for delivery in subscribers.iter_mut() {
            let Some((part, len)) = frames.part(&delivery.filter) else {
                // Touches none of its fields: nothing to send, and its
                // `last_sent` stays, so the next `prev` still chains.
                continue;
            };
            if delivery.must_hold(now) {
                let bound = || {
                    pending_limit(*state_len.get_or_insert_with(|| delivery::serialized_len(state)))
                };
                if delivery.hold(part, len, ts, bound) {
                    let due = delivery.due_ns().expect("a held diff has a due time");
                    self.timers.arm(due, cid, delivery.session);
                }
                held += 1;
                continue;
            }
            let frame = frames.frame(&delivery.filter, delivery.last_sent);
            let len = frame.len() as u64;
            let timed = QueuedFrame {
                bytes: frame,
                ingest_ns: ts,
                queued_ns: now,
            };
            if delivery.outbox.push(timed) {
                delivery.sent(seq, now);
                queued += 1;
                bytes += len;
            } else if mode == Mode::Stream {
                // Every update or none: a stream subscriber that cannot
                // keep up is closed (1013) and resumes with `since`.
                slow.push(delivery.session);
            } else {
                // A merge subscriber whose queue is full: hold this update
                // and every later one in one pending diff per channel, sent
                // when its socket drains. Memory stays bounded (the queue,
                // plus one diff per channel that turns into a snapshot past
                // its bound) and `prev` still chains.
                let (part, len) = frames
                    .part(&delivery.filter)
                    .expect("this update touches the delivery's fields");
                let bound = || {
                    pending_limit(*state_len.get_or_insert_with(|| delivery::serialized_len(state)))
                };
                delivery.hold(part, len, ts, bound);
                if let Some(due) = delivery.due_ns() {
                    self.timers.arm(due, cid, delivery.session);
                }
                self.stats
                    .slow_consumer_holds
                    .fetch_add(1, Ordering::Relaxed);
                held += 1;
            }
        }
        let stats = &self.stats;
        stats.frames_queued.fetch_add(queued, Ordering::Relaxed);
        stats.bytes_queued.fetch_add(bytes, Ordering::Relaxed);
        stats.coalesced_diffs.fetch_add(held, Ordering::Relaxed);
        stats
            .frames_encoded
            .fetch_add(frames.encoded() as u64, Ordering::Relaxed);
        for session in slow {
            self.close_slow(session);
        }
    }

    /// A channel's first record creates it (seq 1) and starts every matching
    /// session on it with a snapshot.
    fn create_channel(&mut self, record: &FeedRecord, now: u64) {
        if self.channels.len() >= self.limits.max_channels {
            return self.drop_past_max_channels(record, now);
        }
        let policy = self.namespaces.policy(record.channel.namespace());
        let max_state_bytes = self.ingest.max_state_bytes;
        let channel = match Channel::create(record, policy, max_state_bytes, &mut self.history) {
            Ok(channel) => channel,
            Err(too_large) => return self.drop_too_large(record, too_large, now),
        };
        self.stats.updates_applied.fetch_add(1, Ordering::Relaxed);
        self.count_history();
        let cid = self.channels.len();
        self.channels.push(channel);
        self.by_name.insert(record.channel.clone(), cid);
        self.stats
            .channels
            .store(self.channels.len() as u64, Ordering::Relaxed);
        for session in self.index.sessions_for(&record.channel) {
            let options = self
                .sessions
                .get(&session)
                .and_then(|entry| entry.options_for(&record.channel));
            if let Some(options) = options {
                self.attach(session, cid, &options, resume::Start::Snapshot, now);
            }
        }
    }

    /// A session whose queue is full is closed with 1013 rather than
    /// silently skipped: its client resumes with `since`.
    ///
    /// What is already queued still goes out before the close (it is a
    /// prefix of every chain, and bounded by the queue): a client that reads
    /// slowly then resumes from further on. Were it dropped, a resume whose
    /// answers overflow the queue would be dropped and refused again on
    /// every retry, never making progress.
    fn close_slow(&mut self, session: SessionId) {
        if let Some(entry) = self.sessions.get(&session) {
            tracing::info!(session, "closing slow consumer (outbound queue full)");
            entry.outbox.close(
                wire::close(
                    CloseCode::TryAgainLater,
                    "slow consumer: outbound queue full",
                ),
                false,
            );
            self.stats
                .slow_consumer_closes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.deregister(session);
    }

    /// Queues a reply frame in order with everything else for the session.
    pub fn reply(&mut self, session: SessionId, frame: Bytes) {
        if let Some(entry) = self.sessions.get(&session) {
            if !entry.outbox.push(frame) {
                self.close_slow(session);
            }
        }
    }

    /// Subscribes `session` to `targets` with `options`, then starts every
    /// existing channel they cover: a snapshot, or from `since` a replay.
    pub fn subscribe(
        &mut self,
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
        options: SubscribeOptions,
        now: u64,
    ) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        let new = targets.iter().filter(|t| !entry.has_target(t)).count();
        if entry.targets.len() + new > self.limits.max_targets_per_session {
            let message = format!(
                "at most {} channels and patterns per connection (limits.max_subscriptions_per_connection)",
                self.limits.max_targets_per_session
            );
            return self.reply(session, wire::error(id, ErrorCode::Limit, &message));
        }
        if options.max_hz.is_some() {
            if let Some(namespace) = self.stream_namespace_named(&targets) {
                let message = format!(
                    "max_hz is not available on stream channels (namespace {namespace:?} is stream: every update is delivered)"
                );
                return self.reply(session, wire::error(id, ErrorCode::Unsupported, &message));
            }
        }
        self.generation += 1;
        let delivery_options = Arc::new(DeliveryOptions {
            filter: options.fields.as_deref().map(|f| self.filters.intern(f)),
            max_hz: options.max_hz,
            generation: self.generation,
        });
        let entry = self.sessions.get_mut(&session).expect("checked above");
        let names: Vec<String> = targets.iter().map(|t| t.as_str().to_owned()).collect();
        let reply = wire::channels_reply("subscribed", id, &names);
        let mut covered = Vec::new();
        for target in targets {
            if target.is_wildcard() {
                covered.extend(
                    self.channels
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| target.matches(&c.name))
                        .map(|(cid, _)| cid),
                );
            } else if let Some(&cid) = self.by_name.get(target.as_str()) {
                covered.push(cid);
            }
            // The latest subscribe naming a target sets its options.
            match entry.targets.iter_mut().find(|t| t.pattern == target) {
                Some(existing) => existing.options = delivery_options.clone(),
                None => {
                    self.index.add(&target, session);
                    entry.targets.push(Target {
                        pattern: target,
                        options: delivery_options.clone(),
                    });
                }
            }
        }
        let replied = entry.outbox.push(reply);
        self.count_subscriptions();
        if !replied {
            return self.close_slow(session);
        }
        covered.sort_unstable();
        covered.dedup();
        let epoch_matches = options.epoch.as_deref() == Some(&*self.epoch);
        let filter = &delivery_options.filter;
        let mut plans: Vec<resume::Plan> = covered
            .into_iter()
            .map(|cid| {
                let since = options.since.get(self.channels[cid].name.as_str());
                let start = resume::Start::from_request(since.copied(), epoch_matches);
                self.plan(cid, filter, start)
            })
            .collect();
        let outbox = &self.sessions[&session].outbox;
        let room = outbox.limit_bytes().saturating_sub(outbox.queued_bytes());
        self.fit(&mut plans, room, filter);
        for plan in plans {
            if !self.start(session, plan, &delivery_options, now) {
                return;
            }
        }
    }

    /// The stream-mode namespace a target names literally, if any. Targets
    /// whose first segment is a wildcard span namespaces; `max_hz` applies
    /// to their merge channels only.
    fn stream_namespace_named<'a>(&self, targets: &'a [Pattern]) -> Option<&'a str> {
        targets
            .iter()
            .filter_map(|t| t.as_str().split('.').next())
            .filter(|ns| *ns != "*" && *ns != ">")
            .find(|ns| self.namespaces.policy(ns).mode == Mode::Stream)
    }

    pub fn unsubscribe(&mut self, session: SessionId, id: Option<i64>, targets: Vec<Pattern>) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        for target in &targets {
            if let Some(pos) = entry.targets.iter().position(|t| t.pattern == *target) {
                entry.targets.swap_remove(pos);
                self.index.remove(target, session);
            }
        }
        // A channel stays (with the options it has) while any remaining
        // target still covers it.
        let orphaned: Vec<ChannelId> = entry
            .attached
            .iter()
            .copied()
            .filter(|&cid| {
                let name = &self.channels[cid].name;
                !entry.targets.iter().any(|t| t.pattern.matches(name))
            })
            .collect();
        for cid in orphaned {
            self.detach(session, cid);
        }
        self.count_subscriptions();
        let names: Vec<String> = targets.iter().map(|t| t.as_str().to_owned()).collect();
        self.reply(session, wire::channels_reply("unsubscribed", id, &names));
    }

    pub fn channel_list(&self) -> Vec<ChannelInfo> {
        let mut list: Vec<ChannelInfo> = self
            .channels
            .iter()
            .map(|c| ChannelInfo {
                name: c.name.to_string(),
                seq: c.seq,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub fn snapshot(&self, name: &str) -> Option<ChannelSnapshot> {
        let channel = &self.channels[*self.by_name.get(name)?];
        Some(ChannelSnapshot {
            channel: channel.name.to_string(),
            seq: channel.seq,
            epoch: self.epoch.to_string(),
            data: channel.state.clone(),
        })
    }

    /// Ends every session with `close` (used at shutdown).
    pub fn close_all(&mut self, close: Bytes) {
        for entry in self.sessions.values() {
            entry.outbox.close(close.clone(), false);
        }
    }
}
