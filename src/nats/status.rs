//! What a node's NATS side is doing, for `/healthz` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use super::Role;
use crate::feed::{FeedStats, FeedStatus};

/// Where a node stands with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Replaying the stream up to where it was at start-up: not ready.
    CatchingUp = 0,
    /// An edge that has caught up and follows the stream.
    Following = 1,
    /// An ingest, caught up, waiting for the live writer's lease to lapse.
    Standby = 2,
    /// The stream's writer: assigns seqs and publishes.
    Writing = 3,
    /// A writer whose publish JetStream refused because another node wrote
    /// to the stream: it publishes nothing more.
    Fenced = 4,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::CatchingUp => "catching_up",
            Phase::Following => "following",
            Phase::Standby => "standby",
            Phase::Writing => "writing",
            Phase::Fenced => "fenced",
        }
    }

    const ALL: [Phase; 5] = [
        Phase::CatchingUp,
        Phase::Following,
        Phase::Standby,
        Phase::Writing,
        Phase::Fenced,
    ];
}

/// Counters and flags shared by the NATS tasks and the HTTP side.
#[derive(Debug)]
pub struct ClusterStatus {
    pub role: Role,
    /// The `nats` entry of the feed list: running while connected and in
    /// step; starting while catching up (or an edge is cut off: it serves
    /// its last state); failed on a writer that cannot publish or was fenced.
    feed: Arc<FeedStats>,
    phase: AtomicU8,
    connected: AtomicBool,
    /// The last stream sequence this node applied (follower) or stored
    /// (writer).
    pub position: AtomicU64,
    /// The stream's last sequence, as last asked.
    pub stream_last: AtomicU64,
    /// Records accepted, not yet stored in the stream (writer).
    pub pending: AtomicU64,
    pub published: AtomicU64,
    pub publish_retries: AtomicU64,
    /// Records applied from the stream (follower).
    pub applied: AtomicU64,
    /// Records not applied because seqs before them were missing.
    pub gaps: AtomicU64,
    /// Snapshots this node stored in the stream (writer).
    pub snapshots_published: AtomicU64,
    /// Snapshots that set a channel's state here (catch-up, or a hole).
    pub snapshots_loaded: AtomicU64,
    /// Records read from the stream while catching up.
    pub catchup_records: AtomicU64,
    /// Channels whose subscribers were resynced to a snapshot because the
    /// stream lacked some of their records.
    pub resyncs: AtomicU64,
    /// The stage clients are served from has caught up (on a `both` node
    /// it follows the stream apart from the writer's).
    serving: AtomicBool,
    /// Signalled whenever the writer has stored records, for a state task
    /// waiting for `pending` to fall under the bound.
    pub(super) stored: tokio::sync::Notify,
}

impl ClusterStatus {
    pub fn new(role: Role, feed: Arc<FeedStats>) -> Self {
        feed.set_status(FeedStatus::Starting);
        Self {
            role,
            feed,
            phase: AtomicU8::new(Phase::CatchingUp as u8),
            connected: AtomicBool::new(true),
            position: AtomicU64::new(0),
            stream_last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_retries: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            snapshots_published: AtomicU64::new(0),
            snapshots_loaded: AtomicU64::new(0),
            catchup_records: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            stored: tokio::sync::Notify::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        let raw = self.phase.load(Ordering::Relaxed);
        Phase::ALL
            .into_iter()
            .find(|p| *p as u8 == raw)
            .unwrap_or(Phase::CatchingUp)
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.report();
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.report();
    }

    /// The stage clients are served from has caught up.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    fn report(&self) {
        let status = match (self.phase(), self.connected()) {
            (Phase::Fenced, _) | (Phase::Writing, false) => FeedStatus::Failed,
            (Phase::CatchingUp, _) | (_, false) => FeedStatus::Starting,
            _ => FeedStatus::Running,
        };
        self.feed.set_status(status);
    }

    /// Why `/healthz` should answer 503, if it should. An edge cut off
    /// from NATS stays ready: it serves its last state and catches up
    /// when NATS returns (`/metrics` says it is disconnected).
    pub fn not_ready(&self) -> Option<String> {
        let catching_up = !self.serving.load(Ordering::Relaxed);
        match self.phase() {
            _ if catching_up => Some(format!(
                "not ready: catching up with the NATS stream (applied {} of {})\n",
                self.position.load(Ordering::Relaxed),
                self.stream_last.load(Ordering::Relaxed)
            )),
            Phase::CatchingUp => Some(format!(
                "not ready: catching up with the NATS stream (applied {} of {})\n",
                self.position.load(Ordering::Relaxed),
                self.stream_last.load(Ordering::Relaxed)
            )),
            Phase::Fenced => Some(
                "not ready: another ingest writes to the NATS stream; this one stopped \
                 publishing (fenced)\n"
                    .into(),
            ),
            Phase::Writing if !self.connected() => Some(
                "not ready: NATS is unreachable; records are held (tickcast_nats_pending_records)\n"
                    .into(),
            ),
            _ => None,
        }
    }

    /// Appends this node's NATS figures in Prometheus text format.
    pub fn write_prometheus(&self, out: &mut String) {
        let phase = self.phase();
        let _ = writeln!(
            out,
            "# HELP tickcast_nats_phase What this node does with the NATS stream (1 for the current phase).\n# TYPE tickcast_nats_phase gauge"
        );
        for p in Phase::ALL {
            let _ = writeln!(
                out,
                "tickcast_nats_phase{{role=\"{}\",phase=\"{}\"}} {}",
                self.role.as_str(),
                p.as_str(),
                u8::from(p == phase)
            );
        }
        let figures: [(&str, &str, &str, u64); 12] = [
            ("tickcast_nats_connected", "gauge", "1 while the NATS connection is up.", u64::from(self.connected())),
            ("tickcast_nats_stream_position", "gauge", "The last stream sequence this node applied or stored.", self.position.load(Ordering::Relaxed)),
            ("tickcast_nats_stream_last_sequence", "gauge", "The stream's last sequence, as last asked.", self.stream_last.load(Ordering::Relaxed)),
            ("tickcast_nats_pending_records", "gauge", "Records accepted but not yet stored in the stream (bounded by nats.max_pending_records).", self.pending.load(Ordering::Relaxed)),
            ("tickcast_nats_published_total", "counter", "Records stored in the stream by this node.", self.published.load(Ordering::Relaxed)),
            ("tickcast_nats_publish_retries_total", "counter", "Publishes sent again after a failure or a lost ack.", self.publish_retries.load(Ordering::Relaxed)),
            ("tickcast_nats_applied_total", "counter", "Records applied from the stream.", self.applied.load(Ordering::Relaxed)),
            ("tickcast_nats_gaps_total", "counter", "Stream records not applied because seqs before them were missing.", self.gaps.load(Ordering::Relaxed)),
            ("tickcast_nats_snapshots_published_total", "counter", "Channel snapshots stored in the stream by this node.", self.snapshots_published.load(Ordering::Relaxed)),
            ("tickcast_nats_snapshots_loaded_total", "counter", "Channel snapshots from the stream that set a channel's state here (catch-up, or records missing).", self.snapshots_loaded.load(Ordering::Relaxed)),
            ("tickcast_nats_catchup_records_total", "counter", "Records read from the stream while catching up.", self.catchup_records.load(Ordering::Relaxed)),
            ("tickcast_nats_resyncs_total", "counter", "Channels resynced to a snapshot because the stream lacked some of their records.", self.resyncs.load(Ordering::Relaxed)),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
