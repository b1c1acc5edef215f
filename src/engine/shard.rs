//! A fanout shard: owns its sessions (session id modulo the shard count),
//! their targets, deliveries, rate limits, held diffs and timers, and turns
//! the updates the state stage hands off into frames on their outboxes.
//!
//! A shard keeps no channel state of its own: it reads the shared
//! [`ChannelCell`]s when it starts a delivery (snapshot or resume) or
//! flushes a held diff as a snapshot, and otherwise works from the
//! [`Applied`] updates it is handed. Its memory is its sessions' delivery
//! state only: deliveries are kept per channel that has subscribers on this
//! shard, not per channel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::cell::ChannelCell;
use super::delivery::{pending_limit, Delivery};
use super::directory::Directory;
use super::fanout::{Applied, Event, UpdateFrames};
use super::filter::SharedFilters;
use super::index::{DeliveryOptions, SessionEntry, Target, TargetIndex};
use super::options::SubscribeOptions;
use super::policy::{Mode, Namespaces};
use super::resume::{self, Plan};
use super::timers::Timers;
use super::{Backlog, ChannelId, EngineLimits, EngineStats, SessionId};
use crate::channel::Pattern;
use crate::outbox::{Outbox, QueuedFrame};
use crate::record::FeedRecord;
use crate::shutdown::RestartNotice;
use crate::wire::{self, CloseCode, ErrorCode};

/// The deliveries of one channel on one shard.
pub(super) struct Deliveries {
    pub cell: Arc<ChannelCell>,
    pub list: Vec<Delivery>,
}

impl Deliveries {
    pub fn get_mut(&mut self, session: SessionId) -> Option<&mut Delivery> {
        self.list.iter_mut().find(|d| d.session == session)
    }
}

pub struct Shard {
    pub(super) epoch: Arc<str>,
    pub(super) limits: EngineLimits,
    namespaces: Namespaces,
    pub(super) stats: Arc<EngineStats>,
    directory: Arc<Directory>,
    filters: SharedFilters,
    /// Boxed entries: the table keeps about 1.6 slots per session (it
    /// doubles at 7/8 full), so a slot is 16 bytes rather than the entry's
    /// 72 (docs/benchmarks.md, memory).
    pub(super) sessions: HashMap<SessionId, Box<SessionEntry>>,
    index: TargetIndex,
    /// Only channels with a delivery on this shard.
    pub(super) deliveries: HashMap<ChannelId, Deliveries>,
    pub(super) timers: Timers,
    /// Counts subscribes, so the latest one covering a channel wins.
    generation: u64,
    /// The close frames sent at shutdown.
    restart: RestartNotice,
    /// Runs right after a subscribe has read a cell: lets a test apply a
    /// record at the worst moment of the subscribe race.
    #[cfg(test)]
    pub(super) race_hook: RaceHook,
}

/// A test's callback into the middle of a subscribe.
#[cfg(test)]
#[derive(Default)]
pub(super) struct RaceHook(std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>);

#[cfg(test)]
impl RaceHook {
    pub fn set(&self, hook: impl FnMut() + Send + 'static) {
        *self.0.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn run(&self) {
        if let Some(hook) = self.0.lock().unwrap().as_mut() {
            hook();
        }
    }
}

impl Shard {
    pub fn new(
        epoch: Arc<str>,
        limits: EngineLimits,
        stats: Arc<EngineStats>,
        directory: Arc<Directory>,
        filters: SharedFilters,
    ) -> Self {
        Self {
            epoch,
            limits,
            namespaces: Namespaces::default(),
            stats,
            directory,
            filters,
            sessions: HashMap::new(),
            index: TargetIndex::default(),
            deliveries: HashMap::new(),
            timers: Timers::default(),
            generation: 0,
            restart: RestartNotice::default(),
            #[cfg(test)]
            race_hook: RaceHook::default(),
        }
    }

    /// How sessions are told to come back after a shutdown.
    pub fn with_restart_notice(mut self, restart: RestartNotice) -> Self {
        self.restart = restart;
        self
    }

    /// The per-namespace policies (for refusing `max_hz` on stream namespaces).
    pub fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    pub fn register(&mut self, session: SessionId, outbox: Arc<Outbox>) {
        self.sessions.insert(
            session,
            Box::new(SessionEntry {
                outbox,
                targets: Vec::new(),
                attached: HashSet::default(),
            }),
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

    /// Starts a delivery of `cell` to `session` if it has none (counting it
    /// on the cell BEFORE anything reads the cell's state for it: see
    /// `ChannelCell::attach`). Its chain position is set by [`Self::start`].
    pub(super) fn ensure_delivery(&mut self, session: SessionId, cell: &Arc<ChannelCell>) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if !entry.attached.insert(cell.id) {
            return;
        }
        cell.attach();
        let outbox = entry.outbox.clone();
        self.deliveries
            .entry(cell.id)
            .or_insert_with(|| Deliveries {
                cell: cell.clone(),
                list: Vec::new(),
            })
            .list
            .push(Delivery::new(session, outbox, 0));
    }

    /// Takes `session` off `cid`'s list, cancelling any held diff's timer.
    fn remove_delivery(&mut self, cid: ChannelId, session: SessionId) {
        let Some(channel) = self.deliveries.get_mut(&cid) else {
            return;
        };
        if let Some(pos) = channel.list.iter().position(|d| d.session == session) {
            let delivery = channel.list.swap_remove(pos);
            channel.cell.detach();
            if let Some(due) = delivery.due_ns() {
                self.timers.disarm(due, cid, session);
            }
        }
        if channel.list.is_empty() {
            self.deliveries.remove(&cid);
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
            .deliveries
            .values()
            .flat_map(|c| &c.list)
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

    /// Handles one event from the state stage. `now` is the caller's
    /// monotonic clock (`Metrics::mono_ns`): it decides what a throttled
    /// subscription may send, and is stamped on queued frames for the
    /// latency histograms. Returns whether this shard fanned an update out
    /// (had deliveries for it).
    pub fn on_event(&mut self, event: &Event, now: u64) -> bool {
        match event {
            Event::Update(applied) => self.fan_out(applied, now),
            Event::Created { cell, first } => {
                self.channel_created(cell, first, now);
                false
            }
            Event::Replaced(cell) => {
                self.channel_replaced(cell, now);
                false
            }
        }
    }

    /// `cell`'s state was replaced (a NATS edge skipped records it could
    /// not get): every delivery of it gets a `resync` snapshot of the new
    /// state, as a client resuming from a position the server cannot
    /// replay does (PROTOCOL.md, `since`), and its chain goes on from
    /// there. A held diff is dropped (the snapshot carries it). A delivery
    /// that started from the new state already has nothing to learn. A
    /// queue too full for the snapshot closes the session (1013): its
    /// client resumes with `since` and, the history being gone, gets the
    /// resync then.
    fn channel_replaced(&mut self, cell: &Arc<ChannelCell>, now: u64) {
        let Some(channel) = self.deliveries.get_mut(&cell.id) else {
            return;
        };
        let mut slow = Vec::new();
        for delivery in channel.list.iter_mut() {
            let (frame, seq) = {
                let mut state = cell.lock();
                if delivery.current >= state.seq {
                    continue;
                }
                let deflate = delivery.outbox.deflate();
                let name = cell.name.as_str();
                let frame =
                    state.snapshot_frame(name, &self.epoch, &delivery.filter, true, deflate);
                (frame, state.seq)
            };
            if let Some(due) = delivery.due_ns() {
                self.timers.disarm(due, cell.id, delivery.session);
            }
            delivery.discard_pending();
            delivery.current = seq;
            let len = frame.len() as u64;
            let frame = QueuedFrame {
                bytes: frame,
                ingest_ns: 0,
                queued_ns: now,
            };
            if delivery.outbox.push(frame) {
                delivery.sent(seq, now);
                self.stats.frames_queued.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_queued.fetch_add(len, Ordering::Relaxed);
            } else {
                slow.push(delivery.session);
            }
        }
        for session in slow {
            self.close_slow(session);
        }
    }

    /// Puts one update on the outbox of every delivery of its channel on
    /// this shard (or folds it into their held diffs).
    fn fan_out(&mut self, applied: &Applied, now: u64) -> bool {
        let Shard {
            deliveries,
            timers,
            stats,
            ..
        } = self;
        let Some(channel) = deliveries.get_mut(&applied.cell.id) else {
            return false;
        };
        let cid = applied.cell.id;
        let mode = applied.cell.mode;
        let (seq, ts) = (applied.seq, applied.ts);
        let mut frames = UpdateFrames::new(applied);
        // Looked up at most once per update, and only if a held diff grows big.
        let mut state_len = None;
        let mut bound =
            || pending_limit(*state_len.get_or_insert_with(|| applied.cell.lock().state_len));
        let mut slow = Vec::new();
        let (mut queued, mut bytes, mut held, mut deflated) = (0u64, 0u64, 0u64, 0u64);
        for delivery in channel.list.iter_mut() {
            if seq <= delivery.current {
                // Already in the snapshot or replay this delivery started from.
                continue;
            }
            delivery.current = seq;
            let Some((part, len)) = frames.part(&delivery.filter) else {
                // Touches none of its fields: nothing to send, and its
                // `last_sent` stays, so the next `prev` still chains.
                continue;
            };
            if delivery.must_hold(now) {
                if delivery.hold(part, len, ts, seq, &mut bound) {
                    let due = delivery.due_ns().expect("a held diff has a due time");
                    timers.arm(due, cid, delivery.session);
                }
                held += 1;
                continue;
            }
            let frame = frames.frame_for(&delivery.filter, delivery.last_sent, &delivery.outbox);
            let len = frame.len() as u64;
            let rsv1 = frame[0] & 0x40 != 0;
            let timed = QueuedFrame {
                bytes: frame,
                ingest_ns: ts,
                queued_ns: now,
            };
            if delivery.outbox.push(timed) {
                delivery.sent(seq, now);
                queued += 1;
                bytes += len;
                deflated += u64::from(rsv1);
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
                delivery.hold(part, len, ts, seq, &mut bound);
                if let Some(due) = delivery.due_ns() {
                    timers.arm(due, cid, delivery.session);
                }
                stats.slow_consumer_holds.fetch_add(1, Ordering::Relaxed);
                held += 1;
            }
        }
        // Shared counters: skip the writes that would add nothing.
        for (counter, n) in [
            (&stats.frames_queued, queued),
            (&stats.bytes_queued, bytes),
            (&stats.coalesced_diffs, held),
            (&stats.frames_encoded, frames.encoded() as u64),
            (&stats.frames_deflated, deflated),
            (&stats.frames_compressed, frames.compressed() as u64),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        for session in slow {
            self.close_slow(session);
        }
        true
    }

    /// A channel appeared: start every session of this shard whose targets
    /// cover it from its first record (those that already found it in the
    /// directory when they subscribed are started already).
    fn channel_created(&mut self, cell: &Arc<ChannelCell>, first: &FeedRecord, now: u64) {
        for session in self.index.sessions_for(&cell.name) {
            let Some(entry) = self.sessions.get(&session) else {
                continue;
            };
            if entry.attached.contains(&cell.id) {
                continue;
            }
            let deflate = entry.outbox.deflate();
            if let Some(options) = entry.options_for(&cell.name) {
                self.ensure_delivery(session, cell);
                let plan = self.plan_from_first(cell, first, &options.filter, deflate);
                self.start(session, plan, &options, now);
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
    pub(super) fn close_slow(&mut self, session: SessionId) {
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
        let filter = options.fields.as_deref().map(|f| {
            self.filters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .intern(f)
        });
        let delivery_options = Arc::new(DeliveryOptions {
            filter,
            max_hz: options.max_hz,
            generation: self.generation,
        });
        let entry = self.sessions.get_mut(&session).expect("checked above");
        let names: Vec<String> = targets.iter().map(|t| t.as_str().to_owned()).collect();
        let reply = wire::channels_reply("subscribed", id, &names);
        // Exactly the room needed: a first push would reserve four targets
        // (128 bytes), and most sessions keep one or two.
        entry.targets.reserve_exact(new);
        let mut covered: Vec<Arc<ChannelCell>> = Vec::new();
        for target in targets {
            covered.extend(self.directory.matching(&target));
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
        covered.sort_unstable_by_key(|c| c.id);
        covered.dedup_by_key(|c| c.id);
        // Counted on each cell before its state is read (ChannelCell::attach).
        for cell in &covered {
            self.ensure_delivery(session, cell);
        }
        let epoch_matches = options.epoch.as_deref() == Some(&*self.epoch);
        let filter = &delivery_options.filter;
        let deflate = self.sessions[&session].outbox.deflate();
        let mut plans: Vec<Plan> = covered
            .iter()
            .map(|cell| {
                let since = options.since.get(cell.name.as_str());
                let start = resume::Start::from_request(since.copied(), epoch_matches);
                self.plan(cell, filter, start, deflate)
            })
            .collect();
        let outbox = &self.sessions[&session].outbox;
        let room = outbox.limit_bytes().saturating_sub(outbox.queued_bytes());
        self.fit(&mut plans, room, filter, deflate);
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
        let deliveries = &self.deliveries;
        let orphaned: Vec<ChannelId> = entry
            .attached
            .iter()
            .copied()
            .filter(|cid| {
                deliveries.get(cid).is_none_or(|d| {
                    !entry
                        .targets
                        .iter()
                        .any(|t| t.pattern.matches(&d.cell.name))
                })
            })
            .collect();
        for cid in orphaned {
            self.detach(session, cid);
        }
        self.count_subscriptions();
        let names: Vec<String> = targets.iter().map(|t| t.as_str().to_owned()).collect();
        self.reply(session, wire::channels_reply("unsubscribed", id, &names));
    }

    /// Unsubscribes `session` from every target `allows` refuses (a
    /// narrower refreshed token), telling the client with an `unsubscribed`
    /// without an id; nothing if all are still allowed.
    pub fn revoke(&mut self, session: SessionId, allows: &dyn Fn(&Pattern) -> bool) {
        let Some(entry) = self.sessions.get(&session) else {
            return;
        };
        let refused: Vec<Pattern> = entry
            .targets
            .iter()
            .filter(|t| !allows(&t.pattern))
            .map(|t| t.pattern.clone())
            .collect();
        if !refused.is_empty() {
            self.unsubscribe(session, None, refused);
        }
    }

    /// Ends every session at shutdown: what is queued goes out first, then
    /// close 1001 with a reconnect delay of the session's own
    /// ([`RestartNotice`]).
    pub fn close_all(&mut self) {
        let mut rng = rand::thread_rng();
        for entry in self.sessions.values() {
            entry
                .outbox
                .close(self.restart.close_frame(&mut rng), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::FutureExt;
    use serde_json::{json, Value};

    use super::*;
    use crate::channel::ChannelName;
    use crate::engine::filter::FilterInterner;
    use crate::engine::stage::StateStage;
    use crate::engine::EngineStats;
    use crate::record::FeedRecord;

    fn record(n: u64) -> Arc<FeedRecord> {
        let Value::Object(data) = json!({ format!("u{n}"): n }) else {
            unreachable!()
        };
        Arc::new(FeedRecord {
            channel: ChannelName::new("q.A").unwrap(),
            data,
            ts: None,
            ingest_ns: n,
        })
    }

    /// The subscribe race at its worst moment, made deterministic: the
    /// state stage applies a record right after the subscribing shard read
    /// the channel's state. Because the shard counted its delivery before
    /// reading, the stage hands that record off and the subscriber gets it
    /// (snapshot at 1, then 2 and 3 in chain). Counting after reading (the
    /// order this guards against) loses seq 2: the subscriber would get
    /// seq 3 with prev 1, and a state without `u2`.
    #[test]
    fn a_record_applied_while_a_subscriber_reads_the_state_is_handed_to_it() {
        let limits = EngineLimits {
            max_targets_per_session: 4,
            max_channels: 4,
        };
        let directory = Arc::new(Directory::default());
        let stats = Arc::new(EngineStats::default());
        let stage = Arc::new(Mutex::new(StateStage::new(
            limits.clone(),
            stats.clone(),
            directory.clone(),
        )));
        let filters = Arc::new(Mutex::new(FilterInterner::default()));
        let mut shard = Shard::new(Arc::from("e"), limits, stats, directory, filters);
        let created = stage.lock().unwrap().apply(&record(1), 0).unwrap();
        shard.on_event(&created, 0);
        let outbox = Arc::new(Outbox::new(1 << 16));
        shard.register(7, outbox.clone());

        // The hand-off ring, as the shard would read it after the subscribe.
        let handed: Arc<Mutex<Vec<Event>>> = Arc::default();
        let (in_stage, into_ring) = (stage.clone(), handed.clone());
        shard.race_hook.set(move || {
            let event = in_stage.lock().unwrap().apply(&record(2), 0);
            into_ring.lock().unwrap().extend(event);
        });
        let targets = vec![Pattern::new("q.A").unwrap()];
        shard.subscribe(7, Some(1), targets, SubscribeOptions::default(), 0);
        shard.race_hook.set(|| {});
        for event in handed.lock().unwrap().drain(..) {
            shard.on_event(&event, 0);
        }
        let third = stage.lock().unwrap().apply(&record(3), 0).unwrap();
        shard.on_event(&third, 0);

        let mut frames: Vec<QueuedFrame> = Vec::new();
        let _ = outbox.take(&mut frames).now_or_never();
        let messages: Vec<Value> = frames
            .iter()
            .map(|f| serde_json::from_slice(&f.bytes[2..]).unwrap())
            .collect();
        let shape: Vec<(&str, u64, Option<u64>)> = messages[1..]
            .iter()
            .map(|m| {
                (
                    m["type"].as_str().unwrap(),
                    m["seq"].as_u64().unwrap(),
                    m["prev"].as_u64(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("snapshot", 1, None),
                ("update", 2, Some(1)),
                ("update", 3, Some(2))
            ]
        );
    }
}
