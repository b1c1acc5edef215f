//! Latency histograms per stage of the data path, and the text of
//! `/metrics` (Prometheus) and `/stats` (JSON).
//!
//! Recording is per thread: each runtime thread records into its own
//! HdrHistograms (a lock only that thread takes, except while a scrape
//! merges them), so the hot path never contends. Reads merge every thread's
//! histograms into one.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Process-wide figures of one server.
pub struct Metrics {
    per_thread: ThreadLocal<Mutex<StageHistograms>>,
    /// Monotonic origin for queue timestamps.
    origin: Instant,
    pub frames_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Failed accepts on the HTTP listener, every kind.
    pub accept_errors: AtomicU64,
    /// Of those, failed for want of a file descriptor (EMFILE/ENFILE).
    pub accept_fd_exhausted: AtomicU64,
    /// Connections answered from the reserved descriptor at the limit.
    pub answered_at_fd_limit: AtomicU64,
    /// Connections dropped because the peer accepted no byte for
    /// `limits.write_timeout_ms`.
    pub write_stalls_closed: AtomicU64,
    /// Connections closed after sending nothing for `limits.idle_timeout_ms`.
    pub idle_closed: AtomicU64,
    /// Pings sent to connections quiet for half of `limits.idle_timeout_ms`.
    pub idle_pings: AtomicU64,
    /// Connections closed for a frame not finished within
    /// `limits.frame_timeout_ms`.
    pub frame_timeouts_closed: AtomicU64,
    /// Sessions ended by a contained panic (see `fault`).
    pub session_panics: AtomicU64,
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
            frames_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            accept_fd_exhausted: AtomicU64::new(0),
            answered_at_fd_limit: AtomicU64::new(0),
            write_stalls_closed: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            idle_pings: AtomicU64::new(0),
            frame_timeouts_closed: AtomicU64::new(0),
            session_panics: AtomicU64::new(0),
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
