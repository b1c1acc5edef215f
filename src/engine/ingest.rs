//! What the engine does at the ingest bounds (docs/architecture.md,
//! "Ingest limits"): records past `limits.max_channels`,
//! `limits.max_state_bytes` or `limits.max_total_state_bytes` are dropped, counted and (within a log budget)
//! logged by the state stage; history is kept within `limits.max_history_bytes`
//! (see [`history`](super::history)).

use std::sync::atomic::Ordering;

use super::stage::StateStage;
use super::state_budget::{StateBudget, StateTooLarge};
use crate::feed::log_budget::{LogBudget, Verdict};
use crate::record::FeedRecord;

/// Bounds on what feeds can make the engine hold; see `config::Limits`
/// (`max_state_bytes`, `max_history_bytes`, `reject_log_*`) and
/// docs/architecture.md, "Ingest limits". The state stage applies them
/// once, to the one copy of the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest channel state, in bytes of JSON.
    pub max_state_bytes: usize,
    /// Every channel's state together, in bytes of JSON.
    pub max_total_state_bytes: usize,
    /// Bytes of resume history over all channels.
    pub max_history_bytes: usize,
    /// Dropped records logged per interval; the rest are counted only.
    pub log_per_interval: u32,
    pub log_interval_ns: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_state_bytes: 2 * 1024 * 1024,
            max_total_state_bytes: 1024 * 1024 * 1024,
            max_history_bytes: 256 * 1024 * 1024,
            log_per_interval: 10,
            log_interval_ns: 10_000_000_000,
        }
    }
}

impl IngestLimits {
    pub(super) fn log_budget(&self) -> LogBudget {
        LogBudget::new(self.log_per_interval, self.log_interval_ns)
    }

    pub(super) fn state_budget(&self) -> StateBudget {
        StateBudget::new(self.max_state_bytes, self.max_total_state_bytes)
    }
}

/// Why the engine dropped a record (the `reason` label on /metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It would have created a channel past `limits.max_channels`.
    MaxChannels,
    /// It would have made its channel's state larger than
    /// `limits.max_state_bytes`.
    MaxStateBytes,
    /// It would have made all states together larger than
    /// `limits.max_total_state_bytes`.
    MaxTotalStateBytes,
    /// With `--nats`: its stream message would be larger than the NATS
    /// server's `max_payload`, so it could never be stored.
    NatsMaxPayload,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::MaxChannels,
        DropReason::MaxStateBytes,
        DropReason::MaxTotalStateBytes,
        DropReason::NatsMaxPayload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MaxChannels => "max_channels",
            DropReason::MaxStateBytes => "max_state_bytes",
            DropReason::MaxTotalStateBytes => "max_total_state_bytes",
            DropReason::NatsMaxPayload => "nats_max_payload",
        }
    }
}

impl StateStage {
    /// Counts (and, within the log budget, logs) a record refused for
    /// `limits.max_state_bytes` or `limits.max_total_state_bytes`; its
    /// channel keeps its state and seq.
    pub(super) fn drop_too_large(
        &mut self,
        record: &FeedRecord,
        too_large: StateTooLarge,
        now: u64,
    ) {
        let (reason, would_be, limit) = match too_large {
            StateTooLarge::Channel { would_be } => (
                DropReason::MaxStateBytes,
                would_be,
                self.state.per_channel(),
            ),
            StateTooLarge::Total { would_be } => {
                (DropReason::MaxTotalStateBytes, would_be, self.state.total())
            }
        };
        self.dropped_counter(reason).fetch_add(1, Ordering::Relaxed);
        self.log_drop(reason, now, |dropped| match reason {
            DropReason::MaxTotalStateBytes => tracing::warn!(
                channel = %record.channel,
                would_be,
                limit,
                dropped,
                "record dropped: all channels' states together would exceed \
                 limits.max_total_state_bytes; the channel keeps its state and seq"
            ),
            _ => tracing::warn!(
                channel = %record.channel,
                would_be,
                limit,
                dropped,
                "record dropped: the channel's state would exceed limits.max_state_bytes \
                 (with --nats, at most what fits the NATS server's max_payload); the channel \
                 keeps its state and seq"
            ),
        });
    }

    /// Counts (and, within the log budget, logs) a record for a new channel
    /// past `limits.max_channels`; existing channels go on.
    pub(super) fn drop_past_max_channels(&mut self, record: &FeedRecord, now: u64) {
        self.stats
            .records_dropped_channel_limit
            .fetch_add(1, Ordering::Relaxed);
        let limit = self.limits.max_channels;
        self.log_drop(DropReason::MaxChannels, now, |dropped| {
            tracing::warn!(
                channel = %record.channel,
                limit,
                dropped,
                "channel limit reached; record for a new channel dropped \
                 (limits.max_channels); existing channels go on"
            );
        });
    }

    /// Counts (and, within the log budget, logs) a record whose stream
    /// message NATS would refuse (`size` bytes, over `max_payload`); its
    /// channel keeps its state and seq, and the stream has no hole.
    pub(super) fn drop_over_nats_payload(
        &mut self,
        record: &FeedRecord,
        size: usize,
        max_payload: usize,
        now: u64,
    ) {
        let reason = DropReason::NatsMaxPayload;
        self.dropped_counter(reason).fetch_add(1, Ordering::Relaxed);
        self.log_drop(reason, now, |dropped| {
            tracing::warn!(
                channel = %record.channel,
                size,
                max_payload,
                dropped,
                "record dropped: its NATS message would be larger than the NATS server's \
                 max_payload (raise max_payload in nats-server's config); the channel keeps \
                 its state and seq"
            );
        });
    }

    /// Logs one dropped record through `log` (given the count so far) if
    /// the interval's budget allows.
    fn log_drop(&mut self, reason: DropReason, now: u64, log: impl FnOnce(u64)) {
        let dropped = self.dropped_counter(reason).load(Ordering::Relaxed);
        match self.drop_log.admit(now) {
            Verdict::Log { suppressed_before } => {
                if suppressed_before > 0 {
                    tracing::warn!(
                        not_logged = suppressed_before,
                        "{suppressed_before} more dropped records in the last interval \
                         were counted but not logged"
                    );
                }
                log(dropped);
            }
            Verdict::Suppress { first: true } => tracing::warn!(
                "more records dropped; counting them without logging (see \
                 records_dropped_total on /metrics)"
            ),
            Verdict::Suppress { first: false } => {}
        }
    }

    fn dropped_counter(&self, reason: DropReason) -> &std::sync::atomic::AtomicU64 {
        match reason {
            DropReason::MaxChannels => &self.stats.records_dropped_channel_limit,
            DropReason::MaxStateBytes => &self.stats.records_dropped_state_size,
            DropReason::MaxTotalStateBytes => &self.stats.records_dropped_total_state,
            DropReason::NatsMaxPayload => &self.stats.records_dropped_nats_payload,
        }
    }

    /// Publishes the history budget's figures.
    pub(super) fn count_history(&self) {
        let stats = &self.stats;
        stats
            .history_bytes
            .store(self.history.used() as u64, Ordering::Relaxed);
        stats
            .history_trimmed
            .store(self.history.trimmed(), Ordering::Relaxed);
    }
}
