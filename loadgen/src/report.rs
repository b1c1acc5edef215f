//! The run's result: every figure in one serialisable [`Report`], the end-of-run table, and
//! the files written to `--out` (result.json, latency.hgrm, latency.svg).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::GapExample;
use crate::config::Config;
use crate::stats::{LatencyFrom, Percentiles};

/// Exit status when a gap appeared that the protocol did not announce.
pub const EXIT_GAP: i32 = 2;
/// Exit status when the run was incomplete: clients could not connect or subscribe, or the
/// publisher stopped early.
pub const EXIT_INCOMPLETE: i32 = 3;
/// Exit status when clients subscribed but not one update reached them: a run that measured
/// nothing must not pass.
pub const EXIT_NOTHING_DELIVERED: i32 = 4;

/// All figures of one run. Its `Debug` form is the table (the histograms would fill a screen).
#[derive(Serialize)]
pub struct Report {
    pub label: String,
    pub command_line: String,
    pub loadgen_version: &'static str,
    pub started_unix_s: u64,
    pub url: String,
    /// The server's `Server` header from the upgrade response, if any.
    pub server_header: Option<String>,
    pub machine: Machine,
    pub config: Config,
    pub clients: Clients,
    /// TCP connect plus WebSocket upgrade, per connection.
    pub connect_us: Percentiles,
    /// Upgrade done to `subscribed` received.
    pub subscribe_us: Percentiles,
    /// Length of the measurement window the rates are computed over.
    pub window_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub bytes: u64,
    pub bytes_per_s: f64,
    /// Deliveries over the whole run, warm-up and drain included.
    pub deliveries_all: u64,
    pub latency: Latency,
    pub chains: Chains,
    pub publisher: Option<Publisher>,
    /// The `--stalled` connections (absent when none were asked for).
    pub stalled: Option<Stalled>,
    pub close: Close,
    /// The first few connect errors, server errors and unreadable messages, verbatim.
    pub error_samples: Vec<String>,
    /// Ctrl-C ended the window early (the rates are over the shortened window).
    pub interrupted: bool,
    pub exit_code: i32,
    pub verdict: String,
    #[serde(skip)]
    pub corrected: Histogram<u64>,
    #[serde(skip)]
    pub uncorrected: Option<Histogram<u64>>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub os: &'static str,
    pub arch: &'static str,
    pub cpus: usize,
}

#[derive(Debug, Serialize)]
pub struct Clients {
    pub requested: usize,
    pub connected: u64,
    pub subscribed: u64,
    pub connect_failed: u64,
    pub subscribe_failed: u64,
    pub connect_errors: BTreeMap<&'static str, u64>,
    pub source_ips: u8,
    pub fd_limit: u64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub from: LatencyFrom,
    pub unit: &'static str,
    /// From the schedule (publisher mode, corrected for coordinated omission) or server `ts`.
    pub corrected: Percentiles,
    /// From the actual send time (publisher mode only).
    pub uncorrected: Option<Percentiles>,
    pub unstamped: u64,
    pub negative: u64,
}

#[derive(Debug, Serialize)]
pub struct Chains {
    /// `prev` not matching the held seq: gaps the protocol did not announce.
    pub gaps: u64,
    pub snapshots: u64,
    pub resyncs: u64,
    pub chains_from_update: u64,
    pub disconnects: u64,
    pub slow_consumer_closes: u64,
    pub reconnects: u64,
    pub server_errors: u64,
    pub malformed: u64,
    pub gap_examples: Vec<GapExample>,
}

#[derive(Debug, Serialize)]
pub struct Publisher {
    pub rate: f64,
    pub channels: usize,
    pub sent: u64,
    /// The publisher's own lateness: actual send time minus scheduled time.
    pub lag_us: Percentiles,
    /// Sum over subscribed clients of the records sent on the channels they cover.
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub missing: u64,
    pub delivered_pct: f64,
    /// With `max_hz` or `fields` the server may coalesce or filter, so fewer is expected.
    pub coalescing_possible: bool,
    pub error: Option<String>,
}

/// The connections that subscribed and then never read (`--stalled`); none of their traffic is
/// in the other figures. How each ended is learnt when the run closes them (see `stalled.rs`).
#[derive(Debug, Default, Serialize)]
pub struct Stalled {
    pub requested: usize,
    pub subscribed: u64,
    /// SO_RCVBUF asked for, and what the kernel granted (Linux doubles the request).
    pub recv_buffer_requested: Option<u32>,
    pub recv_buffer_granted: Option<u32>,
    /// TCP_MAXSEG asked for (Linux).
    pub max_segment_requested: Option<u32>,
    /// Our close at the end was answered: the server kept the connection all run.
    pub kept_open: u64,
    /// Closed by the server first: close code -> connections.
    pub closed_by_server: BTreeMap<u16, u64>,
    /// Of those, closed with 1013 (slow consumer).
    pub slow_consumer_closes: u64,
    /// Ended without a close frame (EOF or reset).
    pub dropped: u64,
    /// Still receiving what had piled up when the close timeout passed.
    pub drain_timeouts: u64,
    /// Payload bytes read at the end: what had piled up for them.
    pub drained_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Close {
    pub clean: u64,
    pub timed_out: u64,
    /// Client tasks still running after the close timeout (aborted).
    pub unfinished: u64,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.table())
    }
}

impl Report {
    /// Sets the exit status and a one-line verdict from the figures.
    pub fn judge(&mut self) {
        let c = &self.clients;
        let publisher_error = self.publisher.as_ref().and_then(|p| p.error.clone());
        (self.exit_code, self.verdict) = if self.chains.gaps > 0 {
            (
                EXIT_GAP,
                format!(
                    "FAIL: {} unannounced gap(s) in the prev chains",
                    self.chains.gaps
                ),
            )
        } else if c.connected < c.requested as u64 || c.subscribed < c.connected {
            let v = format!(
                "INCOMPLETE: {} of {} clients connected, {} subscribed",
                c.connected, c.requested, c.subscribed
            );
            (EXIT_INCOMPLETE, v)
        } else if let Some(s) = self
            .stalled
            .as_ref()
            .filter(|s| s.subscribed < s.requested as u64)
        {
            let v = format!(
                "INCOMPLETE: {} of {} stalled connections subscribed",
                s.subscribed, s.requested
            );
            (EXIT_INCOMPLETE, v)
        } else if let Some(e) = publisher_error {
            (
                EXIT_INCOMPLETE,
                format!("INCOMPLETE: publisher stopped early: {e}"),
            )
        } else if self.deliveries_all == 0 {
            let v = "FAIL: no update was delivered to any client: check that a feed publishes \
                     to the subscribed channels (--subscribe), or use --publish";
            (EXIT_NOTHING_DELIVERED, v.to_string())
        } else if self.interrupted {
            (
                0,
                "OK: no unannounced gaps (interrupted: window cut short)".to_string(),
            )
        } else {
            (0, "OK: no unannounced gaps".to_string())
        };
    }

    /// The end-of-run table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<22} {v}");
        };
        let c = &self.clients;
        row("run", format!("{} -> {}", self.label, self.url));
        row(
            "clients",
            format!(
                "{} requested, {} connected, {} subscribed, {} failed to connect",
                c.requested, c.connected, c.subscribed, c.connect_failed
            ),
        );
        row("connect (us)", pct_line(&self.connect_us));
        row("window", format!("{:.2} s", self.window_s));
        row(
            "deliveries/s",
            format!(
                "{:.0} ({} in window)",
                self.deliveries_per_s, self.deliveries
            ),
        );
        row("bytes/s", format!("{:.2} MB/s", self.bytes_per_s / 1e6));
        let l = &self.latency;
        let from = match l.from {
            LatencyFrom::Schedule => "latency (us, CO-corr.)",
            LatencyFrom::ServerTs => "latency (us, from ts)",
        };
        row(from, pct_line(&l.corrected));
        if let Some(u) = &l.uncorrected {
            row("latency (us, uncorr.)", pct_line(u));
        }
        if let Some(p) = &self.publisher {
            row(
                "publisher",
                format!(
                    "{} records at {}/s over {} channels; lag p99 {:.1} us, max {:.1} us",
                    p.sent, p.rate, p.channels, p.lag_us.p99, p.lag_us.max
                ),
            );
            row(
                "delivered",
                format!(
                    "{} of {} expected ({:.3}%), missing {}{}",
                    p.received_deliveries,
                    p.expected_deliveries,
                    p.delivered_pct,
                    p.missing,
                    if p.coalescing_possible {
                        " (max_hz/fields may coalesce)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if let Some(s) = &self.stalled {
            let rcvbuf = match (s.recv_buffer_requested, s.recv_buffer_granted) {
                (Some(asked), Some(got)) => format!("SO_RCVBUF {asked} (kernel {got})"),
                (Some(asked), None) => format!("SO_RCVBUF {asked}"),
                (None, _) => "kernel default SO_RCVBUF".to_string(),
            };
            let mss = match s.max_segment_requested {
                Some(bytes) => format!("TCP_MAXSEG {bytes}"),
                None => "kernel default MSS".to_string(),
            };
            row(
                "stalled (not counted)",
                format!(
                    "{} requested, {} subscribed, {rcvbuf}, {mss}",
                    s.requested, s.subscribed
                ),
            );
            let closes: Vec<String> = s
                .closed_by_server
                .iter()
                .map(|(code, n)| format!("{n} with {code}"))
                .collect();
            row(
                "stalled at the end",
                format!(
                    "{} kept open, closed by the server: {}, {} dropped, {} drain timed out; \
                     {:.2} MB had piled up",
                    s.kept_open,
                    if closes.is_empty() {
                        "none".to_string()
                    } else {
                        closes.join(", ")
                    },
                    s.dropped,
                    s.drain_timeouts,
                    s.drained_bytes as f64 / 1e6
                ),
            );
        }
        let ch = &self.chains;
        row(
            "chains",
            format!(
                "gaps {}, snapshots {}, resyncs {}, started at update {}",
                ch.gaps, ch.snapshots, ch.resyncs, ch.chains_from_update
            ),
        );
        row(
            "connections",
            format!(
                "disconnects {}, slow-consumer closes {}, reconnects {}, server errors {}",
                ch.disconnects, ch.slow_consumer_closes, ch.reconnects, ch.server_errors
            ),
        );
        row(
            "close",
            format!(
                "{} clean, {} timed out, {} unfinished",
                self.close.clean, self.close.timed_out, self.close.unfinished
            ),
        );
        row(
            "verdict",
            format!("{} (exit {})", self.verdict, self.exit_code),
        );
        t
    }

    /// Writes result.json, latency.hgrm (and latency-uncorrected.hgrm) and latency.svg into
    /// `dir`, creating it. Returns the paths written.
    pub fn write_files(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the result folder {}", dir.display()))?;
        let mut files = vec![(
            dir.join("result.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )];
        files.push((
            dir.join("latency.hgrm"),
            crate::hgrm::render(&self.corrected),
        ));
        if let Some(u) = &self.uncorrected {
            files.push((dir.join("latency-uncorrected.hgrm"), crate::hgrm::render(u)));
        }
        let title = format!(
            "{}: {} clients, {}",
            self.label, self.clients.requested, self.url
        );
        let mut series = vec![(self.corrected_name(), &self.corrected)];
        if let Some(u) = &self.uncorrected {
            series.push(("uncorrected (from actual send)", u));
        }
        files.push((dir.join("latency.svg"), crate::plot::svg(&title, &series)));
        let mut written = Vec::new();
        for (path, text) in files {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }

    fn corrected_name(&self) -> &'static str {
        match self.latency.from {
            LatencyFrom::Schedule => "corrected (from schedule)",
            LatencyFrom::ServerTs => "from server ts",
        }
    }
}

fn pct_line(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  (n={})",
        p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max, p.count
    )
}
