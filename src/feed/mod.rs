//! Feed adapters: everything that brings updates into tickcast.
//!
//! Each adapter turns its input into [`FeedRecord`]s and hands them to a
//! [`FeedOutput`], which stamps the ingest time, counts, and publishes into the
//! sequenced ring. Bad lines are reported through [`FeedOutput::reject`] with
//! their line number; the adapter goes on with the next line.
//!
//! - [`synthetic`]: random-walk quotes and simulated matches (the demo default).
//! - [`replay`]: NDJSON files (optionally gzip), paced by their `ts`.
//! - [`tcp`]: a listener that producers write NDJSON records to.

pub mod replay;
pub mod synthetic;
pub mod tcp;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufRead;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::json_depth;
use crate::metrics::{Metrics, Stage};
use crate::record::{parse_line, FeedRecord, LineOutcome, LineReader, RejectReason, Rejection};
use crate::ring::Producer;

/// What the ring carries from feeds to the engine.
pub type RingItem = Arc<FeedRecord>;

/// How fast a replay runs relative to the recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// Multiplier on the recording's own pace (1.0 = real time).
    Factor(f64),
    /// As fast as the engine takes records.
    Max,
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        match s.trim_end_matches(['x', 'X']).parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
            _ => Err(format!(
                "speed must be a positive number (e.g. 2 or 0.5) or `max`, not {s:?}"
            )),
        }
    }
}

/// A `--feed` argument.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedSpec {
    /// `synthetic` or `synthetic:RATE` (total updates per second).
    Synthetic { rate: f64 },
    /// `replay:PATH` (`.gz` files are decompressed).
    Replay { path: PathBuf },
    /// `tcp:ADDR`: listen for NDJSON producers.
    Tcp { addr: SocketAddr },
}

/// Default total rate of the synthetic feed, in updates per second.
pub const DEFAULT_SYNTHETIC_RATE: f64 = 500.0;

impl FromStr for FeedSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "synthetic" if arg.is_empty() => Ok(FeedSpec::Synthetic {
                rate: DEFAULT_SYNTHETIC_RATE,
            }),
            "synthetic" => match arg.parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(FeedSpec::Synthetic { rate }),
                _ => Err(format!(
                    "synthetic:RATE needs a positive rate in updates/s, not {arg:?}"
                )),
            },
            "replay" if !arg.is_empty() => Ok(FeedSpec::Replay { path: arg.into() }),
            "tcp" => arg.parse().map(|addr| FeedSpec::Tcp { addr }).map_err(|_| {
                format!("tcp:ADDR needs an address like tcp:127.0.0.1:9100, not {arg:?}")
            }),
            _ => Err(format!(
                "unknown feed {s:?}: use synthetic[:RATE], replay:PATH or tcp:ADDR"
            )),
        }
    }
}

impl fmt::Display for FeedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedSpec::Synthetic { rate } => write!(f, "synthetic:{rate}"),
            FeedSpec::Replay { path } => write!(f, "replay:{}", path.display()),
            FeedSpec::Tcp { addr } => write!(f, "tcp:{addr}"),
        }
    }
}

/// Replay pacing options shared by every replay feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    pub speed: Speed,
    pub looped: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            speed: Speed::Factor(1.0),
            looped: false,
        }
    }
}

/// Lifecycle of a feed, shown on /metrics and /stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FeedStatus {
    Starting = 0,
    Running = 1,
    /// A replay that reached its end (without `--loop`).
    Finished = 2,
    Failed = 3,
}

impl FeedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedStatus::Starting => "starting",
            FeedStatus::Running => "running",
            FeedStatus::Finished => "finished",
            FeedStatus::Failed => "failed",
        }
    }
}

/// How many recent rejections a feed keeps for inspection.
pub const KEPT_REJECTIONS: usize = 64;

/// Counters of one feed; shared with the HTTP side.
#[derive(Debug)]
pub struct FeedStats {
    pub name: String,
    accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    status: AtomicU8,
    recent_rejections: Mutex<VecDeque<Rejection>>,
    /// The address a listening feed (tcp) actually bound, so port 0 works.
    local_addr: Mutex<Option<SocketAddr>>,
}

impl FeedStats {
    pub fn new(name: String) -> Self {
        Self {
            name,
            accepted: AtomicU64::new(0),
            rejected: Default::default(),
            status: AtomicU8::new(FeedStatus::Starting as u8),
            recent_rejections: Mutex::new(VecDeque::new()),
            local_addr: Mutex::new(None),
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|&r| self.rejected(r)).sum()
    }

    /// The most recent rejections, oldest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        let kept = self
            .recent_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        kept.iter().cloned().collect()
    }

    pub fn status(&self) -> FeedStatus {
        match self.status.load(Ordering::Relaxed) {
            0 => FeedStatus::Starting,
            1 => FeedStatus::Running,
            2 => FeedStatus::Finished,
            _ => FeedStatus::Failed,
        }
    }

    pub fn set_status(&self, status: FeedStatus) {
        self.status.store(status as u8, Ordering::Relaxed);
    }

    /// Records the address a listening feed bound (tcp feeds call this).
    pub fn set_local_addr(&self, addr: SocketAddr) {
        *self.local_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// The bound address of a listening feed, once it is listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.local_addr.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a feed hands its records: the ring, plus the feed's counters.
#[derive(Clone)]
pub struct FeedOutput {
    producer: Producer<RingItem>,
    stats: Arc<FeedStats>,
    metrics: Option<Arc<Metrics>>,
    /// `limits.max_json_depth` for the lines [`FeedOutput::ingest_lines`] parses.
    max_json_depth: usize,
}

impl FeedOutput {
    pub fn new(producer: Producer<RingItem>, stats: Arc<FeedStats>) -> Self {
        Self {
            producer,
            stats,
            metrics: None,
            max_json_depth: json_depth::DEFAULT_LIMIT,
        }
    }

    /// Refuses lines nested deeper than `depth` (`limits.max_json_depth`).
    pub fn with_max_json_depth(mut self, depth: usize) -> Self {
        self.max_json_depth = depth;
        self
    }

    /// Times each publish into the ring ([`Stage::FeedToRing`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn stats(&self) -> &Arc<FeedStats> {
        &self.stats
    }

    /// Stamps the ingest time and publishes; waits while the ring is full, so
    /// a fast feed is slowed to the engine's pace instead of losing records.
    pub async fn send(&self, mut record: FeedRecord) {
        let ingest_ns = clock::unix_nanos();
        record.ingest_ns = ingest_ns;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.producer.publish(Arc::new(record)).await;
        if let Some(metrics) = &self.metrics {
            let took = clock::unix_nanos().saturating_sub(ingest_ns);
            metrics.record(Stage::FeedToRing, took);
        }
    }

    /// Counts and logs a rejected line; the feed goes on.
    pub fn reject(&self, rejection: Rejection) {
        tracing::warn!(feed = %self.stats.name, "rejected {rejection}");
        self.stats.rejected[rejection.reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut kept = self
            .stats
            .recent_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT_REJECTIONS {
            kept.pop_front();
        }
        kept.push_back(rejection);
    }

    /// Reads NDJSON lines to the end of `input` (or until `shutdown`),
    /// sending records and rejecting bad lines. `pace` is awaited before each
    /// record is sent (replay uses it; others pass a no-op).
    pub async fn ingest_lines<R, P, F>(
        &self,
        input: R,
        shutdown: &CancellationToken,
        mut pace: P,
    ) -> std::io::Result<LineCounts>
    where
        R: AsyncBufRead + Unpin,
        P: FnMut(&FeedRecord) -> F,
        F: std::future::Future<Output = ()>,
    {
        let mut reader = LineReader::new(input);
        let mut counts = LineCounts::default();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(counts),
                next = reader.next_line() => next?,
            };
            let Some((line_no, raw)) = next else {
                return Ok(counts);
            };
            counts.lines = line_no;
            match parse_line(line_no, raw, self.max_json_depth) {
                LineOutcome::Record(record) => {
                    pace(&record).await;
                    counts.accepted += 1;
                    self.send(record).await;
                }
                LineOutcome::Blank => counts.blank += 1,
                LineOutcome::Rejected(rejection) => {
                    counts.rejected += 1;
                    self.reject(rejection);
                }
            }
        }
    }
}

/// What one pass over an NDJSON input gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineCounts {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub blank: u64,
}

/// Starts one feed as a task; it ends at `shutdown` or, for a replay without
/// loop, at the end of its file.
pub fn spawn(
    spec: FeedSpec,
    replay: ReplayOptions,
    output: FeedOutput,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stats = output.stats().clone();
        stats.set_status(FeedStatus::Running);
        let result = match spec {
            FeedSpec::Synthetic { rate } => {
                synthetic::run(rate, output, shutdown).await;
                Ok(())
            }
            FeedSpec::Replay { path } => replay::run(&path, replay, output, shutdown).await,
            FeedSpec::Tcp { addr } => tcp::run(addr, output, shutdown).await,
        };
        match result {
            Ok(()) => stats.set_status(FeedStatus::Finished),
            Err(e) => {
                tracing::error!(feed = %stats.name, "feed stopped: {e}");
                stats.set_status(FeedStatus::Failed);
            }
        }
    })
}
