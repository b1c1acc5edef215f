//! The engine's tasks and how sessions reach them.
//!
//! One state task owns the [`StateStage`]: it is the only gating consumer
//! of the feed ring, applies each record once and publishes what the shards
//! must see into the hand-off ring. One task per fanout [`Shard`] is a
//! gating consumer of the hand-off ring and owns that shard's command
//! queue; it owns the clock the shard is given. Shards split the sessions
//! (session id modulo the shard count), not the channels. See
//! docs/architecture.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::directory::Directory;
use super::fanout::Event;
use super::options::SubscribeOptions;
use super::shard::Shard;
use super::stage::StateStage;
use super::{Backlog, ChannelInfo, ChannelSnapshot, EngineStats, SessionId, StatsSnapshot};
use crate::channel::Pattern;
use crate::feed::RingItem;
use crate::handoff::Handoff;
use crate::metrics::{Metrics, Stage};
use crate::outbox::Outbox;
use crate::record::FeedRecord;
use crate::ring::{Consumer, Full, Producer, RecvError, TryRecvError};

/// What sessions and the HTTP side ask of a shard.
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
        options: SubscribeOptions,
    },
    Unsubscribe {
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    /// The session's token was refreshed (`reply` answers the `auth`):
    /// after the reply, the targets its new grant no longer `allows` are
    /// unsubscribed, and the client is told with an `unsubscribed` without
    /// an id.
    Regrant {
        session: SessionId,
        reply: Bytes,
        allows: Box<dyn Fn(&Pattern) -> bool + Send>,
    },
    /// The session's socket took everything queued after the engine had to
    /// hold diffs back: send them now.
    Drained {
        session: SessionId,
    },
    /// A reply the session's reader produced (pong, error), kept in order
    /// with the engine's own frames.
    Reply {
        session: SessionId,
        frame: Bytes,
    },
    /// Asked of every shard, for `/stats`.
    Backlog {
        reply: oneshot::Sender<Backlog>,
    },
}

impl Command {
    /// The session a command belongs to; `None` for questions any shard can
    /// answer.
    fn session(&self) -> Option<SessionId> {
        match self {
            Command::Register { session, .. }
            | Command::Deregister { session }
            | Command::Subscribe { session, .. }
            | Command::Unsubscribe { session, .. }
            | Command::Regrant { session, .. }
            | Command::Drained { session }
            | Command::Reply { session, .. } => Some(*session),
            Command::Backlog { .. } => None,
        }
    }
}

impl Shard {
    /// Carries out one command; `now` is the shard task's monotonic clock.
    pub fn handle(&mut self, command: Command, now: u64) {
        match command {
            Command::Register { session, outbox } => self.register(session, outbox),
            Command::Deregister { session } => self.deregister(session),
            Command::Subscribe {
                session,
                id,
                targets,
                options,
            } => self.subscribe(session, id, targets, options, now),
            Command::Unsubscribe {
                session,
                id,
                targets,
            } => self.unsubscribe(session, id, targets),
            Command::Regrant {
                session,
                reply,
                allows,
            } => {
                self.reply(session, reply);
                self.revoke(session, &*allows);
            }
            Command::Reply { session, frame } => self.reply(session, frame),
            Command::Drained { session } => self.drained(session, now),
            Command::Backlog { reply } => {
                let _ = reply.send(self.backlog());
            }
        }
    }
}

/// The engine went away (shutdown); the caller should stop too.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct EngineGone;

/// A cheap, cloneable way to talk to the engine: a session's commands go to
/// the shard that owns it; channel questions are answered from the shared
/// directory without asking any task.
#[derive(Clone)]
pub struct EngineHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
    /// The state stage's counters, then each shard's.
    stats: Arc<[Arc<EngineStats>]>,
    directory: Arc<Directory>,
    next_session: Arc<AtomicU64>,
    epoch: Arc<str>,
}

/// One shard's end of the engine's wiring: its command queue and counters.
pub struct ShardInputs {
    pub commands: mpsc::Receiver<Command>,
    pub stats: Arc<EngineStats>,
}

impl EngineHandle {
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// How many fanout shards share the sessions.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The channel directory the state stage fills.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The counters the state stage counts into.
    pub fn stage_stats(&self) -> Arc<EngineStats> {
        self.stats[0].clone()
    }

    /// The engine's counters, added up over the state stage and the shards.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::total(&self.stats)
    }

    /// Sends a command to the shard it belongs to, waiting while that
    /// shard's queue is full.
    pub async fn send(&self, command: Command) -> Result<(), EngineGone> {
        let shard = command
            .session()
            .map_or(0, |session| (session % self.shards.len() as u64) as usize);
        self.shards[shard]
            .send(command)
            .await
            .map_err(|_| EngineGone)
    }

    /// Every channel and its seq, read from the directory.
    pub async fn channel_list(&self) -> Result<Vec<ChannelInfo>, EngineGone> {
        Ok(super::channel_list(&self.directory))
    }

    /// What connections hold back, over every shard.
    pub async fn backlog(&self) -> Result<Backlog, EngineGone> {
        let mut total = Backlog::default();
        for shard in self.shards.iter() {
            let (reply, answer) = oneshot::channel();
            shard
                .send(Command::Backlog { reply })
                .await
                .map_err(|_| EngineGone)?;
            total.add(answer.await.map_err(|_| EngineGone)?);
        }
        Ok(total)
    }

    /// One channel's state and seq, read from the directory.
    pub async fn snapshot(&self, name: &str) -> Result<Option<ChannelSnapshot>, EngineGone> {
        Ok(super::snapshot(&self.directory, &self.epoch, name))
    }
}

/// What the hand-off ring carries: an [`Event`] each shard takes once.
pub type HandoffItem = Arc<Handoff<Event>>;

/// The state stage's end of the hand-off ring and how many shards (its
/// gating consumers) take each event.
pub struct HandoffProducer {
    pub producer: Producer<HandoffItem>,
    pub shards: usize,
}

/// Records applied (or events handled) per turn before a task looks at
/// its other inputs again, so neither side is starved by a busy feed.
const RECORDS_PER_TURN: usize = 256;

/// Creates `shards` (at least 1) command queues of `queue` commands each,
/// the channel directory, and the handle that routes to them.
pub fn channel(epoch: Arc<str>, shards: usize, queue: usize) -> (EngineHandle, Vec<ShardInputs>) {
    let (senders, inputs): (Vec<_>, Vec<_>) = (0..shards.max(1))
        .map(|_| {
            let (sender, commands) = mpsc::channel(queue);
            let stats = Arc::new(EngineStats::default());
            (sender, ShardInputs { commands, stats })
        })
        .unzip();
    let stats = std::iter::once(Arc::new(EngineStats::default()))
        .chain(inputs.iter().map(|i| i.stats.clone()))
        .collect();
    let handle = EngineHandle {
        shards: senders.into(),
        stats,
        directory: Arc::new(Directory::default()),
        next_session: Arc::new(AtomicU64::new(1)),
        epoch,
    };
    (handle, inputs)
}

/// The state task: applies records from the feed ring and hands what the
/// shards must see to the hand-off ring, until `shutdown` or until every
/// feed is gone. When the hand-off ring is full (a shard is a whole ring
/// behind) it waits, and the feeds wait behind it: nothing is dropped.
pub async fn run_state(
    mut stage: StateStage,
    mut feed: Consumer<RingItem>,
    handoff: HandoffProducer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let mut applied = 0;
        while applied < RECORDS_PER_TURN {
            let item = match feed.try_recv() {
                Ok(item) => item,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return,
                Err(TryRecvError::Lagged(n)) => {
                    // Cannot happen to a gating consumer; say so loudly if it does.
                    tracing::error!(missed = n, "state stage lapped by the ring");
                    continue;
                }
            };
            applied += 1;
            if !apply_and_hand_off(&mut stage, &item, &handoff, &metrics, &shutdown).await {
                return;
            }
        }
        if applied > 0 {
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        let item = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            item = feed.recv() => match item {
                Ok(item) => item,
                Err(RecvError::Closed) => return,
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "state stage lapped by the ring");
                    continue;
                }
            },
        };
        if !apply_and_hand_off(&mut stage, &item, &handoff, &metrics, &shutdown).await {
            return;
        }
    }
}

/// Takes the record out of its feed-ring shell (the slot keeps only the
/// empty shell), applies it and hands off what the shards must see; false
/// if shutdown came first.
async fn apply_and_hand_off(
    stage: &mut StateStage,
    item: &RingItem,
    handoff: &HandoffProducer,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let Some(record) = item.take() else {
        // Only if a second consumer took it first: the ring has one.
        tracing::error!("a feed record was taken before the state stage");
        return true;
    };
    // With --nats, the node that assigns seqs publishes every record it
    // accepts: wait (as for the hand-off ring) until its queue has room.
    if let Some(tap) = stage.replication() {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return false,
            () = tap.room() => {}
        }
    }
    match apply_timed(stage, &record, metrics) {
        Some(event) => hand_off(handoff, event, shutdown).await,
        None => true,
    }
}

/// Publishes `event` for every shard, waiting for room if the hand-off
/// ring is full; false if shutdown came first.
pub async fn hand_off(
    handoff: &HandoffProducer,
    event: Event,
    shutdown: &CancellationToken,
) -> bool {
    let item = Handoff::new(event, handoff.shards);
    let item = match handoff.producer.try_publish(item) {
        Ok(_) => return true,
        Err(Full(item)) => item,
    };
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = handoff.producer.publish(item) => true,
    }
}

/// Applies one record and records how long it waited in the feed ring.
fn apply_timed(
    stage: &mut StateStage,
    record: &Arc<FeedRecord>,
    metrics: &Metrics,
) -> Option<Event> {
    let taken = metrics.mono_ns();
    let waited = crate::clock::unix_nanos().saturating_sub(record.ingest_ns);
    metrics.with_local(|h| h.record(Stage::RingToEngine, waited));
    stage.apply(record, taken)
}

/// A shard task: fans out the updates the state stage hands off, carries
/// out its sessions' commands, and sends held diffs when they fall due,
/// until `shutdown`; then closes every session with 1001 and a reconnect
/// delay (`crate::shutdown`).
///
/// Held diffs need no task of their own: the shard keeps one ordered set of
/// due times, and this loop sleeps until the earliest of them (or until an
/// event or command arrives) and then sweeps everything due.
pub async fn run_shard(
    mut shard: Shard,
    mut events: Consumer<HandoffItem>,
    mut commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut events_open = true;
    loop {
        let mut busy = false;
        let mut handled = 0;
        while events_open && handled < RECORDS_PER_TURN {
            match events.try_recv() {
                Ok(item) => {
                    fan_out_taken(&mut shard, &item, &metrics);
                    handled += 1;
                    busy = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => events_open = false,
                Err(TryRecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "engine shard lapped by the hand-off ring");
                }
            }
        }
        while let Ok(command) = commands.try_recv() {
            shard.handle(command, metrics.mono_ns());
            busy = true;
        }
        if shard.next_due().is_some_and(|due| due <= metrics.mono_ns()) {
            shard.flush_due(metrics.mono_ns());
        }
        if busy {
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                break;
            }
            continue;
        }
        let wake = shard.next_due().map(|due| {
            let after = Duration::from_nanos(due.saturating_sub(metrics.mono_ns()));
            tokio::time::Instant::now() + after
        });
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(command) => shard.handle(command, metrics.mono_ns()),
                None => break,
            },
            event = events.recv(), if events_open => match event {
                Ok(item) => fan_out_taken(&mut shard, &item, &metrics),
                Err(RecvError::Closed) => events_open = false,
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "engine shard lapped by the hand-off ring");
                }
            },
            () = sleep_until(wake), if wake.is_some() => shard.flush_due(metrics.mono_ns()),
        }
    }
    shard.close_all();
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Takes this shard's share of a hand-off (the last shard to take it
/// leaves the slot an empty shell, so the ring does not keep the update's
/// patch and frames alive until it laps) and fans it out.
fn fan_out_taken(shard: &mut Shard, item: &HandoffItem, metrics: &Metrics) {
    match item.take() {
        Some(event) => fan_out_timed(shard, &event, metrics),
        None => tracing::error!("a hand-off was taken by more consumers than shards"),
    }
}

/// Handles one hand-off and, if this shard had subscribers for it, records
/// how long it took from the state stage taking the record to its frames
/// sitting in this shard's outboxes.
fn fan_out_timed(shard: &mut Shard, event: &Event, metrics: &Metrics) {
    let now = metrics.mono_ns();
    if shard.on_event(event, now) {
        if let Event::Update(applied) = event {
            let took = metrics.mono_ns().saturating_sub(applied.taken_ns);
            metrics.with_local(|h| h.record(Stage::EngineToQueued, took));
        }
    }
}
