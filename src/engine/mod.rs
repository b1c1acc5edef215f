//! The engine: owns every channel's state and seq, and every subscription.
//!
//! One task owns an [`Engine`]; feeds reach it through the ring and sessions
//! through a bounded command queue ([`EngineHandle`]). It never touches a
//! socket or reads a clock: it turns inputs into frames pushed onto each
//! session's [`Outbox`], so it can be tested as plain function calls.

pub mod fanout;
pub mod index;
pub mod state;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelName, Pattern};
use crate::feed::RingItem;
use crate::metrics::{Metrics, Stage};
use crate::record::{FeedRecord, JsonMap};
use crate::ring::{Consumer, TryRecvError};
use crate::session::outbox::{Outbox, QueuedFrame};
use crate::wire::{self, CloseCode, ErrorCode};
use fanout::UpdateFrames;
pub use index::{ChannelId, SessionId};
use index::{SessionEntry, TargetIndex};

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
    /// Diffs merged into a pending diff (throttling, slow consumers).
    pub coalesced_diffs: AtomicU64,
    pub records_dropped_channel_limit: AtomicU64,
    pub channels: AtomicU64,
    pub sessions: AtomicU64,
    pub subscriptions: AtomicU64,
}

/// A delivery of one channel to one session.
struct Delivery {
    session: SessionId,
    outbox: Arc<Outbox>,
    /// Seq of the last snapshot or update sent on this channel: the next
    /// update's `prev`.
    last_sent: u64,
}

struct Channel {
    name: ChannelName,
    state: JsonMap,
    seq: u64,
    subscribers: Vec<Delivery>,
    /// The snapshot frame for `seq`, shared by everyone who subscribes
    /// before the next update.
    snapshot_cache: Option<(u64, Bytes)>,
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
    stats: Arc<EngineStats>,
    channels: Vec<Channel>,
    by_name: HashMap<ChannelName, ChannelId>,
    sessions: HashMap<SessionId, SessionEntry>,
    index: TargetIndex,
}

impl Engine {
    pub fn new(epoch: Arc<str>, limits: EngineLimits, stats: Arc<EngineStats>) -> Self {
        Self {
            epoch,
            limits,
            stats,
            channels: Vec::new(),
            by_name: HashMap::new(),
            sessions: HashMap::new(),
            index: TargetIndex::default(),
        }
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
            self.index.remove(target, session);
        }
        for cid in entry.attached {
            self.channels[cid]
                .subscribers
                .retain(|d| d.session != session);
        }
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        self.count_subscriptions();
    }

    fn count_subscriptions(&self) {
        let total: usize = self.sessions.values().map(|s| s.targets.len()).sum();
        self.stats
            .subscriptions
            .store(total as u64, Ordering::Relaxed);
    }

    /// Applies one feed record: merge, seq + 1, fan out. `now` is the
    /// caller's monotonic clock (`Metrics::mono_ns`), stamped on queued
    /// frames for the latency histograms.
    pub fn apply(&mut self, record: &FeedRecord, now: u64) {
        let cid = match self.by_name.get(&record.channel) {
            Some(&cid) => cid,
            None => return self.create_channel(record),
        };
        self.stats.updates_applied.fetch_add(1, Ordering::Relaxed);
        let channel = &mut self.channels[cid];
        state::merge_patch(&mut channel.state, &record.data);
        channel.seq += 1;
        channel.snapshot_cache = None;
        if channel.subscribers.is_empty() {
            return;
        }
        let data_json = serde_json::to_vec(&record.data).expect("serializing a JSON map");
        let mut frames = UpdateFrames::new(
            channel.name.as_str(),
            channel.seq,
            record.ingest_ns,
            &data_json,
        );
        let mut slow = Vec::new();
        let (mut queued, mut bytes) = (0u64, 0u64);
        for delivery in &mut channel.subscribers {
            let frame = frames.for_prev(delivery.last_sent);
            let len = frame.len() as u64;
            let timed = QueuedFrame {
                bytes: frame,
                ingest_ns: record.ingest_ns,
                queued_ns: now,
            };
            if delivery.outbox.push(timed) {
                delivery.last_sent = channel.seq;
                queued += 1;
                bytes += len;
            } else {
                slow.push(delivery.session);
            }
        }
        self.stats
            .frames_queued
            .fetch_add(queued, Ordering::Relaxed);
        self.stats.bytes_queued.fetch_add(bytes, Ordering::Relaxed);
        self.stats
            .frames_encoded
            .fetch_add(frames.encoded() as u64, Ordering::Relaxed);
        for session in slow {
            self.close_slow(session);
        }
    }

    /// A channel's first record creates it (seq 1) and starts every matching
    /// session on it with a snapshot.
    fn create_channel(&mut self, record: &FeedRecord) {
        if self.channels.len() >= self.limits.max_channels {
            self.stats
                .records_dropped_channel_limit
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                channel = %record.channel,
                limit = self.limits.max_channels,
                "channel limit reached; record dropped (raise limits.max_channels)"
            );
            return;
        }
        self.stats.updates_applied.fetch_add(1, Ordering::Relaxed);
        let mut state = JsonMap::new();
        state::merge_patch(&mut state, &record.data);
        let cid = self.channels.len();
        self.channels.push(Channel {
            name: record.channel.clone(),
            state,
            seq: 1,
            subscribers: Vec::new(),
            snapshot_cache: None,
        });
        self.by_name.insert(record.channel.clone(), cid);
        self.stats
            .channels
            .store(self.channels.len() as u64, Ordering::Relaxed);
        for session in self.index.sessions_for(&record.channel) {
            self.attach(session, cid);
        }
    }

    /// Starts (or restarts) delivering `cid` to `session` with a snapshot.
    fn attach(&mut self, session: SessionId, cid: ChannelId) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let channel = &mut self.channels[cid];
        let seq = channel.seq;
        let frame = match &channel.snapshot_cache {
            Some((cached_seq, frame)) if *cached_seq == seq => frame.clone(),
            _ => {
                let frame = wire::snapshot(
                    channel.name.as_str(),
                    seq,
                    &self.epoch,
                    &channel.state,
                    false,
                );
                channel.snapshot_cache = Some((seq, frame.clone()));
                frame
            }
        };
        if !entry.outbox.push(frame) {
            return self.close_slow(session);
        }
        if entry.attached.insert(cid) {
            channel.subscribers.push(Delivery {
                session,
                outbox: entry.outbox.clone(),
                last_sent: seq,
            });
        } else if let Some(d) = channel
            .subscribers
            .iter_mut()
            .find(|d| d.session == session)
        {
            d.last_sent = seq;
        }
    }

    fn detach(&mut self, session: SessionId, cid: ChannelId) {
        if let Some(entry) = self.sessions.get_mut(&session) {
            if entry.attached.remove(&cid) {
                self.channels[cid]
                    .subscribers
                    .retain(|d| d.session != session);
            }
        }
    }

    /// A session whose queue is full is closed with 1013 rather than
    /// silently skipped: its client resumes and gets a fresh snapshot.
    fn close_slow(&mut self, session: SessionId) {
        if let Some(entry) = self.sessions.get(&session) {
            tracing::info!(session, "closing slow consumer (outbound queue full)");
            entry.outbox.close(
                wire::close(
                    CloseCode::TryAgainLater,
                    "slow consumer: outbound queue full",
                ),
                true,
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

    pub fn subscribe(&mut self, session: SessionId, id: Option<i64>, targets: Vec<Pattern>) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        let new = targets
            .iter()
            .filter(|t| !entry.targets.contains(t))
            .count();
        if entry.targets.len() + new > self.limits.max_targets_per_session {
            let message = format!(
                "at most {} channels and patterns per connection (limits.max_subscriptions_per_connection)",
                self.limits.max_targets_per_session
            );
            return self.reply(session, wire::error(id, ErrorCode::Limit, &message));
        }
        let names: Vec<String> = targets.iter().map(|t| t.as_str().to_owned()).collect();
        let reply = wire::channels_reply("subscribed", id, &names);
        let mut covered = Vec::new();
        for target in &targets {
            if !entry.targets.contains(target) {
                entry.targets.push(target.clone());
                self.index.add(target, session);
            }
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
        }
        let replied = entry.outbox.push(reply);
        self.count_subscriptions();
        if !replied {
            return self.close_slow(session);
        }
        covered.sort_unstable();
        covered.dedup();
        for cid in covered {
            self.attach(session, cid);
        }
    }

    pub fn unsubscribe(&mut self, session: SessionId, id: Option<i64>, targets: Vec<Pattern>) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        for target in &targets {
            if let Some(pos) = entry.targets.iter().position(|t| t == target) {
                entry.targets.swap_remove(pos);
                self.index.remove(target, session);
            }
        }
        // A channel stays while any remaining target still covers it.
        let orphaned: Vec<ChannelId> = entry
            .attached
            .iter()
            .copied()
            .filter(|&cid| {
                let name = &self.channels[cid].name;
                !entry.targets.iter().any(|t| t.matches(name))
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

    pub fn handle(&mut self, command: Command) {
        match command {
            Command::Register { session, outbox } => self.register(session, outbox),
            Command::Deregister { session } => self.deregister(session),
            Command::Subscribe {
                session,
                id,
                targets,
            } => self.subscribe(session, id, targets),
            Command::Unsubscribe {
                session,
                id,
                targets,
            } => self.unsubscribe(session, id, targets),
            Command::Reply { session, frame } => self.reply(session, frame),
            Command::ListChannels { reply } => {
                let _ = reply.send(self.channel_list());
            }
            Command::Snapshot { name, reply } => {
                let _ = reply.send(self.snapshot(&name));
            }
        }
    }
}

/// What sessions and the HTTP side ask of the engine.
pub enum Command {
    Register {
        session: SessionId,
        outbox: Arc<Outbox>,
    },
    Deregister {
        session: SessionId,
    },
    Subscribe {
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    Unsubscribe {
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    /// A reply the session's reader produced (pong, error), kept in order
    /// with the engine's own frames.
    Reply {
        session: SessionId,
        frame: Bytes,
    },
    ListChannels {
        reply: oneshot::Sender<Vec<ChannelInfo>>,
    },
    Snapshot {
        name: String,
        reply: oneshot::Sender<Option<ChannelSnapshot>>,
    },
}

/// The engine went away (shutdown); the caller should stop too.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineGone;

/// A cheap, cloneable way to talk to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    next_session: Arc<AtomicU64>,
    epoch: Arc<str>,
    pub stats: Arc<EngineStats>,
}

impl EngineHandle {
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a command, waiting while the engine's queue is full.
    pub async fn send(&self, command: Command) -> Result<(), EngineGone> {
        self.commands.send(command).await.map_err(|_| EngineGone)
    }

    pub async fn channel_list(&self) -> Result<Vec<ChannelInfo>, EngineGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ListChannels { reply }).await?;
        answer.await.map_err(|_| EngineGone)
    }

    pub async fn snapshot(&self, name: &str) -> Result<Option<ChannelSnapshot>, EngineGone> {
        let (reply, answer) = oneshot::channel();
        let name = name.to_owned();
        self.send(Command::Snapshot { name, reply }).await?;
        answer.await.map_err(|_| EngineGone)
    }
}

/// Records applied per turn before the engine looks at its commands again,
/// so subscribes are not starved by a busy feed.
const RECORDS_PER_TURN: usize = 256;

/// Creates the engine's command queue and handle.
pub fn channel(
    epoch: Arc<str>,
    stats: Arc<EngineStats>,
    queue: usize,
) -> (EngineHandle, mpsc::Receiver<Command>) {
    let (commands, receiver) = mpsc::channel(queue);
    let handle = EngineHandle {
        commands,
        next_session: Arc::new(AtomicU64::new(1)),
        epoch,
        stats,
    };
    (handle, receiver)
}

/// The engine task: applies records from the ring and commands from
/// sessions until `shutdown`, then closes every session with 1001.
pub async fn run(
    mut engine: Engine,
    mut ring: Consumer<RingItem>,
    mut commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ring_open = true;
    loop {
        let mut busy = false;
        let mut applied = 0;
        while ring_open && applied < RECORDS_PER_TURN {
            match ring.try_recv() {
                Ok(record) => {
                    apply_timed(&mut engine, &record, &metrics);
                    applied += 1;
                    busy = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => ring_open = false,
                Err(TryRecvError::Lagged(n)) => {
                    // Cannot happen to a gating consumer; say so loudly if it does.
                    tracing::error!(missed = n, "engine lapped by the ring");
                }
            }
        }
        while let Ok(command) = commands.try_recv() {
            engine.handle(command);
            busy = true;
        }
        if busy {
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                break;
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(command) => engine.handle(command),
                None => break,
            },
            record = ring.recv(), if ring_open => match record {
                Ok(record) => apply_timed(&mut engine, &record, &metrics),
                Err(crate::ring::RecvError::Closed) => ring_open = false,
                Err(crate::ring::RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "engine lapped by the ring");
                }
            },
        }
    }
    engine.close_all(wire::close(CloseCode::GoingAway, "server shutting down"));
}

/// Applies one record and records how long it waited and how long its
/// fanout took.
fn apply_timed(engine: &mut Engine, record: &FeedRecord, metrics: &Metrics) {
    let taken = metrics.mono_ns();
    let waited = crate::clock::unix_nanos().saturating_sub(record.ingest_ns);
    engine.apply(record, taken);
    let fanout = metrics.mono_ns() - taken;
    metrics.with_local(|h| {
        h.record(Stage::RingToEngine, waited);
        h.record(Stage::EngineToQueued, fanout);
    });
}
