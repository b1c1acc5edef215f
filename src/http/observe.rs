//! What operators read: `/metrics` (Prometheus text), `/stats` (JSON) and
//! the periodic stats log line.
//!
//! Each process-wide figure is declared once, beside the field that holds
//! it ([`StatsSnapshot::METRICS`], [`SessionSnapshot::METRICS`]) or here
//! ([`DERIVED`], [`FEED_METRICS`]); both outputs are written from those
//! tables, so a figure cannot be in one and missing from the other.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::engine::StatsSnapshot;
use crate::feed::FeedStats;
use crate::metrics::{self, Kind, Metric, SessionSnapshot, Stage, StageHistograms, BUCKETS_S};
use crate::record::RejectReason;

/// A figure no counter struct holds, and how to read it off the server.
type Derived = (Metric, fn(&AppState) -> u64);

/// Figures no counter struct holds, read off the server when asked.
const DERIVED: [Derived; 2] = [
    (
        Metric {
            name: "tickcast_connections",
            labels: "",
            kind: Kind::Gauge,
            json: "connections",
            help: "Open WebSocket connections.",
        },
        |state| state.live_sessions() as u64,
    ),
    (
        Metric {
            name: "tickcast_fd_limit",
            labels: "",
            kind: Kind::Gauge,
            json: "fd_limit",
            help: "The process's soft limit on open file descriptors (0 if unknown).",
        },
        |_| super::accept::fd_limit().unwrap_or(0),
    ),
];

/// Every process-wide figure: the first of [`DERIVED`], the engine's, the
/// sessions', then the rest of [`DERIVED`]. Series of one Prometheus
/// family are next to each other.
pub fn metric_table() -> impl Iterator<Item = &'static Metric> {
    let (first, rest) = DERIVED.split_at(1);
    first
        .iter()
        .map(|(m, _)| m)
        .chain(StatsSnapshot::METRICS)
        .chain(SessionSnapshot::METRICS)
        .chain(rest.iter().map(|(m, _)| m))
}

/// [`metric_table`] with each figure's value now.
fn figures(state: &AppState) -> Vec<(&'static Metric, u64)> {
    let (first, rest) = DERIVED.split_at(1);
    let values = first
        .iter()
        .map(|(_, read)| read(state))
        .chain(state.engine.stats().values())
        .chain(state.metrics.snapshot().values())
        .chain(rest.iter().map(|(_, read)| read(state)));
    metric_table().zip(values).collect()
}

/// One per-feed series (label `feed`): how it is shown and how to read it.
pub struct FeedMetric {
    /// `json` is the key inside the feed's object in `/stats` `feeds`.
    pub metric: Metric,
    pub read: fn(&FeedStats) -> u64,
}

const fn feed_metric(
    name: &'static str,
    kind: Kind,
    json: &'static str,
    help: &'static str,
    read: fn(&FeedStats) -> u64,
) -> FeedMetric {
    FeedMetric {
        metric: Metric {
            name,
            labels: "",
            kind,
            json,
            help,
        },
        read,
    }
}

pub const FEED_METRICS: [FeedMetric; 8] = [
    feed_metric(
        "tickcast_feed_producers",
        Kind::Gauge,
        "producers",
        "Producer connections open on a tcp feed.",
        FeedStats::producers,
    ),
    feed_metric(
        "tickcast_feed_producers_refused_total",
        Kind::Counter,
        "producers_refused",
        "Producer connections refused at limits.max_producers_per_feed.",
        FeedStats::producers_refused,
    ),
    feed_metric(
        "tickcast_feed_producers_idle_closed_total",
        Kind::Counter,
        "producers_idle_closed",
        "Producer connections closed after limits.producer_idle_timeout_ms without a complete line.",
        FeedStats::producers_idle_closed,
    ),
    feed_metric(
        "tickcast_feed_producers_unauthorized_total",
        Kind::Counter,
        "producers_unauthorized",
        "Producer connections closed for a missing or wrong publish key.",
        FeedStats::producers_unauthorized,
    ),
    feed_metric(
        "tickcast_feed_rejections_not_logged_total",
        Kind::Counter,
        "rejections_not_logged",
        "Rejected lines counted but not logged (limits.reject_log_per_interval).",
        FeedStats::rejections_not_logged,
    ),
    feed_metric(
        "tickcast_feed_reconnects_total",
        Kind::Counter,
        "reconnects",
        "Upstream connections an exchange feed made again after losing one.",
        FeedStats::reconnects,
    ),
    feed_metric(
        "tickcast_feed_resyncs_total",
        Kind::Counter,
        "resyncs",
        "Order books an exchange feed re-synchronised after a gap in the upstream sequence.",
        FeedStats::resyncs,
    ),
    feed_metric(
        "tickcast_feed_panics_total",
        Kind::Counter,
        "panics",
        "Panics contained in a feed: the feed (or one producer connection) stopped, nothing else.",
        FeedStats::panics,
    ),
];

/// A Prometheus family written by its own loop: name, type, help.
pub type Family = (&'static str, Kind, &'static str);

const FEED_RECORDS: Family = (
    "tickcast_feed_records_total",
    Kind::Counter,
    "Records accepted or rejected per feed.",
);
const FEED_UP: Family = (
    "tickcast_feed_up",
    Kind::Gauge,
    "Feed status: 1 for the current status label.",
);
const STAGE_LATENCY: &str = "tickcast_stage_latency_seconds";
const STAGE_LATENCY_QUANTILES: Family = (
    "tickcast_stage_latency_quantile_seconds",
    Kind::Gauge,
    "Quantiles of each stage's latency since start (HdrHistogram, 3 significant figures).",
);

/// The families of `/metrics` that are not in [`metric_table`] or
/// [`FEED_METRICS`] (their `/stats` form is `feeds[].accepted`,
/// `feeds[].rejected`, `feeds[].status` and `latency`).
pub const OTHER_FAMILIES: [&str; 4] = [
    FEED_RECORDS.0,
    FEED_UP.0,
    STAGE_LATENCY,
    STAGE_LATENCY_QUANTILES.0,
];

fn header(out: &mut String, (name, kind, help): Family) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
}

/// Prometheus text exposition format, version 0.0.4.
pub fn prometheus(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let mut family = "";
    for (m, value) in figures(state) {
        if m.name != family {
            header(&mut out, (m.name, m.kind, m.help));
            family = m.name;
        }
        if m.labels.is_empty() {
            let _ = writeln!(out, "{} {value}", m.name);
        } else {
            let _ = writeln!(out, "{}{{{}}} {value}", m.name, m.labels);
        }
    }
    for FeedMetric { metric: m, read } in &FEED_METRICS {
        header(&mut out, (m.name, m.kind, m.help));
        for feed in &state.feeds {
            let _ = writeln!(
                out,
                "{}{{feed=\"{}\"}} {}",
                m.name,
                escape(&feed.name),
                read(feed)
            );
        }
    }

    header(&mut out, FEED_RECORDS);
    let records = FEED_RECORDS.0;
    for feed in &state.feeds {
        let name = escape(&feed.name);
        let _ = writeln!(
            out,
            "{records}{{feed=\"{name}\",result=\"accepted\"}} {}",
            feed.accepted()
        );
        for reason in RejectReason::ALL {
            let _ = writeln!(
                out,
                "{records}{{feed=\"{name}\",result=\"rejected\",reason=\"{reason}\"}} {}",
                feed.rejected(reason)
            );
        }
    }
    header(&mut out, FEED_UP);
    for feed in &state.feeds {
        let _ = writeln!(
            out,
            "{}{{feed=\"{}\",status=\"{}\"}} 1",
            FEED_UP.0,
            escape(&feed.name),
            feed.status().as_str()
        );
    }

    let merged = state.metrics.merged();
    let name = STAGE_LATENCY;
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
    header(&mut out, STAGE_LATENCY_QUANTILES);
    let name = STAGE_LATENCY_QUANTILES.0;
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

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Puts `value` at the dotted `path` in `map`, making the nested objects.
fn insert_at(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = map.entry(head).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// The same figures as JSON, latencies in microseconds.
pub async fn stats_json(state: &AppState) -> Value {
    // What slow connections hold: asked of every engine shard.
    let backlog = state.engine.backlog().await.unwrap_or_default();
    let merged = state.metrics.merged();
    let stages: Map<String, Value> = Stage::ALL
        .iter()
        .map(|&s| (s.as_str().to_owned(), metrics::summary_us(merged.get(s))))
        .collect();
    let feeds: Vec<Value> = state
        .feeds
        .iter()
        .map(|f| {
            let rejected: Map<String, Value> = RejectReason::ALL
                .iter()
                .map(|&r| (r.as_str().to_owned(), f.rejected(r).into()))
                .collect();
            let mut feed = Map::new();
            feed.insert("name".into(), f.name.clone().into());
            feed.insert("status".into(), f.status().as_str().into());
            feed.insert("accepted".into(), f.accepted().into());
            feed.insert("rejected".into(), rejected.into());
            for FeedMetric { metric, read } in &FEED_METRICS {
                feed.insert(metric.json.into(), read(f).into());
            }
            Value::Object(feed)
        })
        .collect();
    let mut out = Map::new();
    out.insert("epoch".into(), state.engine.epoch().into());
    for (m, value) in figures(state) {
        insert_at(&mut out, m.json, value.into());
    }
    out.insert("backlog".into(), json!(backlog));
    out.insert("latency".into(), stages.into());
    out.insert("feeds".into(), feeds.into());
    Value::Object(out)
}

/// Logs the main figures every `every`, over that interval, until `shutdown`.
pub async fn log_stats(
    state: std::sync::Arc<AppState>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut before: StageHistograms = state.metrics.merged();
    let mut last_in = state.engine.stats().updates_applied;
    let mut last_out = state.metrics.snapshot().frames_written;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let engine = state.engine.stats();
        let session = state.metrics.snapshot();
        let now = state.metrics.merged();
        let mut interval = now.clone();
        interval.subtract(&before);
        before = now;
        let (updates, written) = (engine.updates_applied, session.frames_written);
        let secs = every.as_secs_f64();
        let e2e = interval.get(Stage::EndToEnd);
        let us = |q: f64| e2e.value_at_quantile(q) as f64 / 1000.0;
        tracing::info!(
            connections = state.live_sessions(),
            subscriptions = engine.subscriptions,
            updates_in_per_s = ((updates - last_in) as f64 / secs).round(),
            frames_out_per_s = ((written - last_out) as f64 / secs).round(),
            e2e_p50_us = us(0.5),
            e2e_p99_us = us(0.99),
            e2e_max_us = e2e.max() as f64 / 1000.0,
            slow_consumer_closes = engine.slow_consumer_closes,
            "stats"
        );
        last_in = updates;
        last_out = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// `/metrics` writes a family's header once, before its first series:
    /// that holds only if a family's series are next to each other in the
    /// table and agree on type and help. `/stats` keys must not collide.
    #[test]
    fn the_table_is_well_formed() {
        let table: Vec<&Metric> = metric_table()
            .chain(FEED_METRICS.iter().map(|f| &f.metric))
            .collect();
        let mut families = HashSet::new();
        let mut keys = HashSet::new();
        for pair in table.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.name == b.name {
                assert_eq!((a.kind, a.help), (b.kind, b.help), "{}", a.name);
                assert_ne!(a.labels, b.labels, "{}", a.name);
            }
        }
        let mut last = "";
        for m in &table {
            if m.name != last {
                assert!(families.insert(m.name), "{} is split in the table", m.name);
                last = m.name;
            }
            assert!(keys.insert(m.json), "/stats key {} twice", m.json);
            assert!(m.name.starts_with("tickcast_"), "{}", m.name);
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Kind::Counter,
                "{}: counters, and only they, end in _total",
                m.name
            );
        }
        for name in OTHER_FAMILIES {
            assert!(!families.contains(name), "{name} is written twice");
        }
    }

    /// docs/architecture.md lists every metric for operators.
    #[test]
    fn the_docs_name_every_family() {
        let doc = include_str!("../../docs/architecture.md");
        let names = metric_table()
            .chain(FEED_METRICS.iter().map(|f| &f.metric))
            .map(|m| m.name)
            .chain(OTHER_FAMILIES);
        for name in names {
            let (plain, labelled) = (format!("`{name}`"), format!("`{name}{{"));
            assert!(
                doc.contains(&plain) || doc.contains(&labelled),
                "{name} is not in the docs"
            );
        }
    }

    #[test]
    fn dotted_keys_nest() {
        let mut map = Map::new();
        insert_at(&mut map, "accept.errors", 1.into());
        insert_at(&mut map, "accept.fd_exhausted", 2.into());
        insert_at(&mut map, "top", 3.into());
        assert_eq!(
            Value::Object(map),
            json!({"accept": {"errors": 1, "fd_exhausted": 2}, "top": 3})
        );
    }
}
