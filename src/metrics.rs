//! Latency histograms per stage of the data path, and the text of
//! `/metrics` (Prometheus) and `/stats` (JSON).
//!
//! Recording is per thread: each runtime thread records into its own
//! HdrHistograms (a lock only that thread takes, except while a scrape
//! merges them), so the hot path never contends. Reads merge every thread's
//! histograms into one.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use thread_local::ThreadLocal;

/// The checkpoints an update passes, each timed from the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The feed stamps the record and publishes it into the ring
    /// (includes waiting for room when the ring is full).
    FeedToRing,
    /// From the feed's stamp to an engine shard taking the record off the
    /// ring; once per record and shard.
    RingToEngine,
    /// From a shard taking a record to its frames sitting in the outbox of
    /// every subscriber of that shard (the fanout); once per record and shard.
    EngineToQueued,
    /// From a frame being queued to the socket accepting it, per frame.
    QueuedToWritten,
    /// From the feed's stamp to the socket accepting the frame, per frame:
    /// what a client sees, less the network.
    EndToEnd,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::FeedToRing,
        Stage::RingToEngine,
        Stage::EngineToQueued,
        Stage::QueuedToWritten,
        Stage::EndToEnd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::FeedToRing => "feed_to_ring",
            Stage::RingToEngine => "ring_to_engine",
            Stage::EngineToQueued => "engine_to_queued",
            Stage::QueuedToWritten => "queued_to_written",
            Stage::EndToEnd => "end_to_end",
        }
    }
}

/// Highest latency a histogram tracks (60 s); larger values are clamped.
const MAX_TRACKED_NS: u64 = 60_000_000_000;
/// Significant figures kept: 3 means values within 0.1 %.
const SIGFIGS: u8 = 3;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, SIGFIGS).expect("valid histogram bounds")
}

/// One histogram per stage, in nanoseconds.
#[derive(Clone)]
pub struct StageHistograms {
    stages: [Histogram<u64>; 5],
}

impl Default for StageHistograms {
    fn default() -> Self {
        Self {
            stages: std::array::from_fn(|_| new_histogram()),
        }
    }
}

impl StageHistograms {
    pub fn record(&mut self, stage: Stage, nanos: u64) {
        self.stages[stage as usize].saturating_record(nanos.clamp(1, MAX_TRACKED_NS));
    }

    pub fn get(&self, stage: Stage) -> &Histogram<u64> {
        &self.stages[stage as usize]
    }

    /// Adds every count of `other` into `self`.
    pub fn add(&mut self, other: &StageHistograms) {
        for (mine, theirs) in self.stages.iter_mut().zip(&other.stages) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
    }

    /// Removes the counts of an earlier copy (for per-interval figures).
    pub fn subtract(&mut self, earlier: &StageHistograms) {
        for (mine, theirs) in self.stages.iter_mut().zip(&earlier.stages) {
            let _ = mine.subtract(theirs);
        }
    }
}

/// Whether a figure only grows (Prometheus `counter`) or goes up and down
/// (`gauge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// How one figure is shown: its Prometheus series, its `/stats` key and its
/// help text. Every figure is described once, beside the field that holds
/// it (see [`counters!`]); `/metrics`, `/stats` and the tests read these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Prometheus family name (`tickcast_..`, `_total` for counters).
    pub name: &'static str,
    /// Prometheus labels of this series inside its family, e.g.
    /// `reason="max_channels"`, or empty.
    pub labels: &'static str,
    pub kind: Kind,
    /// Key in `/stats`; a dot nests it (`accept.errors`).
    pub json: &'static str,
    pub help: &'static str,
}

/// Declares a set of figures once: an atomic struct the code updates, a
/// plain snapshot of it, and the [`Metric`] describing each field.
///
/// ```text
/// counters! {
///     /// doc
///     pub struct Live => Snapshot;
///     field: Counter "tickcast_name_total" {"label=\"x\""}? at "json.key",
///         "Help text.";
/// }
/// ```
///
/// The snapshot gets `METRICS` (in field order), `values()` (the same
/// order) and `add`; the live struct gets `snapshot()`.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub struct $live:ident => $snapshot:ident;
        $(
            $field:ident : $kind:ident $name:literal $({ $labels:literal })? at $json:literal,
                $help:literal;
        )*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $live {
            $( #[doc = $help] pub $field: ::std::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("[`", stringify!($live), "`] at one moment.")]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snapshot {
            $( #[doc = $help] pub $field: u64, )*
        }

        impl $live {
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(::std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        impl $snapshot {
            /// How each field is shown, in field order.
            pub const METRICS: &'static [$crate::metrics::Metric] = &[
                $( $crate::metrics::Metric {
                    name: $name,
                    labels: concat!("" $(, $labels)?),
                    kind: $crate::metrics::Kind::$kind,
                    json: $json,
                    help: $help,
                }, )*
            ];

            /// Every field's value, in the order of [`Self::METRICS`].
            pub fn values(&self) -> Vec<u64> {
                vec![ $( self.$field, )* ]
            }

            /// Adds `other`'s figures to these, field by field.
            pub fn add(&mut self, other: &Self) {
                $( self.$field += other.$field; )*
            }
        }
    };
}
pub(crate) use counters;

counters! {
    /// What sessions and the listener count, process-wide.
    pub struct SessionCounters => SessionSnapshot;
    frames_written: Counter "tickcast_frames_written_total" at "frames_written",
        "Frames written to sockets.";
    bytes_written: Counter "tickcast_bytes_out_total" at "bytes_out",
        "Bytes written to sockets.";
    write_stalls_closed: Counter "tickcast_write_stalls_closed_total" at "write_stalls_closed",
        "Connections dropped because the peer accepted no byte for limits.write_timeout_ms.";
    idle_pings: Counter "tickcast_idle_pings_total" at "idle_pings",
        "Pings sent to connections that sent nothing for half of limits.idle_timeout_ms.";
    idle_closed: Counter "tickcast_idle_closed_total" at "idle_closed",
        "Connections closed (1001) for sending nothing for limits.idle_timeout_ms.";
    frame_timeouts_closed: Counter "tickcast_frame_timeouts_closed_total" at "frame_timeouts_closed",
        "Connections closed (1008) for a frame not finished within limits.frame_timeout_ms.";
    tokens_expired_closed: Counter "tickcast_tokens_expired_closed_total" at "tokens_expired_closed",
        "Connections closed (1008) when their token expired without a fresh one.";
    auth_refused: Counter "tickcast_auth_refused_total" at "auth_refused",
        "WebSocket handshakes refused with 401: token missing, invalid or expired.";
    origin_refused: Counter "tickcast_origin_refused_total" at "origin_refused",
        "WebSocket handshakes refused with 403: Origin not allowed.";
    session_panics: Counter "tickcast_session_panics_total" at "session_panics",
        "Sessions ended by a contained panic (closed with 1011); nothing else is affected.";
    accept_errors: Counter "tickcast_accept_errors_total" at "accept.errors",
        "Failed accepts on the HTTP listener, every kind.";
    accept_fd_exhausted: Counter "tickcast_accept_fd_exhausted_total" at "accept.fd_exhausted",
        "Failed accepts for want of a file descriptor (EMFILE/ENFILE).";
    answered_at_fd_limit: Counter "tickcast_answered_at_fd_limit_total" at "accept.answered_at_fd_limit",
        "Connections answered from the reserved descriptor at the limit, then closed.";
    messages_rate_limited: Counter "tickcast_messages_rate_limited_total" at "messages_rate_limited",
        "Client messages refused (error rate_limited, not acted on) for going over limits.messages_per_sec.";
    rate_limit_closed: Counter "tickcast_rate_limit_closed_total" at "rate_limit_closed",
        "Connections closed (1008) for getting limits.rate_limited_before_close messages ahead of their message rate.";
    refused_per_ip: Counter "tickcast_connections_refused_total" { "reason=\"per_ip\"" } at "refused.per_ip",
        "WebSocket upgrades refused with 503 before the upgrade, by the limit that refused them.";
    refused_per_ip_rate: Counter "tickcast_connections_refused_total" { "reason=\"per_ip_rate\"" } at "refused.per_ip_rate",
        "WebSocket upgrades refused with 503 before the upgrade, by the limit that refused them.";
    refused_total_rate: Counter "tickcast_connections_refused_total" { "reason=\"total_rate\"" } at "refused.total_rate",
        "WebSocket upgrades refused with 503 before the upgrade, by the limit that refused them.";
    refused_ip_table_full: Counter "tickcast_connections_refused_total" { "reason=\"ip_table_full\"" } at "refused.ip_table_full",
        "WebSocket upgrades refused with 503 before the upgrade, by the limit that refused them.";
}

/// Process-wide figures of one server: the stage histograms, and the
/// [`SessionCounters`] (reached through `Deref`, so callers write
/// `metrics.idle_pings`).
pub struct Metrics {
    per_thread: ThreadLocal<Mutex<StageHistograms>>,
    /// Monotonic origin for queue timestamps.
    origin: Instant,
    counters: SessionCounters,
}

impl std::ops::Deref for Metrics {
    type Target = SessionCounters;

    fn deref(&self) -> &SessionCounters {
        &self.counters
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            per_thread: ThreadLocal::new(),
            origin: Instant::now(),
            counters: SessionCounters::default(),
        }
    }

    /// Monotonic nanoseconds since this server started (for queue times).
    pub fn mono_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Runs `f` on this thread's histograms.
    pub fn with_local<R>(&self, f: impl FnOnce(&mut StageHistograms) -> R) -> R {
        let cell = self
            .per_thread
            .get_or(|| Mutex::new(StageHistograms::default()));
        // Only a scrape shares this lock; a poisoned one still holds counts.
        let mut local = cell.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut local)
    }

    pub fn record(&self, stage: Stage, nanos: u64) {
        self.with_local(|h| h.record(stage, nanos));
    }

    /// Every thread's histograms merged.
    pub fn merged(&self) -> StageHistograms {
        let mut all = StageHistograms::default();
        for cell in self.per_thread.iter() {
            let local = cell.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&local);
        }
        all
    }

    pub fn count_written(&self, frames: u64, bytes: u64) {
        self.frames_written.fetch_add(frames, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The quantiles `/stats` reports, as (label, quantile).
pub const QUANTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99_9", 0.999),
    ("p99_99", 0.9999),
    ("max", 1.0),
];

/// Summary of one histogram in microseconds.
pub fn summary_us(h: &Histogram<u64>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("count".into(), h.len().into());
    for (label, q) in QUANTILES {
        let ns = if q >= 1.0 {
            h.max()
        } else {
            h.value_at_quantile(q)
        };
        out.insert(format!("{label}_us"), round_us(ns).into());
    }
    out.insert("mean_us".into(), round_us(h.mean() as u64).into());
    serde_json::Value::Object(out)
}

fn round_us(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

/// Upper bounds of the Prometheus buckets, in seconds.
pub const BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Cumulative counts at each of [`BUCKETS_S`] (the `+Inf` bucket is `len()`).
pub fn bucket_counts(h: &Histogram<u64>) -> Vec<u64> {
    let mut counts = vec![0u64; BUCKETS_S.len()];
    for value in h.iter_recorded() {
        // Bucket by the highest value equivalent to this recorded value, so
        // a value is never counted under a bound it might exceed.
        let ns = h.highest_equivalent(value.value_iterated_to());
        let seconds = ns as f64 / 1e9;
        if let Some(i) = BUCKETS_S.iter().position(|&b| seconds <= b) {
            counts[i] += value.count_at_value();
        }
    }
    let mut running = 0;
    for c in counts.iter_mut() {
        running += *c;
        *c = running;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn histograms_from_many_threads_merge_into_one() {
        let metrics = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for i in 1..=1000u64 {
                        metrics.record(Stage::EndToEnd, (t * 1000 + i) * 1000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let merged = metrics.merged();
        let h = merged.get(Stage::EndToEnd);
        assert_eq!(h.len(), 4000);
        assert_eq!(h.min(), h.lowest_equivalent(1000));
        assert_eq!(h.max(), h.highest_equivalent(4_000_000));
        let p50 = h.value_at_quantile(0.5) as f64;
        assert!((p50 - 2_000_000.0).abs() / 2_000_000.0 < 0.002, "p50 {p50}");
        assert_eq!(merged.get(Stage::FeedToRing).len(), 0, "stages stay apart");
    }

    #[test]
    fn buckets_are_cumulative_and_end_at_the_total() {
        let mut h = StageHistograms::default();
        for us in [5u64, 20, 20, 700, 3000, 20_000_000] {
            h.record(Stage::EndToEnd, us * 1000);
        }
        let counts = bucket_counts(h.get(Stage::EndToEnd));
        assert_eq!(counts[0], 1, "<= 10 us");
        assert_eq!(counts[1], 3, "<= 25 us");
        assert_eq!(counts[6], 4, "<= 1 ms");
        assert_eq!(counts[8], 5, "<= 5 ms");
        assert_eq!(
            *counts.last().unwrap(),
            5,
            "<= 10 s: the 20 s value is past every bound"
        );
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn subtracting_an_earlier_copy_leaves_the_interval() {
        let metrics = Metrics::new();
        metrics.record(Stage::EndToEnd, 1000);
        let earlier = metrics.merged();
        metrics.record(Stage::EndToEnd, 5_000_000);
        let mut interval = metrics.merged();
        interval.subtract(&earlier);
        assert_eq!(interval.get(Stage::EndToEnd).len(), 1);
        assert!(interval.get(Stage::EndToEnd).min() > 4_000_000);
    }
}
