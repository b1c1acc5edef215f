//! The engine tasks: each owns one [`Engine`] shard, fed by its own ring
//! consumer and its own bounded command queue, and owns the clock the engine
//! is given.
//!
//! Shards split the sessions (session id modulo the shard count), not the
//! channels: every shard reads every record from the ring and applies it to
//! its own copy of the channel states. Seqs are assigned by counting records
//! per channel, so every shard arrives at the same state and seq; a shard
//! fans out only to its own sessions. See docs/architecture.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Backlog, ChannelInfo, ChannelSnapshot, Engine, EngineStats, SessionId, StatsSnapshot};
use crate::channel::Pattern;
use crate::feed::RingItem;
use crate::metrics::{Metrics, Stage};
use crate::record::FeedRecord;
use crate::ring::{Consumer, TryRecvError};
use crate::session::outbox::Outbox;
use crate::session::protocol::SubscribeOptions;
use crate::wire::{self, CloseCode};

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
        options: SubscribeOptions,
    },
    Unsubscribe {
        session: SessionId,
        id: Option<i64>,
        targets: Vec<Pattern>,
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
    ListChannels {
        reply: oneshot::Sender<Vec<ChannelInfo>>,
    },
    Snapshot {
        name: String,
        reply: oneshot::Sender<Option<ChannelSnapshot>>,
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
            | Command::Drained { session }
            | Command::Reply { session, .. } => Some(*session),
            Command::ListChannels { .. } | Command::Snapshot { .. } | Command::Backlog { .. } => {
                None
            }
        }
    }
}

impl Engine {
    /// Carries out one command; `now` is the engine task's monotonic clock.
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
            Command::Reply { session, frame } => self.reply(session, frame),
            Command::Drained { session } => self.drained(session, now),
            Command::ListChannels { reply } => {
                let _ = reply.send(self.channel_list());
            }
            Command::Snapshot { name, reply } => {
                let _ = reply.send(self.snapshot(&name));
            }
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

/// A cheap, cloneable way to talk to the engine shards: a session's
/// commands go to the shard that owns it.
#[derive(Clone)]
pub struct EngineHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
    shard_stats: Arc<[Arc<EngineStats>]>,
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

    /// How many engine shards share the sessions.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The engine's counters, added up over the shards.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::total(&self.shard_stats)
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

    pub async fn channel_list(&self) -> Result<Vec<ChannelInfo>, EngineGone> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ListChannels { reply }).await?;
        answer.await.map_err(|_| EngineGone)
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

/// Creates `shards` (at least 1) command queues of `queue` commands each,
/// and the handle that routes to them.
pub fn channel(epoch: Arc<str>, shards: usize, queue: usize) -> (EngineHandle, Vec<ShardInputs>) {
    let (senders, inputs): (Vec<_>, Vec<_>) = (0..shards.max(1))
        .map(|_| {
            let (sender, commands) = mpsc::channel(queue);
            let stats = Arc::new(EngineStats::default());
            (sender, ShardInputs { commands, stats })
        })
        .unzip();
    let handle = EngineHandle {
        shards: senders.into(),
        shard_stats: inputs.iter().map(|i| i.stats.clone()).collect(),
        next_session: Arc::new(AtomicU64::new(1)),
        epoch,
    };
    (handle, inputs)
}

/// The engine task: applies records from the ring and commands from
/// sessions, and sends held diffs when they fall due, until `shutdown`;
/// then closes every session with 1001.
///
/// Held diffs need no task of their own: the engine keeps one ordered set of
/// due times, and this loop sleeps until the earliest of them (or until a
/// record or command arrives) and then sweeps everything due.
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
            engine.handle(command, metrics.mono_ns());
            busy = true;
        }
        if engine
            .next_due()
            .is_some_and(|due| due <= metrics.mono_ns())
        {
            engine.flush_due(metrics.mono_ns());
        }
        if busy {
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                break;
            }
            continue;
        }
        let wake = engine.next_due().map(|due| {
            let after = Duration::from_nanos(due.saturating_sub(metrics.mono_ns()));
            tokio::time::Instant::now() + after
        });
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(command) => engine.handle(command, metrics.mono_ns()),
                None => break,
            },
            record = ring.recv(), if ring_open => match record {
                Ok(record) => apply_timed(&mut engine, &record, &metrics),
                Err(crate::ring::RecvError::Closed) => ring_open = false,
                Err(crate::ring::RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "engine lapped by the ring");
                }
            },
            () = sleep_until(wake), if wake.is_some() => engine.flush_due(metrics.mono_ns()),
        }
    }
    engine.close_all(wire::close(CloseCode::GoingAway, "server shutting down"));
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
