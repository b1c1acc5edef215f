//! The engine's counters, each declared once with how `/metrics` and
//! `/stats` show it.

use std::sync::Arc;

use crate::metrics::counters;

counters! {
    /// Counters the engine updates and /metrics reads. The state stage and
    /// each shard count into their own; [`StatsSnapshot::total`] adds them.
    pub struct EngineStats => StatsSnapshot;
    subscriptions: Gauge "tickcast_subscriptions" at "subscriptions",
        "Names and patterns subscribed, over all connections.";
    sessions: Gauge "tickcast_engine_sessions" at "engine_sessions",
        "Connections registered with the engine's fanout shards (upgraded and not yet closed).";
    channels: Gauge "tickcast_channels" at "channels",
        "Channels held.";
    updates_applied: Counter "tickcast_updates_in_total" at "updates_in",
        "Updates applied to channels.";
    frames_queued: Counter "tickcast_frames_queued_total" at "frames_queued",
        "Frames queued to connections (updates out).";
    bytes_queued: Counter "tickcast_bytes_queued_total" at "bytes_queued",
        "Bytes of the frames queued to connections.";
    frames_encoded: Counter "tickcast_frames_encoded_total" at "frames_encoded",
        "Update frames encoded, once per shape for the whole process (shared by every subscriber of that shape on every shard).";
    frames_deflated: Counter "tickcast_frames_deflated_total" at "frames_deflated",
        "Update frames queued compressed (permessage-deflate); their compressed size is what bytes_queued counts.";
    frames_compressed: Counter "tickcast_frames_compressed_total" at "frames_compressed",
        "Update frames compressed, once per shape for the whole process (shared by every compressed subscriber of that shape on every shard).";
    coalesced_diffs: Counter "tickcast_coalesced_diffs_total" at "coalesced_diffs",
        "Updates folded into a subscriber's held diff (max_hz, or a full merge-mode queue) instead of being sent one by one.";
    slow_consumer_closes: Counter "tickcast_slow_consumer_closes_total" at "slow_consumer_closes",
        "Connections closed (1013) for falling behind their outbound bound.";
    slow_consumer_holds: Counter "tickcast_slow_consumer_holds_total" at "slow_consumer_holds",
        "Updates held in a pending diff because a merge subscriber's queue was full.";
    records_dropped_channel_limit: Counter "tickcast_records_dropped_total" {"reason=\"max_channels\""}
        at "records_dropped.max_channels",
        "Records the engine dropped, by the limit they hit (limits.max_channels, limits.max_state_bytes, limits.max_total_state_bytes, the NATS server's max_payload with --nats).";
    records_dropped_state_size: Counter "tickcast_records_dropped_total" {"reason=\"max_state_bytes\""}
        at "records_dropped.max_state_bytes",
        "Records the engine dropped, by the limit they hit (limits.max_channels, limits.max_state_bytes, limits.max_total_state_bytes, the NATS server's max_payload with --nats).";
    records_dropped_total_state: Counter "tickcast_records_dropped_total" {"reason=\"max_total_state_bytes\""}
        at "records_dropped.max_total_state_bytes",
        "Records the engine dropped, by the limit they hit (limits.max_channels, limits.max_state_bytes, limits.max_total_state_bytes, the NATS server's max_payload with --nats).";
    records_dropped_nats_payload: Counter "tickcast_records_dropped_total" {"reason=\"nats_max_payload\""}
        at "records_dropped.nats_max_payload",
        "Records the engine dropped, by the limit they hit (limits.max_channels, limits.max_state_bytes, limits.max_total_state_bytes, the NATS server's max_payload with --nats).";
    state_bytes: Gauge "tickcast_state_bytes" at "state_bytes",
        "Bytes of channel state, as JSON, over all channels (one copy for the process; bounded by limits.max_total_state_bytes).";
    history_bytes: Gauge "tickcast_history_bytes" at "history_bytes",
        "Bytes of resume history held (one copy for the process; bounded by limits.max_history_bytes).";
    history_trimmed: Counter "tickcast_history_trimmed_total" at "history_trimmed",
        "History entries forgotten early, or not kept, to stay within limits.max_history_bytes.";
    records_recorded: Counter "tickcast_records_recorded_total" at "recorder.records",
        "Accepted records written to the --record file.";
    record_dropped: Counter "tickcast_record_dropped_total" at "recorder.dropped",
        "Accepted records left out of the --record file because its writer fell behind (limits.record_queue full); the engine applied them.";
}

impl StatsSnapshot {
    /// The sum over `parts` (the state stage's counters and each shard's).
    ///
    /// The per-channel counters (updates, channels, records dropped,
    /// history) are counted once, by the state stage; the per-session ones
    /// by the shard that owns the session; frames by whoever encoded them.
    /// So every figure is the sum of its parts.
    pub fn total(parts: &[Arc<EngineStats>]) -> Self {
        let mut total = Self::default();
        for part in parts {
            total.add(&part.snapshot());
        }
        total
    }
}
