//! Snapshots in the stream: what lets a node start from a channel's
//! latest state instead of its whole history, and what an edge resyncs to
//! when the stream lacks some of a channel's records.
//!
//! - `<prefix>.snap.<channel>`: `{"seq":N,"ts":0,"data":{state}}`, the
//!   channel's whole state at seq N. The writer deletes the one a newer
//!   snapshot replaces, so the stream keeps about one per channel.
//! - `<prefix>.meta.checkpoint`: a stream sequence P: every record stored
//!   before P is covered by a snapshot stored before this checkpoint (a
//!   snapshot at or past the record's seq). A catch-up loads every
//!   channel's latest snapshot and then reads the stream from P.
//!
//! Snapshots and records are in one stream, so a follower meets them in
//! the order they were stored: an edge that met a hole in a channel's
//! records takes the channel's next snapshot as it comes, and the records
//! after it follow.
//!
//! **The cycle** (the writer, every `nats.snapshot_interval_ms` or
//! `nats.snapshot_interval_records` records): the writer has stored every
//! message it took so far, up to stream sequence B. For each channel with a
//! record taken since its last snapshot, it reads the channel's state and
//! seq k. The state stage may be ahead of the writer (records up to k are
//! applied, some still queued): then the snapshot is held back and
//! published right after record k, so in the stream a snapshot never comes
//! before a record it includes, and an edge that reads the stream in order
//! never sees a snapshot ahead of the records before it (it would take it
//! for a hole). Once all of the cycle's snapshots are queued, the
//! checkpoint B + 1 follows them. A new writer counts every channel as
//! changed, since the previous writer's last records may have no snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;

use super::Cluster;
use crate::channel::ChannelName;
use crate::engine::directory::Directory;

/// The writer's side: which channels need a snapshot, and when.
pub(super) struct Snapshots {
    interval: Duration,
    every_records: u64,
    directory: Arc<Directory>,
    last_cycle: Instant,
    /// Records taken since the last cycle.
    records: u64,
    /// Channels with records taken since their last snapshot, and the
    /// seq of the last one taken.
    dirty: HashMap<ChannelName, u64>,
    /// Snapshots read ahead of the writer: published right after the
    /// record with their seq.
    held: HashMap<ChannelName, (u64, Bytes)>,
    /// The cycle's checkpoint, published once nothing is held.
    checkpoint: Option<u64>,
    /// NATS's largest message: a bigger snapshot cannot be stored.
    max_payload: usize,
    /// Every snapshot of the cycle could be stored: without one, its
    /// checkpoint would promise what the stream lacks, so it is skipped.
    complete: bool,
}

impl Snapshots {
    /// Every channel in `directory` counts as changed (see the module doc).
    pub fn new(
        interval: Duration,
        every_records: u64,
        directory: Arc<Directory>,
        max_payload: usize,
    ) -> Self {
        let dirty = directory
            .all()
            .into_iter()
            .map(|cell| {
                let seq = cell.lock().seq;
                (cell.name.clone(), seq)
            })
            .collect();
        Self {
            interval,
            every_records,
            directory,
            last_cycle: Instant::now(),
            records: 0,
            dirty,
            held: HashMap::new(),
            checkpoint: None,
            max_payload,
            complete: true,
        }
    }

    /// Whether a cycle should start now.
    pub fn due(&self) -> bool {
        self.checkpoint.is_none()
            && !self.dirty.is_empty()
            && (self.records >= self.every_records || self.last_cycle.elapsed() >= self.interval)
    }

    /// When the next cycle falls due by time, if one can.
    pub fn next_due(&self) -> Option<Instant> {
        (self.checkpoint.is_none() && !self.dirty.is_empty())
            .then(|| self.last_cycle + self.interval)
    }

    /// Starts a cycle; `stored` is the stream's last sequence, holding
    /// every message taken so far. Returns the snapshots to publish now.
    pub fn cycle(&mut self, stored: u64) -> Vec<(ChannelName, Bytes)> {
        let mut ready = Vec::new();
        let mut too_big = 0;
        for (name, taken) in self.dirty.drain() {
            let Some(cell) = self.directory.get(name.as_str()) else {
                continue;
            };
            let (seq, payload) = {
                let channel = cell.lock();
                (channel.seq, payload(channel.seq, &channel.state))
            };
            if payload.len() > self.max_payload {
                too_big += 1;
            } else if seq > taken {
                self.held.insert(name, (seq, payload));
            } else {
                ready.push((name, payload));
            }
        }
        if too_big > 0 {
            tracing::warn!(
                channels = too_big,
                max_payload = self.max_payload,
                "channel states larger than NATS's max_payload have no snapshot: \
                 catch-ups read the stream from an older checkpoint (raise max_payload \
                 in nats-server, or lower limits.max_state_bytes)"
            );
        }
        self.complete = too_big == 0;
        self.last_cycle = Instant::now();
        self.records = 0;
        self.checkpoint = Some(stored + 1);
        ready
    }

    /// The writer took record `seq` of `channel`: the snapshot to publish
    /// right after it, if one was held for it.
    pub fn taken(&mut self, channel: &ChannelName, seq: u64) -> Option<Bytes> {
        self.records += 1;
        if let Some((held, _)) = self.held.get(channel) {
            if *held == seq {
                return self.held.remove(channel).map(|(_, payload)| payload);
            }
            if *held > seq {
                // The held snapshot includes it: not a change to snapshot
                // again (and marking it would hold the next cycle's
                // snapshot for a record already taken).
                return None;
            }
        }
        self.dirty.insert(channel.clone(), seq);
        None
    }

    /// The cycle's checkpoint, once all its snapshots are queued.
    pub fn checkpoint(&mut self) -> Option<u64> {
        if self.held.is_empty() {
            self.checkpoint.take().filter(|_| self.complete)
        } else {
            None
        }
    }
}

/// A snapshot's payload less its state: `{"seq":N,"ts":0,"data":}` with
/// the seq at its longest (20 digits).
pub const ENVELOPE_BYTES: usize = r#"{"seq":,"ts":0,"data":}"#.len() + 20;

/// A snapshot's payload: the record shape, with the whole state as data.
fn payload(seq: u64, state: &crate::record::JsonMap) -> Bytes {
    let data = serde_json::to_string(state).expect("serializing a JSON map");
    Bytes::from(format!("{{\"seq\":{seq},\"ts\":0,\"data\":{data}}}"))
}

/// Where a catch-up reads the stream from: the latest checkpoint's stream
/// sequence, or 1 (the whole stream) without one.
pub(super) async fn checkpoint_start(cluster: &Cluster) -> Option<u64> {
    let subject = cluster.settings.checkpoint_subject();
    let asked = cluster.stream.get_last_raw_message_by_subject(&subject);
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(message)) => std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.parse().ok()),
        Ok(Err(e))
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Some(1)
        }
        _ => None,
    }
}

/// Every channel's latest snapshot: (channel, payload). `None` if NATS
/// could not give them all (the caller reads the whole stream instead).
pub(super) async fn latest(cluster: &Cluster) -> Option<Vec<(String, Bytes)>> {
    let prefix = cluster.settings.snapshot_prefix();
    let config = pull::OrderedConfig {
        filter_subject: format!("{prefix}>"),
        deliver_policy: DeliverPolicy::LastPerSubject,
        ..Default::default()
    };
    let read = async {
        let mut consumer = cluster.stream.create_consumer(config).await.ok()?;
        let expected = consumer.info().await.ok()?.num_pending;
        let mut snapshots = Vec::new();
        if expected == 0 {
            return Some(snapshots);
        }
        let mut messages = consumer.messages().await.ok()?;
        // A snapshot deleted (replaced) after the consumer counted it is
        // never delivered: a pause ends the read, and the caller reads
        // the whole stream instead.
        while let Some(message) = tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .ok()?
        {
            let message = message.ok()?;
            let pending = message.info().ok()?.pending;
            if let Some(channel) = message.subject.as_str().strip_prefix(&prefix) {
                snapshots.push((channel.to_owned(), message.payload.clone()));
            }
            if pending == 0 {
                return Some(snapshots);
            }
        }
        None
    };
    // Bounded: a stream of snapshots that does not end in time is read
    // the slow way (the whole stream) instead.
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::seam_tests::{numbered, test_stage};
    use crate::record::FeedRecord;

    fn record(n: u64) -> Arc<FeedRecord> {
        numbered("quotes.S", n)
    }

    /// The state stage runs ahead of the writer: a snapshot read then waits
    /// for the record with its seq, the records it includes do not count
    /// as changes, and the checkpoint comes once it is queued.
    #[test]
    fn a_snapshot_read_ahead_of_the_writer_follows_its_record() {
        let (mut stage, directory) = test_stage();
        for n in 1..=3 {
            stage.apply(&record(n), 0);
        }
        let name = ChannelName::new("quotes.S").unwrap();
        // A new writer: the channel counts as changed, at its seq 3.
        let mut snapshots = Snapshots::new(Duration::from_secs(3600), 1, directory, 1 << 20);
        assert!(!snapshots.due(), "neither a record nor an hour yet");
        for n in 4..=6 {
            stage.apply(&record(n), 0);
        }
        assert_eq!(snapshots.taken(&name, 4), None);
        assert!(snapshots.due());
        assert!(snapshots.cycle(10).is_empty(), "the state is at 6: held");
        assert_eq!(snapshots.checkpoint(), None, "not before the snapshot");
        assert_eq!(snapshots.taken(&name, 5), None);
        let held = snapshots
            .taken(&name, 6)
            .expect("the snapshot after record 6");
        let (state, seq) = super::super::decode("quotes.S", &held).unwrap();
        assert_eq!((seq, state.data.get("n")), (6, Some(&6.into())));
        assert_eq!(snapshots.checkpoint(), Some(11));
        assert!(!snapshots.due(), "5 and 6 are in the snapshot: no change");
        stage.apply(&record(7), 0);
        assert_eq!(snapshots.taken(&name, 7), None);
        assert!(snapshots.due());
        assert_eq!(snapshots.cycle(20).len(), 1, "at 7, as taken: ready");
        assert_eq!(snapshots.checkpoint(), Some(21));
    }

    /// A state NATS cannot carry has no snapshot, and the cycle then has
    /// no checkpoint (it would promise a snapshot the stream lacks).
    #[test]
    fn a_cycle_missing_a_snapshot_has_no_checkpoint() {
        let (mut stage, directory) = test_stage();
        stage.apply(&record(1), 0);
        let mut snapshots = Snapshots::new(Duration::ZERO, 1, directory, 8);
        assert!(snapshots.due());
        assert!(snapshots.cycle(5).is_empty());
        assert_eq!(snapshots.checkpoint(), None);
        assert!(!snapshots.due(), "nothing changed since");
    }
}
