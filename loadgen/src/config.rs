//! The run's typed settings. `cli.rs` fills them from flags; tests build them directly with
//! [`Config::new`] and change the fields they care about.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// How client i picks its K channels among the N numbered ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pick {
    /// Rank r is chosen with weight 1/r^s: a few hot channels, a long tail.
    Zipf { s: f64 },
    /// Every channel equally likely.
    Uniform,
}

/// What each client subscribes to. See `cli.rs` for the flag that sets each field.
#[derive(Debug, Clone, Serialize)]
pub struct Mix {
    /// Names or patterns every client subscribes to (`--subscribe`, repeatable).
    pub subscribe: Vec<String>,
    /// N numbered channels `<prefix>0 .. <prefix>{N-1}` (`--channels`); 0 for none.
    pub channels: usize,
    /// K of the N numbered channels per client (`--per-client`).
    pub per_client: usize,
    pub pick: Pick,
    pub prefix: String,
    /// Top-level field filter sent with the subscription (`--fields`); empty for none.
    pub fields: Vec<String>,
    /// Per-channel rate cap sent with the subscription (`--max-hz`).
    pub max_hz: Option<f64>,
    /// Seed of the per-client channel picks, so a run can be repeated exactly.
    pub seed: u64,
}

/// Publisher mode: the loadgen drives the feed itself (`--publish`).
#[derive(Debug, Clone, Serialize)]
pub struct Publish {
    /// A TCP NDJSON feed ingest (tickcast `--feed tcp:ADDR`, the uWS peer's `--ingest`).
    pub addr: SocketAddr,
    /// Records per second over all channels, on a fixed schedule.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `ws://host:port/path[?query]` of the server's WebSocket endpoint.
    pub url: String,
    pub clients: usize,
    /// Extra connections that subscribe like clients 0, 1, ... and then never read again
    /// (`--stalled`); not measured. See `stalled.rs`.
    pub stalled: usize,
    /// SO_RCVBUF asked for on the stalled connections' sockets (before connecting), so the
    /// server's writes back up after a few KB; `None` leaves the kernel default.
    pub stalled_recv_buffer: Option<u32>,
    /// TCP_MAXSEG asked for on the stalled connections (Linux): a network-like segment size,
    /// so the server's send buffer does not autotune to loopback's megabytes; `None` leaves it.
    pub stalled_max_segment: Option<u32>,
    /// New connections per second during the ramp.
    pub connect_rate: f64,
    /// Longest wait for one TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// Local 127.0.0.x addresses to spread connections over; 0 picks enough for `clients`.
    pub source_ips: u8,
    pub mix: Mix,
    pub publish: Option<Publish>,
    /// Measurement window, after the warm-up.
    pub duration: Duration,
    /// Time after all clients subscribed whose deliveries are excluded from latency figures.
    pub warmup: Duration,
    /// Longest wait after the window for deliveries still in flight (publisher mode).
    pub drain: Duration,
    /// Longest wait for the close handshake of every connection at the end.
    pub close_timeout: Duration,
    /// Reconnect (and resume with `since`) after an unexpected close, at most this often per
    /// client; 0 disables.
    pub max_reconnects: u32,
    /// Draw the live progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Offer permessage-deflate and inflate compressed frames (`--deflate`).
    pub deflate: bool,
    /// A name for this run in the table and the JSON (`tickcast`, `uws`, ...).
    pub label: String,
    /// The command line, recorded in the result file.
    pub command_line: String,
}

impl Config {
    /// Defaults for everything but the URL: 100 clients, 10 s, no subscriptions yet.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            clients: 100,
            stalled: 0,
            stalled_recv_buffer: Some(4096),
            stalled_max_segment: Some(1460),
            connect_rate: 1000.0,
            connect_timeout: Duration::from_secs(10),
            source_ips: 0,
            mix: Mix {
                subscribe: Vec::new(),
                channels: 0,
                per_client: 1,
                pick: Pick::Zipf { s: 1.0 },
                prefix: "quotes.S".into(),
                fields: Vec::new(),
                max_hz: None,
                seed: 1,
            },
            publish: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            drain: Duration::from_secs(2),
            close_timeout: Duration::from_secs(3),
            max_reconnects: 3,
            progress: false,
            deflate: false,
            label: "run".into(),
            command_line: String::new(),
        }
    }

    /// The hard deadline of the whole run: ramp, warm-up, window, drain, close, plus a grace.
    pub fn hard_deadline(&self) -> Duration {
        let ramp = Duration::from_secs_f64(self.clients as f64 / self.connect_rate);
        // The stalled connections are opened after the ramp and waited for as long again.
        let stalled = if self.stalled > 0 {
            self.connect_timeout + Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        ramp + stalled
            + self.connect_timeout
            + self.warmup
            + self.duration
            + self.drain
            + self.close_timeout
            + Duration::from_secs(5)
    }

    /// Checks what flags cannot express; the message says what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.connect_rate <= 0.0 || !self.connect_rate.is_finite() {
            bail!("--connect-rate must be a positive number of connections per second");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0 (for example 10s)");
        }
        let m = &self.mix;
        if m.subscribe.is_empty() && m.channels == 0 {
            bail!(
                "nothing to subscribe to: give --subscribe NAME_OR_PATTERN (repeatable) or \
                 --channels N with --per-client K"
            );
        }
        if m.channels > 0 && (m.per_client == 0 || m.per_client > m.channels) {
            bail!(
                "--per-client {} must be between 1 and --channels {}",
                m.per_client,
                m.channels
            );
        }
        if let Pick::Zipf { s } = m.pick {
            if s <= 0.0 || !s.is_finite() {
                bail!("--zipf-s must be a positive number (1.0 is the classic zipf)");
            }
        }
        if let Some(hz) = m.max_hz {
            if hz <= 0.0 || !hz.is_finite() {
                bail!("--max-hz must be a positive number of updates per second");
            }
        }
        if let Some(p) = &self.publish {
            if p.rate <= 0.0 || !p.rate.is_finite() {
                bail!("--rate must be a positive number of records per second");
            }
            if crate::mix::published_channels(m).is_empty() {
                bail!(
                    "publisher mode needs channel names to publish to: give --channels N \
                     (with --channel-prefix) or exact names with --subscribe (patterns cannot be \
                     published to)"
                );
            }
        }
        Ok(())
    }
}
