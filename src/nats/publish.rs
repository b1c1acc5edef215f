//! The writer: publishes every record the state stage accepts to the
//! stream, in order, and is the stream's only writer.
//!
//! **One writer.** Every publish carries `Nats-Expected-Last-Sequence`: the
//! stream sequence the writer believes is the stream's last. JetStream
//! stores the message only if that is so; if any other node stored
//! anything in between, the publish is refused (`WrongLastSequence`) and
//! this node stops publishing for good ([`Phase::Fenced`]): it never
//! assigns a seq someone else may also have assigned. A node becomes the
//! writer by the same kind of publish (its claim), made when it has
//! applied everything in the stream, so what it assigns follows exactly
//! what every other node has.
//!
//! **Pipelined.** Publishes are sent in batches without waiting for each
//! ack: the writer predicts each one's sequence (last + 1, + 2, ...), which
//! is right while it is the only writer. If a publish fails (NATS down, an
//! ack lost), that one is sent again alone until it is stored, then the
//! rest are pipelined again. Each carries a `Nats-Msg-Id` that JetStream
//! de-duplicates (for two minutes), so a message that was stored but not
//! acknowledged is not stored twice.
//!
//! **Snapshots.** Between records the writer also stores each changed
//! channel's state and a checkpoint, in the same ordered, fenced way (see
//! `snapshot.rs`), and deletes the snapshots they replace.
//!
//! **Bounded.** At most `nats.max_pending_records` records are queued or
//! being stored; at the bound the state task waits for room, and the feeds behind it
//! wait too (TCP producers feel it), as at the hand-off ring: nothing is
//! dropped and no seq is skipped. `tickcast_nats_pending_records` shows it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::snapshot::Snapshots;
use super::{encode, Cluster, ClusterStatus, Phase};
use crate::channel::ChannelName;
use crate::engine::directory::Directory;
use crate::record::FeedRecord;

/// Publishes sent before their acks are awaited.
const BATCH: usize = 256;

/// An accepted record and the seq the stage gave it.
pub struct Outgoing {
    record: Arc<FeedRecord>,
    seq: u64,
}

/// The state stage's end of the writer's queue.
#[derive(Clone)]
pub struct ReplicationTap {
    queue: mpsc::Sender<Outgoing>,
    status: Arc<ClusterStatus>,
    /// `nats.max_pending_records`: most records queued or being stored.
    max_pending: u64,
    /// The NATS server's `max_payload`: a record whose stream payload
    /// would be larger can never be stored.
    max_payload: usize,
}

impl std::fmt::Debug for ReplicationTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationTap").finish_non_exhaustive()
    }
}

impl ReplicationTap {
    /// A queue of `max_pending` records and the receiver the writer drains;
    /// `max_payload` is the NATS server's.
    pub fn new(
        max_pending: usize,
        max_payload: usize,
        status: Arc<ClusterStatus>,
    ) -> (Self, mpsc::Receiver<Outgoing>) {
        let max_pending = max_pending.max(1);
        let (queue, receiver) = mpsc::channel(max_pending);
        let tap = Self {
            queue,
            status,
            max_pending: max_pending as u64,
            max_payload,
        };
        (tap, receiver)
    }

    /// Whether `record`'s stream payload fits the NATS server's
    /// `max_payload`; `Err` with its size if not. Checked before the record
    /// is applied: one NATS would refuse after its seq was taken would
    /// hold up every record behind it (the writer publishes in order).
    pub fn fits(&self, record: &FeedRecord) -> Result<(), usize> {
        let size = super::payload_len(record);
        if size <= self.max_payload {
            Ok(())
        } else {
            Err(size)
        }
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The largest channel state whose snapshot fits `max_payload`.
    pub fn max_state_bytes(&self) -> usize {
        self.max_payload
            .saturating_sub(super::snapshot::ENVELOPE_BYTES)
    }

    /// Queues an accepted record. The state task waited for [`room`]
    /// first and is the only sender, so this cannot find the queue full
    /// (it holds at most `max_pending`, and so do queue and writer together);
    /// if the writer is gone (shutdown), the record stays unpublished and
    /// is logged.
    ///
    /// [`room`]: Self::room
    pub fn offer(&self, record: &Arc<FeedRecord>, seq: u64) {
        let outgoing = Outgoing {
            record: record.clone(),
            seq,
        };
        match self.queue.try_send(outgoing) {
            Ok(()) => {
                self.status.pending.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tracing::error!(channel = %record.channel, seq,
                "record applied but not queued for NATS (the writer has stopped)"),
        }
    }

    /// Waits until fewer than `max_pending` records are unpublished
    /// (queued, or taken by the writer and not yet stored).
    pub async fn room(&self) {
        loop {
            // Made before the check, so a store in between still wakes it.
            let stored = self.status.stored.notified();
            if self.status.pending.load(Ordering::Relaxed) < self.max_pending
                || self.queue.is_closed()
            {
                return;
            }
            stored.await;
        }
    }
}

/// One message to store: subject, payload and its de-duplication id.
struct Pending {
    subject: String,
    payload: Bytes,
    id: String,
    kind: Kind,
    /// The channel of a snapshot.
    channel: Option<ChannelName>,
}

/// What a stored message counts as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A record (counted in `pending`).
    Record,
    /// A channel's snapshot.
    Snapshot,
    /// A heartbeat or checkpoint.
    Meta,
}

/// Another node wrote to the stream.
struct Fenced;

/// The stream's writer, from its claim on.
pub struct Writer {
    cluster: Arc<Cluster>,
    /// Each channel's last snapshot stored by this writer (its stream
    /// sequence), deleted once a newer one is stored.
    snapshots: std::collections::HashMap<ChannelName, u64>,
    /// Stream sequences of snapshots a newer one replaced.
    superseded: Vec<u64>,
    /// This process's name in message ids (random per process).
    name: String,
    next_id: u64,
    /// The stream's last sequence, as far as this writer knows.
    last: u64,
}

impl Writer {
    /// Claims the stream as its writer, if its last sequence is still
    /// `position` (everything this node applied); `None` if another node
    /// wrote since.
    pub async fn claim(cluster: Arc<Cluster>, position: u64) -> Option<Writer> {
        let name = format!("{:016x}", rand::random::<u64>());
        let mut writer = Writer {
            cluster,
            snapshots: Default::default(),
            superseded: Vec::new(),
            name,
            next_id: 0,
            last: position,
        };
        let claim = writer.heartbeat();
        match writer.store_one(&claim, false).await {
            Ok(()) => Some(writer),
            Err(Fenced) => None,
        }
    }

    fn message(&mut self, subject: String, payload: Bytes, kind: Kind) -> Pending {
        self.next_id += 1;
        Pending {
            subject,
            payload,
            id: format!("{}.{}", self.name, self.next_id),
            kind,
            channel: None,
        }
    }

    fn heartbeat(&mut self) -> Pending {
        let subject = self.cluster.settings.writer_subject();
        self.message(subject, Bytes::from(self.name.clone()), Kind::Meta)
    }

    fn snapshot(&mut self, channel: &ChannelName, payload: Bytes) -> Pending {
        let subject = self.cluster.settings.snapshot_subject(channel.as_str());
        let mut snapshot = self.message(subject, payload, Kind::Snapshot);
        snapshot.channel = Some(channel.clone());
        snapshot
    }

    /// Queues `outgoing` in `batch`, with the snapshot held for it and the
    /// cycle's checkpoint if they are due right after it.
    fn take(&mut self, outgoing: Outgoing, snapshots: &mut Snapshots, batch: &mut Vec<Pending>) {
        let channel = &outgoing.record.channel;
        let subject = self.cluster.settings.record_subject(channel.as_str());
        let payload = encode(&outgoing.record, outgoing.seq);
        let record = self.message(subject, payload, Kind::Record);
        batch.push(record);
        if let Some(snapshot) = snapshots.taken(channel, outgoing.seq) {
            let snapshot = self.snapshot(channel, snapshot);
            batch.push(snapshot);
        }
        self.checkpoint(snapshots, batch);
    }

    /// Queues the cycle's checkpoint if all its snapshots are queued.
    fn checkpoint(&mut self, snapshots: &mut Snapshots, batch: &mut Vec<Pending>) {
        if let Some(start) = snapshots.checkpoint() {
            let subject = self.cluster.settings.checkpoint_subject();
            let checkpoint = self.message(subject, Bytes::from(start.to_string()), Kind::Meta);
            batch.push(checkpoint);
        }
    }

    fn headers(&self, message: &Pending, expected_last: u64) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", message.id.as_str());
        headers.insert(
            "Nats-Expected-Last-Sequence",
            expected_last.to_string().as_str(),
        );
        headers
    }

    /// Publishes what the stage queues until the queue closes (the stage
    /// stopped) or the writer is fenced; a heartbeat when idle for a third
    /// of the lease keeps standby ingests from claiming the stream.
    ///
    /// `directory` holds the channels of the stage that feeds `queue`: the
    /// snapshots are read from it (see `snapshot.rs`).
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<Outgoing>,
        directory: Arc<Directory>,
        shutdown: CancellationToken,
    ) {
        let status = self.cluster.status.clone();
        status.set_phase(Phase::Writing);
        let settings = &self.cluster.settings;
        let idle = settings.writer_lease / 3;
        let mut snapshots = Snapshots::new(
            settings.snapshot_interval,
            settings.snapshot_interval_records,
            directory,
            self.cluster.client.server_info().max_payload,
        );
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if snapshots.due() {
                // `batch` is empty: everything taken is stored, up to `last`.
                for (channel, payload) in snapshots.cycle(self.last) {
                    let snapshot = self.snapshot(&channel, payload);
                    batch.push(snapshot);
                }
                self.checkpoint(&mut snapshots, &mut batch);
            }
            if batch.is_empty() {
                let wake = snapshots.next_due();
                let first = tokio::select! {
                    next = queue.recv() => match next {
                        Some(outgoing) => Some(outgoing),
                        None => return,
                    },
                    () = tokio::time::sleep(idle) => None,
                    () = sleep_until(wake), if wake.is_some() => continue,
                };
                match first {
                    Some(outgoing) => {
                        self.take(outgoing, &mut snapshots, &mut batch);
                        // A batch ends where a snapshot cycle falls due, so
                        // a checkpoint follows at most that many records.
                        while batch.len() < BATCH && !snapshots.due() {
                            match queue.try_recv() {
                                Ok(outgoing) => self.take(outgoing, &mut snapshots, &mut batch),
                                Err(_) => break,
                            }
                        }
                    }
                    None => batch.push(self.heartbeat()),
                }
            }
            let stored = self.store(&batch).await;
            batch.clear();
            self.delete_superseded().await;
            if stored.is_err() {
                status.set_phase(Phase::Fenced);
                tracing::error!(
                    stream = %self.cluster.settings.stream,
                    "another node wrote to the NATS stream: this ingest stops publishing \
                     (fenced) and holds its records; stop one of the two ingests"
                );
                // Keep the queue open so the state task waits instead of
                // applying records no other node will see.
                shutdown.cancelled().await;
                return;
            }
        }
    }

    /// Stores `batch` in order: pipelined; the first message not
    /// acknowledged as predicted is sent again alone until it is stored,
    /// then the rest are pipelined again (a copy already stored is
    /// de-duplicated and acknowledged with its sequence).
    async fn store(&mut self, mut batch: &[Pending]) -> Result<(), Fenced> {
        while !batch.is_empty() {
            let stored = self.pipeline(batch).await;
            batch = &batch[stored..];
            if let Some((first, rest)) = batch.split_first() {
                self.store_one(first, true).await?;
                batch = rest;
            }
        }
        Ok(())
    }

    /// Sends every message of `batch` before awaiting the acks; how many,
    /// from the first, were stored at the sequences predicted.
    async fn pipeline(&mut self, batch: &[Pending]) -> usize {
        let mut acks = Vec::with_capacity(batch.len());
        for (i, message) in batch.iter().enumerate() {
            let headers = self.headers(message, self.last + i as u64);
            let sent = self
                .cluster
                .js
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(_) => break,
            }
        }
        let mut stored = 0;
        for ack in acks {
            match ack.await {
                Ok(ack) if ack.sequence == self.last + 1 => {
                    self.last = ack.sequence;
                    self.stored(&batch[stored]);
                    stored += 1;
                }
                _ => break,
            }
        }
        stored
    }

    /// Stores one message, retrying until it is stored; `Fenced` if the
    /// stream moved on without it.
    async fn store_one(&mut self, message: &Pending, retry: bool) -> Result<(), Fenced> {
        let status = self.cluster.status.clone();
        let mut backoff = Duration::from_millis(50);
        let mut again = retry;
        loop {
            if again {
                status.publish_retries.fetch_add(1, Ordering::Relaxed);
            }
            again = true;
            let headers = self.headers(message, self.last);
            let sent = self
                .cluster
                .js
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await;
            let outcome = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => {
                    // A duplicate was stored by an earlier try whose ack
                    // was lost; either way it is now in the stream.
                    self.last = self.last.max(ack.sequence);
                    self.stored(message);
                    status.set_connected(true);
                    return Ok(());
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Err(Fenced),
                Err(e) => {
                    status.set_connected(
                        self.cluster.client.connection_state()
                            == async_nats::connection::State::Connected,
                    );
                    tracing::warn!(
                        "publishing to NATS failed ({e}); records are held and sent again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Deletes the snapshots newer ones replaced, so the stream keeps
    /// about one per channel. (Not `Nats-Rollup`: with nats-server 2.9.10
    /// an ordered consumer skipped the records before a rolled-up message.) A
    /// delete that fails leaves a spare snapshot, bounded like the
    /// channel's records by `nats.max_records_per_channel`.
    async fn delete_superseded(&mut self) {
        /// Deletes in flight at once.
        const AT_ONCE: usize = 64;
        let stream = &self.cluster.stream;
        for chunk in self.superseded.chunks(AT_ONCE) {
            let deletes = chunk.iter().map(|&sequence| async move {
                let delete = stream.delete_message(sequence);
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), delete).await {
                    tracing::debug!(sequence, "cannot delete a replaced snapshot: {e}");
                }
            });
            futures_util::future::join_all(deletes).await;
        }
        self.superseded.clear();
    }

    fn stored(&mut self, message: &Pending) {
        let status = &self.cluster.status;
        status.position.store(self.last, Ordering::Relaxed);
        status.stream_last.fetch_max(self.last, Ordering::Relaxed);
        match message.kind {
            Kind::Record => {
                status.pending.fetch_sub(1, Ordering::Relaxed);
                status.published.fetch_add(1, Ordering::Relaxed);
                status.stored.notify_waiters();
            }
            Kind::Snapshot => {
                status.snapshots_published.fetch_add(1, Ordering::Relaxed);
                if let Some(channel) = &message.channel {
                    if let Some(old) = self.snapshots.insert(channel.clone(), self.last) {
                        self.superseded.push(old);
                    }
                }
            }
            Kind::Meta => {}
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
