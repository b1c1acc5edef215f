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
//! - [`stdin`]: NDJSON records piped into the process.
//! - [`exchange`]: live Binance and Coinbase market data, with order books.
//!
//! Rejected lines are counted exactly per reason, but logged at most
//! `limits.reject_log_per_interval` times per interval per feed, each with
//! a short escaped excerpt ([`log_budget`]).

pub mod exchange;
pub mod log_budget;
pub mod record;
pub mod replay;
pub mod stdin;
pub mod synthetic;
pub mod tcp;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufRead;
use tokio_util::sync::CancellationToken;

use crate::auth::PublishKey;
use crate::clock;
use crate::handoff::Handoff;
use crate::json_depth;
use crate::metrics::{Metrics, Stage};
use crate::record::{
    parse_line, FeedRecord, LineOutcome, LineReader, RawLine, RejectReason, Rejection,
};
use crate::ring::Producer;
use log_budget::{excerpt, LogBudget, Verdict, EXCERPT_BYTES};
pub use replay::ReplayFrom;

/// What the ring carries from feeds to the engine: a shell the state stage,
/// the ring's only gating consumer, takes the record out of, so a slot does
/// not keep an applied record alive until the ring laps ([`Handoff`]).
pub type RingItem = Arc<Handoff<Arc<FeedRecord>>>;

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
    /// `stdin`: NDJSON records from standard input, until its end.
    Stdin,
    /// `binance:SYMS[?opts]` or `coinbase:SYMS[?opts]`: a live exchange.
    /// Parsed with the built-in URLs and limits; the server fills in the
    /// config's ([`FeedSpec::with_upstream_defaults`]).
    Exchange(Box<exchange::Upstream>),
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
            "stdin" if arg.is_empty() => Ok(FeedSpec::Stdin),
            "tcp" => arg.parse().map(|addr| FeedSpec::Tcp { addr }).map_err(|_| {
                format!("tcp:ADDR needs an address like tcp:127.0.0.1:9100, not {arg:?}")
            }),
            "binance" | "coinbase" => {
                let which = if kind == "binance" {
                    exchange::Exchange::Binance
                } else {
                    exchange::Exchange::Coinbase
                };
                let spec = exchange::ExchangeSpec::parse(which, arg, s)?;
                Ok(FeedSpec::Exchange(Box::new(exchange::Upstream::resolve(
                    spec,
                    &exchange::ExchangeUrls::default(),
                    exchange::UpstreamLimits::default(),
                ))))
            }
            _ => Err(format!(
                "unknown feed {s:?}: use synthetic[:RATE], replay:PATH, tcp:ADDR, stdin, \
                 binance:SYMBOLS or coinbase:PRODUCTS"
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
            FeedSpec::Stdin => f.write_str("stdin"),
            FeedSpec::Exchange(upstream) => upstream.spec.fmt(f),
        }
    }
}

impl FeedSpec {
    /// An exchange feed takes the config's URLs and limits where its spec
    /// gives none; other feeds are returned as they are.
    pub fn with_upstream_defaults(
        self,
        urls: &exchange::ExchangeUrls,
        limits: exchange::UpstreamLimits,
    ) -> Self {
        match self {
            FeedSpec::Exchange(upstream) => FeedSpec::Exchange(Box::new(
                exchange::Upstream::resolve(upstream.spec, urls, limits),
            )),
            other => other,
        }
    }
}

/// Replay pacing options shared by every replay feed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayOptions {
    pub speed: Speed,
    pub looped: bool,
    /// `--from`: where each pass starts (the top of the file if `None`).
    pub from: Option<ReplayFrom>,
    /// `--progress`: lines on stderr; `None` = only when it is a terminal.
    pub progress: Option<bool>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            speed: Speed::Factor(1.0),
            looped: false,
            from: None,
            progress: None,
        }
    }
}

/// What a pace function decides for a record: send it (after its wait),
/// or skip it unsent (a replay before its `--from`). `()` means send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    Send,
    Skip,
}

impl From<()> for Paced {
    fn from((): ()) -> Self {
        Paced::Send
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

/// The ingest limits of a feed (`[limits]` in the config; see
/// `config::Limits` for the keys and docs/architecture.md, "Ingest limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedLimits {
    /// Producer connections served at once by one tcp feed; further ones
    /// are told so and closed.
    pub max_producers: usize,
    /// A producer that completes no line for this long is closed.
    pub producer_idle_timeout: Duration,
    /// Rejected lines logged per interval per feed; the rest are counted.
    pub reject_log_per_interval: u32,
    pub reject_log_interval: Duration,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            max_producers: 64,
            producer_idle_timeout: Duration::from_secs(300),
            reject_log_per_interval: 10,
            reject_log_interval: Duration::from_secs(10),
        }
    }
}

impl FeedLimits {
    /// A fresh log budget for this feed's rejected lines (or refusals).
    pub fn log_budget(&self) -> LogBudget {
        let interval_ns = u64::try_from(self.reject_log_interval.as_nanos()).unwrap_or(u64::MAX);
        LogBudget::new(self.reject_log_per_interval, interval_ns)
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
    /// Producer connections open now (tcp feeds).
    producers: AtomicU64,
    /// Producer connections refused at `limits.max_producers_per_feed`.
    producers_refused: AtomicU64,
    /// Producer connections closed after `limits.producer_idle_timeout_ms`.
    producers_idle_closed: AtomicU64,
    /// Producer connections closed for a missing or wrong publish key.
    producers_unauthorized: AtomicU64,
    /// Rejected lines counted but not logged (the log budget was spent).
    rejections_not_logged: AtomicU64,
    /// Panics contained in this feed (its task or one producer connection).
    panics: AtomicU64,
    /// Upstream connections made again (exchange feeds).
    reconnects: AtomicU64,
    /// Order books re-synchronised after a sequence gap (exchange feeds).
    resyncs: AtomicU64,
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
            producers: AtomicU64::new(0),
            producers_refused: AtomicU64::new(0),
            producers_idle_closed: AtomicU64::new(0),
            producers_unauthorized: AtomicU64::new(0),
            rejections_not_logged: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
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

    /// Producer connections open now (tcp feeds; 0 for others).
    pub fn producers(&self) -> u64 {
        self.producers.load(Ordering::Relaxed)
    }

    pub fn producers_refused(&self) -> u64 {
        self.producers_refused.load(Ordering::Relaxed)
    }

    pub fn producers_idle_closed(&self) -> u64 {
        self.producers_idle_closed.load(Ordering::Relaxed)
    }

    pub fn producers_unauthorized(&self) -> u64 {
        self.producers_unauthorized.load(Ordering::Relaxed)
    }

    /// Rejected lines that were counted but not logged.
    pub fn rejections_not_logged(&self) -> u64 {
        self.rejections_not_logged.load(Ordering::Relaxed)
    }

    /// Panics contained in this feed (see [`crate::fault`]).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Upstream connections made again (exchange feeds; 0 for others).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Order books re-synchronised (exchange feeds; 0 for others).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    pub fn count_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a contained panic and logs it with what it stopped.
    pub fn panicked(&self, what: &str, message: &str) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(feed = %self.name,
            "{what} panicked ({message}); it is stopped, everything else goes on");
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
/// Clones share the counters and the rejected-line log budget.
#[derive(Clone)]
pub struct FeedOutput {
    producer: Producer<RingItem>,
    stats: Arc<FeedStats>,
    metrics: Option<Arc<Metrics>>,
    /// `limits.max_json_depth` for the lines [`FeedOutput::ingest_lines`] parses.
    max_json_depth: usize,
    limits: FeedLimits,
    reject_log: Arc<Mutex<LogBudget>>,
    /// Where the log budget's clock starts.
    started: Instant,
    /// The key producers of a listening feed must send first, if any.
    publish_key: Option<PublishKey>,
}

impl FeedOutput {
    pub fn new(producer: Producer<RingItem>, stats: Arc<FeedStats>) -> Self {
        let limits = FeedLimits::default();
        Self {
            producer,
            stats,
            metrics: None,
            max_json_depth: json_depth::DEFAULT_LIMIT,
            limits,
            reject_log: Arc::new(Mutex::new(limits.log_budget())),
            started: Instant::now(),
            publish_key: None,
        }
    }

    /// Producers of a listening feed must send `key` first (`tcp`).
    pub fn with_publish_key(mut self, key: Option<PublishKey>) -> Self {
        self.publish_key = key;
        self
    }

    pub fn publish_key(&self) -> Option<&PublishKey> {
        self.publish_key.as_ref()
    }

    /// Refuses lines nested deeper than `depth` (`limits.max_json_depth`).
    pub fn with_max_json_depth(mut self, depth: usize) -> Self {
        self.max_json_depth = depth;
        self
    }

    /// `limits.max_json_depth` for the lines this feed parses.
    pub fn max_json_depth(&self) -> usize {
        self.max_json_depth
    }

    /// Sets the ingest limits (the defaults otherwise).
    pub fn with_limits(mut self, limits: FeedLimits) -> Self {
        self.limits = limits;
        self.reject_log = Arc::new(Mutex::new(limits.log_budget()));
        self
    }

    pub fn limits(&self) -> &FeedLimits {
        &self.limits
    }

    /// Nanoseconds since this output was made: the log budget's clock.
    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
        crate::fault::inject(record.channel.as_str(), "a feed");
        let ingest_ns = clock::unix_nanos();
        record.ingest_ns = ingest_ns;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let item = Handoff::new(Arc::new(record), 1);
        self.producer.publish(item).await;
        if let Some(metrics) = &self.metrics {
            let took = clock::unix_nanos().saturating_sub(ingest_ns);
            metrics.record(Stage::FeedToRing, took);
        }
    }

    /// Like [`send`](Self::send), but waits at most `wait` for room in the
    /// ring (the HTTP publish endpoint must not hold a request without
    /// bound); `false` when the ring stayed full and nothing was sent.
    pub async fn send_within(&self, mut record: FeedRecord, wait: Duration) -> bool {
        let ingest_ns = clock::unix_nanos();
        record.ingest_ns = ingest_ns;
        let item = Handoff::new(Arc::new(record), 1);
        let item = match self.producer.try_publish(item) {
            Ok(_) => None,
            Err(full) => Some(full.into_inner()),
        };
        if let Some(item) = item {
            // `publish` is cancel-safe: on timeout the record was not sent.
            if tokio::time::timeout(wait, self.producer.publish(item))
                .await
                .is_err()
            {
                return false;
            }
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            let took = clock::unix_nanos().saturating_sub(ingest_ns);
            metrics.record(Stage::FeedToRing, took);
        }
        true
    }

    /// Counts and (within the log budget) logs a rejected line; the feed
    /// goes on.
    pub fn reject(&self, rejection: Rejection) {
        self.reject_line(rejection, None);
    }

    /// Like [`reject`](Self::reject), with the start of the line's bytes
    /// for the log (escaped and cut to [`EXCERPT_BYTES`]).
    pub fn reject_line(&self, rejection: Rejection, line_start: Option<&[u8]>) {
        self.stats.rejected[rejection.reason as usize].fetch_add(1, Ordering::Relaxed);
        let verdict = self
            .reject_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(self.elapsed_ns());
        self.log_rejection(verdict, &rejection, line_start);
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

    fn log_rejection(&self, verdict: Verdict, rejection: &Rejection, line_start: Option<&[u8]>) {
        let feed = &self.stats.name;
        let per_interval = self.limits.reject_log_per_interval;
        let interval_ms = self.limits.reject_log_interval.as_millis();
        match verdict {
            Verdict::Log { suppressed_before } => {
                if suppressed_before > 0 {
                    tracing::warn!(%feed, not_logged = suppressed_before,
                        "{suppressed_before} more rejected lines in the last {interval_ms} ms \
                         were counted but not logged");
                }
                // The detail can quote the input (a parser's message): escape it too.
                let detail = excerpt(rejection.detail.as_bytes());
                let line = line_start.map(excerpt).unwrap_or_default();
                tracing::warn!(%feed, line = %line,
                    "rejected line {}: {} ({detail})", rejection.line, rejection.reason);
            }
            Verdict::Suppress { first } => {
                self.stats
                    .rejections_not_logged
                    .fetch_add(1, Ordering::Relaxed);
                if first {
                    tracing::warn!(%feed,
                        "more than {per_interval} rejected lines in {interval_ms} ms \
                         (limits.reject_log_per_interval); counting the rest without logging \
                         them (see /metrics)");
                }
            }
        }
    }

    /// Reads NDJSON lines to the end of `input` (or until `shutdown`),
    /// sending records and rejecting bad lines. `pace` is awaited before each
    /// record is sent (replay uses it; others pass a no-op); a record it
    /// answers [`Paced::Skip`] for is counted as skipped and not sent.
    pub async fn ingest_lines<R, P, F, O>(
        &self,
        input: R,
        shutdown: &CancellationToken,
        pace: P,
    ) -> std::io::Result<LineCounts>
    where
        R: AsyncBufRead + Unpin,
        P: FnMut(&FeedRecord) -> F,
        F: std::future::Future<Output = O>,
        O: Into<Paced>,
    {
        self.ingest(input, shutdown, pace, None).await
    }

    /// [`ingest_lines`](Self::ingest_lines), except that waiting longer
    /// than `line_timeout` for a complete line (nothing sent, or half a
    /// line) ends it with an [`io::ErrorKind::TimedOut`] error. Time spent
    /// waiting for room in the ring does not count.
    pub async fn ingest_lines_with_timeout<R, P, F, O>(
        &self,
        input: R,
        shutdown: &CancellationToken,
        pace: P,
        line_timeout: Duration,
    ) -> std::io::Result<LineCounts>
    where
        R: AsyncBufRead + Unpin,
        P: FnMut(&FeedRecord) -> F,
        F: std::future::Future<Output = O>,
        O: Into<Paced>,
    {
        self.ingest(input, shutdown, pace, Some(line_timeout)).await
    }

    async fn ingest<R, P, F, O>(
        &self,
        input: R,
        shutdown: &CancellationToken,
        mut pace: P,
        line_timeout: Option<Duration>,
    ) -> std::io::Result<LineCounts>
    where
        R: AsyncBufRead + Unpin,
        P: FnMut(&FeedRecord) -> F,
        F: std::future::Future<Output = O>,
        O: Into<Paced>,
    {
        let mut reader = LineReader::new(input);
        let mut counts = LineCounts::default();
        // The start of the current line, kept for the log: parsing uses the
        // line's buffer as scratch space.
        let mut line_start = [0u8; EXCERPT_BYTES + 1];
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(counts),
                next = within(line_timeout, reader.next_line()) => next?,
            };
            let Some((line_no, raw)) = next else {
                return Ok(counts);
            };
            counts.lines = line_no;
            let kept = match &raw {
                RawLine::Bytes(bytes) => {
                    let n = bytes.len().min(line_start.len());
                    line_start[..n].copy_from_slice(&bytes[..n]);
                    n
                }
                RawLine::TooLong => 0,
            };
            match parse_line(line_no, raw, self.max_json_depth) {
                LineOutcome::Record(record) => {
                    if pace(&record).await.into() == Paced::Skip {
                        counts.skipped += 1;
                        continue;
                    }
                    counts.accepted += 1;
                    self.send(record).await;
                }
                LineOutcome::Blank => counts.blank += 1,
                LineOutcome::Rejected(rejection) => {
                    counts.rejected += 1;
                    self.reject_line(rejection, Some(&line_start[..kept]));
                }
            }
        }
    }
}

/// Awaits `read`, at most `limit` when one is given.
async fn within<T>(
    limit: Option<Duration>,
    read: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        None => read.await,
        Some(limit) => tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete line for {} ms", limit.as_millis()),
            ))
        }),
    }
}

/// What one pass over an NDJSON input gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineCounts {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub blank: u64,
    /// Records a pace function skipped (a replay's `--from`).
    pub skipped: u64,
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
        let work = async move {
            match spec {
                FeedSpec::Synthetic { rate } => {
                    synthetic::run(rate, output, shutdown).await;
                    Ok(())
                }
                FeedSpec::Replay { path } => replay::run(&path, replay, output, shutdown).await,
                FeedSpec::Tcp { addr } => tcp::run(addr, output, shutdown).await,
                FeedSpec::Stdin => stdin::run(output, shutdown).await,
                FeedSpec::Exchange(upstream) => {
                    exchange::driver::run(*upstream, output, shutdown).await
                }
            }
        };
        match crate::fault::contain(work).await {
            Ok(Ok(())) => stats.set_status(FeedStatus::Finished),
            Ok(Err(e)) => {
                tracing::error!(feed = %stats.name, "feed stopped: {e}");
                stats.set_status(FeedStatus::Failed);
            }
            Err(panic) => {
                stats.panicked("the feed", &panic);
                stats.set_status(FeedStatus::Failed);
            }
        }
    })
}
