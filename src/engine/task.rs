//! The engine task: the one owner of an [`Engine`], fed by the ring and by
//! a bounded command queue, and the owner of the clock the engine is given.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ChannelInfo, ChannelSnapshot, Engine, EngineStats, SessionId};
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
        }
    }
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
