//! What operators read: `/metrics` (Prometheus text), `/stats` (JSON) and
//! the periodic stats log line.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::engine::DropReason;
use crate::feed::FeedStats;
use crate::metrics::{self, Stage, StageHistograms, BUCKETS_S};
use crate::record::RejectReason;

/// Prometheus text exposition format, version 0.0.4.
pub fn prometheus(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let stats = state.engine.stats();
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    gauge(
        &mut out,
        "tickcast_connections",
        "Open WebSocket connections.",
        "gauge",
        state.live_sessions() as u64,
    );
    gauge(
        &mut out,
        "tickcast_subscriptions",
        "Names and patterns subscribed, over all connections.",
        "gauge",
        stats.subscriptions,
    );
    gauge(
        &mut out,
        "tickcast_channels",
        "Channels held.",
        "gauge",
        stats.channels,
    );
    gauge(
        &mut out,
        "tickcast_updates_in_total",
        "Updates applied to channels.",
        "counter",
        stats.updates_applied,
    );
    gauge(
        &mut out,
        "tickcast_frames_queued_total",
        "Frames queued to connections (updates out).",
        "counter",
        stats.frames_queued,
    );
    gauge(
        &mut out,
        "tickcast_frames_encoded_total",
        "Update frames encoded, once per shape for the whole process (shared by every subscriber of that shape on every shard).",
        "counter",
        stats.frames_encoded,
    );
    gauge(
        &mut out,
        "tickcast_frames_written_total",
        "Frames written to sockets.",
        "counter",
        load(&state.metrics.frames_written),
    );
    gauge(
        &mut out,
        "tickcast_bytes_out_total",
        "Bytes written to sockets.",
        "counter",
        load(&state.metrics.bytes_written),
    );
    gauge(
        &mut out,
        "tickcast_coalesced_diffs_total",
        "Diffs merged into a pending diff instead of being sent one by one.",
        "counter",
        stats.coalesced_diffs,
    );
    gauge(
        &mut out,
        "tickcast_slow_consumer_events_total",
        "Connections closed (1013) for falling behind their outbound bound.",
        "counter",
        stats.slow_consumer_closes,
    );
    gauge(
        &mut out,
        "tickcast_slow_consumer_holds_total",
        "Updates held in a pending diff because a merge subscriber's queue was full.",
        "counter",
        stats.slow_consumer_holds,
    );
    let name = "tickcast_records_dropped_total";
    let _ = writeln!(out, "# HELP {name} Records the engine dropped, by the limit they hit (limits.max_channels, limits.max_state_bytes).\n# TYPE {name} counter");
    for reason in DropReason::ALL {
        let _ = writeln!(
            out,
            "{name}{{reason=\"{}\"}} {}",
            reason.as_str(),
            stats.records_dropped(reason)
        );
    }
    gauge(
        &mut out,
        "tickcast_write_stalls_closed_total",
        "Connections dropped because the peer accepted no byte for limits.write_timeout_ms.",
        "counter",
        load(&state.metrics.write_stalls_closed),
    );
    gauge(
        &mut out,
        "tickcast_idle_pings_total",
        "Pings sent to connections that sent nothing for half of limits.idle_timeout_ms.",
        "counter",
        load(&state.metrics.idle_pings),
    );
    gauge(
        &mut out,
        "tickcast_idle_closed_total",
        "Connections closed (1001) for sending nothing for limits.idle_timeout_ms.",
        "counter",
        load(&state.metrics.idle_closed),
    );
    gauge(
        &mut out,
        "tickcast_session_panics_total",
        "Sessions ended by a contained panic (closed with 1011); nothing else is affected.",
        "counter",
        load(&state.metrics.session_panics),
    );
    gauge(
        &mut out,
        "tickcast_frame_timeouts_closed_total",
        "Connections closed (1008) for a frame not finished within limits.frame_timeout_ms.",
        "counter",
        load(&state.metrics.frame_timeouts_closed),
    );
    gauge(
        &mut out,
        "tickcast_fd_limit",
        "The process's soft limit on open file descriptors.",
        "gauge",
        super::accept::fd_limit().unwrap_or(0),
    );
    gauge(
        &mut out,
        "tickcast_accept_errors_total",
        "Failed accepts on the HTTP listener, every kind.",
        "counter",
        load(&state.metrics.accept_errors),
    );
    gauge(
        &mut out,
        "tickcast_accept_fd_exhausted_total",
        "Failed accepts for want of a file descriptor (EMFILE/ENFILE).",
        "counter",
        load(&state.metrics.accept_fd_exhausted),
    );
    gauge(
        &mut out,
        "tickcast_answered_at_fd_limit_total",
        "Connections answered from the reserved descriptor at the limit, then closed.",
        "counter",
        load(&state.metrics.answered_at_fd_limit),
    );
    gauge(
        &mut out,
        "tickcast_history_bytes",
        "Bytes of resume history held (one copy for the process; bounded by limits.max_history_bytes).",
        "gauge",
        stats.history_bytes,
    );
    gauge(
        &mut out,
        "tickcast_history_trimmed_total",
        "History entries forgotten early, or not kept, to stay within limits.max_history_bytes.",
        "counter",
        stats.history_trimmed,
    );
    let feed_counters: [FeedCounter; 5] = [
        (
            "tickcast_feed_producers",
            "Producer connections open on a tcp feed.",
            "gauge",
            |f| f.producers(),
        ),
        (
            "tickcast_feed_producers_refused_total",
            "Producer connections refused at limits.max_producers_per_feed.",
            "counter",
            |f| f.producers_refused(),
        ),
        (
            "tickcast_feed_producers_idle_closed_total",
            "Producer connections closed after limits.producer_idle_timeout_ms without a complete line.",
            "counter",
            |f| f.producers_idle_closed(),
        ),
        (
            "tickcast_feed_rejections_not_logged_total",
            "Rejected lines counted but not logged (limits.reject_log_per_interval).",
            "counter",
            |f| f.rejections_not_logged(),
        ),
        (
            "tickcast_feed_panics_total",
            "Panics contained in a feed: the feed (or one producer connection) stopped, nothing else.",
            "counter",
            |f| f.panics(),
        ),
    ];
    for (name, help, kind, value) in feed_counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for feed in &state.feeds {
            let _ = writeln!(
                out,
                "{name}{{feed=\"{}\"}} {}",
                escape(&feed.name),
                value(feed)
            );
        }
    }

    let _ = writeln!(out, "# HELP tickcast_feed_records_total Records accepted or rejected per feed.\n# TYPE tickcast_feed_records_total counter");
    for feed in &state.feeds {
        let name = escape(&feed.name);
        let _ = writeln!(
            out,
            "tickcast_feed_records_total{{feed=\"{name}\",result=\"accepted\"}} {}",
            feed.accepted()
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "tickcast_feed_records_total{{feed=\"{name}\",result=\"rejected\",reason=\"{reason}\"}} {}",
                feed.rejected(reason)
            );
        }
    }
    let _ = writeln!(out, "# HELP tickcast_feed_up Feed status: 1 for the current status label.\n# TYPE tickcast_feed_up gauge");
    for feed in &state.feeds {
        let _ = writeln!(
            out,
            "tickcast_feed_up{{feed=\"{}\",status=\"{}\"}} 1",
            escape(&feed.name),
            feed.status().as_str()
        );
    }

    let merged = state.metrics.merged();
    let name = "tickcast_stage_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of each stage of the data path.\n# TYPE {name} histogram"
    );
    for stage in Stage::ALL {
        let h = merged.get(stage);
        let label = stage.as_str();
        for (bound, count) in BUCKETS_S.iter().zip(metrics::bucket_counts(h)) {
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{label}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{stage=\"{label}\",le=\"+Inf\"}} {}",
            h.len()
        );
        let sum = h.mean() * h.len() as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{stage=\"{label}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{stage=\"{label}\"}} {}", h.len());
    }
    let name = "tickcast_stage_latency_quantile_seconds";
    let _ = writeln!(out, "# HELP {name} Quantiles of each stage's latency since start (HdrHistogram, 3 significant figures).\n# TYPE {name} gauge");
    for stage in Stage::ALL {
        let h = merged.get(stage);
        for (_, q) in metrics::QUANTILES {
            let ns = if q >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(q)
            };
            let _ = writeln!(
                out,
                "{name}{{stage=\"{}\",quantile=\"{q}\"}} {}",
                stage.as_str(),
                ns as f64 / 1e9
            );
        }
    }
    out
}

/// One per-feed series: name, help, type, and how to read it.
type FeedCounter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FeedStats) -> u64,
);

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The same figures as JSON, latencies in microseconds.
pub async fn stats_json(state: &AppState) -> Value {
    // What slow connections hold: asked of every engine shard.
    let backlog = state.engine.backlog().await.unwrap_or_default();
    let stats = state.engine.stats();
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let merged = state.metrics.merged();
    let stages: serde_json::Map<String, Value> = Stage::ALL
        .iter()
        .map(|&s| (s.as_str().to_owned(), metrics::summary_us(merged.get(s))))
        .collect();
    let feeds: Vec<Value> = state
        .feeds
        .iter()
        .map(|f| {
            let rejected: serde_json::Map<String, Value> = RejectReason::ALL
                .iter()
                .map(|&r| (r.as_str().to_owned(), f.rejected(r).into()))
                .collect();
            json!({
                "name": f.name,
                "status": f.status().as_str(),
                "accepted": f.accepted(),
                "rejected": rejected,
                "rejections_not_logged": f.rejections_not_logged(),
                "panics": f.panics(),
                "producers": f.producers(),
                "producers_refused": f.producers_refused(),
                "producers_idle_closed": f.producers_idle_closed(),
            })
        })
        .collect();
    json!({
        "epoch": state.engine.epoch(),
        "connections": state.live_sessions(),
        "subscriptions": stats.subscriptions,
        "channels": stats.channels,
        "updates_in": stats.updates_applied,
        "frames_queued": stats.frames_queued,
        "frames_encoded": stats.frames_encoded,
        "frames_written": load(&state.metrics.frames_written),
        "bytes_out": load(&state.metrics.bytes_written),
        "coalesced_diffs": stats.coalesced_diffs,
        "slow_consumer_events": stats.slow_consumer_closes,
        "slow_consumer_holds": stats.slow_consumer_holds,
        "records_dropped": {
            "max_channels": stats.records_dropped_channel_limit,
            "max_state_bytes": stats.records_dropped_state_size,
        },
        "history_bytes": stats.history_bytes,
        "history_trimmed": stats.history_trimmed,
        "write_stalls_closed": load(&state.metrics.write_stalls_closed),
        "idle_pings": load(&state.metrics.idle_pings),
        "idle_closed": load(&state.metrics.idle_closed),
        "frame_timeouts_closed": load(&state.metrics.frame_timeouts_closed),
        "session_panics": load(&state.metrics.session_panics),
        "backlog": backlog,
        "fd_limit": super::accept::fd_limit(),
        "accept": {
            "errors": load(&state.metrics.accept_errors),
            "fd_exhausted": load(&state.metrics.accept_fd_exhausted),
            "answered_at_fd_limit": load(&state.metrics.answered_at_fd_limit),
        },
        "latency": stages,
        "feeds": feeds,
    })
}

/// Logs the main figures every `every`, over that interval, until `shutdown`.
pub async fn log_stats(
    state: std::sync::Arc<AppState>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let mut before: StageHistograms = state.metrics.merged();
    let mut last_in = state.engine.stats().updates_applied;
    let mut last_out = load(&state.metrics.frames_written);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let stats = state.engine.stats();
        let now = state.metrics.merged();
        let mut interval = now.clone();
        interval.subtract(&before);
        before = now;
        let (updates, written) = (stats.updates_applied, load(&state.metrics.frames_written));
        let secs = every.as_secs_f64();
        let e2e = interval.get(Stage::EndToEnd);
        let us = |q: f64| e2e.value_at_quantile(q) as f64 / 1000.0;
        tracing::info!(
            connections = state.live_sessions(),
            subscriptions = stats.subscriptions,
            updates_in_per_s = ((updates - last_in) as f64 / secs).round(),
            frames_out_per_s = ((written - last_out) as f64 / secs).round(),
            e2e_p50_us = us(0.5),
            e2e_p99_us = us(0.99),
            e2e_max_us = e2e.max() as f64 / 1000.0,
            slow_consumers = stats.slow_consumer_closes,
            "stats"
        );
        last_in = updates;
        last_out = written;
    }
}
