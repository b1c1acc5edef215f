//! Following the stream: every node's state task while it is not the
//! writer, and the stage a `--role both` node serves its clients from.
//!
//! **Catch-up from snapshots.** A node loads every channel's latest
//! snapshot and reads the stream from the last checkpoint (see
//! `snapshot.rs`; without one, from its start) into its own state
//! stage, applying each record at the seq it carries
//! ([`StateStage::apply_at`]): same patches, same order, same seqs, so the
//! same states on every node. `/healthz` answers 503 until the node has
//! applied everything that was in the stream when it started.
//!
//! **NATS down.** The ordered consumer resumes after the last sequence it
//! delivered when the connection returns, so nothing is skipped; meanwhile
//! the node serves its last state.
//!
//! **A hole.** A record whose seq is past its channel's next one (the
//! stream lost records, say by an operator's purge) is not applied: the
//! channel waits for its next snapshot in the stream, which replaces its
//! state ([`StateStage::replace`]) and resyncs its subscribers.
//!
//! **Becoming the writer.** An ingest that has caught up watches the
//! stream's last sequence; once it has not moved for `nats.writer_lease_ms`
//! (the writer heartbeats every third of that) and this node has applied
//! all of it, it claims the stream ([`Writer::claim`]) and returns its
//! stage to run on the feeds.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::publish::{ReplicationTap, Writer};
use super::{decode, snapshot, Cluster, Phase, Role};
use crate::channel::ChannelName;
use crate::engine::fanout::Event;
use crate::engine::{self, AtSeq, HandoffItem, HandoffProducer, StateStage};
use crate::feed::RingItem;
use crate::metrics::Metrics;
use crate::record::FeedRecord;
use crate::ring::{Consumer, Ring};

/// How often the follower asks the stream how far it is and checks the
/// connection (at most; a short lease asks more often).
const TICK: Duration = Duration::from_millis(250);

/// A consumer that delivers nothing this long while the stream has more
/// is replaced by a new one from the last applied sequence.
const STALLED: Duration = Duration::from_secs(2);

/// The channel where a node that serves clients says whether what they see
/// is live: made by the node alone (`StateStage::apply_local`), never taken
/// from the stream.
pub const STATUS_CHANNEL: &str = "feeds.nats";

/// The state task of a node with `--nats`: follows the stream; an ingest
/// that becomes the writer then applies its feeds' records as the
/// single-process server does and publishes each one.
pub async fn run(
    cluster: Arc<Cluster>,
    stage: StateStage,
    feed: Consumer<RingItem>,
    handoff: HandoffProducer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if cluster.settings.role == Role::Both {
        return run_both(cluster, stage, feed, handoff, metrics, shutdown).await;
    }
    let part = Part {
        claims: cluster.settings.role.ingests(),
        reports: true,
        serves: true,
    };
    let followed = follow(&cluster, stage, Some(&handoff), &metrics, &shutdown, part).await;
    if let Some((stage, writer)) = followed {
        write(cluster, stage, writer, feed, handoff, metrics, shutdown).await;
    }
}

/// `--role both`: the ingest's stage is a private one ([`StateStage::detached`])
/// that only feeds the writer, and the clients are served from a second
/// stage that follows the stream like an edge's. So a client sees a
/// record only once NATS has stored it: a crash of this node cannot have
/// shown a record that a restarted writer then numbers differently.
async fn run_both(
    cluster: Arc<Cluster>,
    stage: StateStage,
    feed: Consumer<RingItem>,
    handoff: HandoffProducer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let private = stage.detached();
    let serving = {
        let (cluster, metrics, shutdown) = (cluster.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let part = Part {
                claims: false,
                reports: false,
                serves: true,
            };
            follow(&cluster, stage, Some(&handoff), &metrics, &shutdown, part).await;
        })
    };
    let part = Part {
        claims: true,
        reports: true,
        serves: false,
    };
    let followed = follow(&cluster, private, None, &metrics, &shutdown, part).await;
    if let Some((stage, writer)) = followed {
        // Nothing serves the private stage's channels: its hand-offs go to
        // a ring no one reads (a ring without consumers never fills).
        let nowhere: Ring<HandoffItem> = Ring::with_consumers(2, 1);
        let nowhere = HandoffProducer {
            producer: nowhere.producer(),
            shards: 0,
        };
        write(cluster, stage, writer, feed, nowhere, metrics, shutdown).await;
    }
    let _ = serving.await;
}

/// The writer's life: the stage applies the feeds' records, assigning
/// seqs, and the writer publishes each one.
async fn write(
    cluster: Arc<Cluster>,
    mut stage: StateStage,
    writer: Writer,
    feed: Consumer<RingItem>,
    handoff: HandoffProducer,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (tap, queue) = ReplicationTap::new(
        cluster.settings.max_pending_records,
        cluster.client.server_info().max_payload,
        cluster.status.clone(),
    );
    stage.set_replication(Some(tap));
    tracing::info!(
        stream = %cluster.settings.stream,
        "this node is now the stream's writer: it assigns seqs and publishes every record"
    );
    let directory = stage.directory().clone();
    let writing = tokio::spawn(writer.run(queue, directory, shutdown.clone()));
    engine::run_state(stage, feed, handoff, metrics, shutdown).await;
    // The stage is gone with its tap: the writer stores what is queued.
    let _ = writing.await;
}

/// What one follower does besides applying the stream.
#[derive(Clone, Copy)]
struct Part {
    /// May become the writer (an ingest).
    claims: bool,
    /// Sets the node's phase and stream position.
    reports: bool,
    /// Clients are served from its stage: `/healthz` waits for it.
    serves: bool,
}

/// Follows the stream until shutdown (`None`) or, if it `claims`, until
/// it becomes the writer (its stage and writer).
async fn follow(
    cluster: &Arc<Cluster>,
    mut stage: StateStage,
    handoff: Option<&HandoffProducer>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    part: Part,
) -> Option<(StateStage, Writer)> {
    let status = cluster.status.clone();
    let lease = cluster.settings.writer_lease;
    let target = loop {
        match last_sequence(cluster).await {
            Some(last) => break last,
            None => {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(TICK) => continue,
                }
            }
        }
    };
    if part.reports {
        status.stream_last.store(target, Ordering::Relaxed);
    }
    let mut follower = Follower {
        stage: &mut stage,
        handoff,
        metrics,
        shutdown,
        broken: HashSet::new(),
    };
    let mut position = follower.start_from_snapshots(cluster).await?;
    let mut caught_up = false;
    let mut messages = None;
    let mut tick = tokio::time::interval(TICK.min(lease / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stream's last sequence and when it was first seen so.
    let mut last_seen = (target, Instant::now());
    let record_prefix = cluster.settings.record_prefix();
    let snapshot_prefix = cluster.settings.snapshot_prefix();
    // The position and when it last moved: a consumer that stops
    // delivering while the stream has more (NATS restarted and its
    // consumer with it) is replaced.
    let mut progress = (position, Instant::now());
    // What `STATUS_CHANNEL` says now: live or not, and why.
    let mut shown: Option<(bool, String)> = None;
    loop {
        if !caught_up && position >= target {
            caught_up = true;
            if part.reports {
                status.set_phase(if part.claims {
                    Phase::Standby
                } else {
                    Phase::Following
                });
            }
            if part.serves {
                status.set_serving();
            }
            tracing::info!(position, "caught up with the NATS stream");
        }
        if messages.is_none() {
            messages = open(cluster, position).await;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            next = next_message(&mut messages) => match next {
                Some(Ok(message)) => {
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    let subject = message.subject.as_str();
                    let payload = &message.payload;
                    let applied = if let Some(channel) = subject.strip_prefix(&record_prefix) {
                        if !caught_up {
                            status.catchup_records.fetch_add(1, Ordering::Relaxed);
                        }
                        follower.record(cluster, channel, payload, sequence).await
                    } else if let Some(channel) = subject.strip_prefix(&snapshot_prefix) {
                        follower.snapshot(cluster, channel, payload).await
                    } else {
                        true
                    };
                    if !applied {
                        return None;
                    }
                    position = position.max(sequence);
                    if part.reports {
                        status.position.store(position, Ordering::Relaxed);
                        status.stream_last.fetch_max(position, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => {
                    status.set_connected(connected(cluster));
                    tracing::warn!("following the NATS stream: {e}; the consumer resumes after {position}");
                }
                // The consumer ended: open another after `position`.
                None => messages = None,
            },
            _ = tick.tick() => {
                status.set_connected(connected(cluster));
                if let Some(last) = last_sequence(cluster).await {
                    if part.reports {
                        status.stream_last.store(last, Ordering::Relaxed);
                    }
                    if last != last_seen.0 {
                        last_seen = (last, Instant::now());
                    }
                }
                if part.serves && caught_up {
                    let now = liveness(cluster, last_seen.1, lease);
                    if shown.as_ref() != Some(&now) {
                        if !follower.status(&now).await {
                            return None;
                        }
                        shown = Some(now);
                    }
                }
                if position != progress.0 {
                    progress = (position, Instant::now());
                } else if last_seen.0 > position && progress.1.elapsed() >= STALLED {
                    tracing::info!(position, "the NATS consumer delivers nothing; following again from here");
                    messages = None;
                    progress = (position, Instant::now());
                }
                let lapsed = last_seen.1.elapsed() >= lease;
                if part.claims && caught_up && lapsed && position >= last_seen.0 && connected(cluster) {
                    match Writer::claim(cluster.clone(), position).await {
                        Some(writer) => return Some((stage, writer)),
                        None => tracing::info!("another ingest claimed the stream first; following it"),
                    }
                }
            }
        }
    }
}

/// What applying stream messages to a stage needs.
struct Follower<'a> {
    stage: &'a mut StateStage,
    /// Where what the shards must see goes (`None`: a stage nothing serves).
    handoff: Option<&'a HandoffProducer>,
    metrics: &'a Metrics,
    shutdown: &'a CancellationToken,
    /// Channels that met a hole in the stream: they wait for a snapshot.
    broken: HashSet<String>,
}

impl Follower<'_> {
    /// Loads every channel's latest snapshot if the stream has a
    /// checkpoint; the stream position to read on from (0: the whole
    /// stream). `None` on shutdown.
    async fn start_from_snapshots(&mut self, cluster: &Cluster) -> Option<u64> {
        let Some(start) = snapshot::checkpoint_start(cluster).await else {
            return Some(0);
        };
        if start <= 1 {
            return Some(0);
        }
        let Some(snapshots) = snapshot::latest(cluster).await else {
            tracing::warn!("cannot read the snapshots in the NATS stream: reading all of it");
            return Some(0);
        };
        for (channel, payload) in snapshots {
            if !self.snapshot(cluster, &channel, &payload).await {
                return None;
            }
        }
        tracing::info!(
            start,
            "loaded the NATS stream's snapshots; reading on from its checkpoint"
        );
        Some(start - 1)
    }

    /// Publishes `(live, why)` on `STATUS_CHANNEL` to this node's clients;
    /// false if shutdown came first.
    async fn status(&mut self, (live, why): &(bool, String)) -> bool {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let serde_json::Value::Object(data) = serde_json::json!({
            "state": if *live { "up" } else { "down" },
            "reason": why,
            "since": since,
        }) else {
            unreachable!("a JSON object")
        };
        let record = FeedRecord {
            channel: ChannelName::new(STATUS_CHANNEL).expect("a valid channel name"),
            data,
            ts: None,
            ingest_ns: self.metrics.mono_ns(),
        };
        let event = self
            .stage
            .apply_local(&Arc::new(record), self.metrics.mono_ns());
        self.hand_off(event).await
    }

    /// Applies the record in `payload` (stream `sequence`, on `channel`)
    /// at its seq and hands off what the shards must see; false if
    /// shutdown came first.
    async fn record(
        &mut self,
        cluster: &Cluster,
        channel: &str,
        payload: &[u8],
        sequence: u64,
    ) -> bool {
        if channel == STATUS_CHANNEL {
            // Each node makes its own; a producer's would collide with it.
            return true;
        }
        let status = &cluster.status;
        let (record, seq) = match decode(channel, payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(%channel, sequence,
                    "a stream message is not a tickcast record ({e}); skipped");
                return true;
            }
        };
        match self
            .stage
            .apply_at(&Arc::new(record), seq, self.metrics.mono_ns())
        {
            AtSeq::Applied(event) => {
                status.applied.fetch_add(1, Ordering::Relaxed);
                self.hand_off(event).await
            }
            AtSeq::Seen => true,
            AtSeq::Gap { expected } => {
                status.gaps.fetch_add(1, Ordering::Relaxed);
                // Logged once per hole: every later record of the channel
                // is a gap too until its next snapshot.
                if self.broken.insert(channel.to_owned()) {
                    tracing::warn!(%channel, expected, got = seq,
                        "the NATS stream lacks records of this channel: its subscribers \
                         are resynced to its next snapshot");
                }
                true
            }
        }
    }

    /// Applies a channel's snapshot if it is ahead of the channel (a
    /// catch-up, or records this node could not get): the state is
    /// replaced and subscribers get a resync snapshot. False if shutdown
    /// came first.
    async fn snapshot(&mut self, cluster: &Cluster, channel: &str, payload: &[u8]) -> bool {
        if channel == STATUS_CHANNEL {
            return true;
        }
        let status = &cluster.status;
        // Most snapshots a follower meets are at its channel's seq (it read
        // the record before them): skip those without parsing the state.
        let held = self.stage.directory().get(channel).map(|c| c.lock().seq);
        if let (Some(seq), Some(held)) = (leading_seq(payload), held) {
            if seq <= held {
                return true;
            }
        }
        let (snapshot, seq) = match decode(channel, payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(%channel, "a stream snapshot is not a tickcast state ({e}); skipped");
                return true;
            }
        };
        match self
            .stage
            .replace(&Arc::new(snapshot), seq, self.metrics.mono_ns())
        {
            AtSeq::Applied(event) => {
                status.snapshots_loaded.fetch_add(1, Ordering::Relaxed);
                if self.broken.remove(channel) {
                    status.resyncs.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%channel, seq, "resynced to the channel's snapshot");
                }
                self.hand_off(event).await
            }
            _ => true,
        }
    }

    async fn hand_off(&self, event: Option<Event>) -> bool {
        match (event, self.handoff) {
            (Some(event), Some(handoff)) => engine::hand_off(handoff, event, self.shutdown).await,
            _ => true,
        }
    }
}

/// The seq at the start of a payload as the writer writes it
/// (`{"seq":N,...`), without parsing the rest.
fn leading_seq(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

type Messages = pull::Ordered;

async fn next_message(
    messages: &mut Option<Messages>,
) -> Option<Result<async_nats::jetstream::Message, pull::OrderedError>> {
    match messages {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

/// An ordered consumer of everything after `position`; `None` (tried again
/// at the next turn) while NATS cannot make one.
async fn open(cluster: &Cluster, position: u64) -> Option<Messages> {
    let config = pull::OrderedConfig {
        filter_subject: format!("{}.>", cluster.settings.prefix),
        deliver_policy: match position {
            0 => DeliverPolicy::All,
            p => DeliverPolicy::ByStartSequence {
                start_sequence: p + 1,
            },
        },
        ..Default::default()
    };
    let made = async {
        let consumer = cluster
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), made).await {
        Ok(Ok(messages)) => Some(messages),
        Ok(Err(e)) => {
            tracing::warn!("cannot follow the NATS stream yet: {e}");
            tokio::time::sleep(TICK).await;
            None
        }
        Err(_) => None,
    }
}

/// The stream's last sequence, if NATS answers within a second.
async fn last_sequence(cluster: &Cluster) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(1), cluster.stream.get_info()).await {
        Ok(Ok(info)) => Some(info.state.last_sequence),
        _ => None,
    }
}

fn connected(cluster: &Cluster) -> bool {
    cluster.client.connection_state() == async_nats::connection::State::Connected
}

/// Whether what a follower serves is live, and why not: NATS must be
/// reachable, and the stream must have moved within `lease` (a writer
/// appends a heartbeat at least every third of it, idle or not).
fn liveness(cluster: &Cluster, stream_moved: Instant, lease: Duration) -> (bool, String) {
    if !connected(cluster) {
        return (
            false,
            "NATS is unreachable: this node serves the last state it has".into(),
        );
    }
    if stream_moved.elapsed() >= lease {
        return (
            false,
            format!(
                "the stream has not moved for {} ms (nats.writer_lease_ms): no ingest is writing; \
                 this node serves the last state it has",
                lease.as_millis()
            ),
        );
    }
    (true, "following the stream".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seq_is_read_from_the_start_of_a_payload() {
        assert_eq!(
            super::leading_seq(br#"{"seq":42,"ts":0,"data":{}}"#),
            Some(42)
        );
        assert_eq!(super::leading_seq(br#"{"ts":0,"seq":42}"#), None);
        assert_eq!(super::leading_seq(br#"{"seq":"#), None);
        assert_eq!(
            super::leading_seq(br#"{"seq":99999999999999999999999,"#),
            None
        );
    }
}
