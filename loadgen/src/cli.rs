//! Command-line flags and their translation into a [`Config`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::config::{Config, Pick, Publish};

#[derive(Debug, Parser)]
#[command(
    name = "tickcast-loadgen",
    version,
    about = "Load generator and latency meter for tickcast-protocol WebSocket servers",
    after_help = "\
EXAMPLES:
  Subscribe 5000 clients to a pattern, latency from the server's ts:
    tickcast-loadgen --url ws://127.0.0.1:8080/ws --clients 5000 --subscribe 'quotes.*' --duration 30s
  Drive the feed at 10k records/s over 100 channels, 3 channels per client (zipf), CO-corrected:
    tickcast-loadgen --url ws://127.0.0.1:8080/ws --publish tcp:127.0.0.1:9100 --rate 10000 \\
      --channels 100 --per-client 3 --clients 2000
  The same against the uWebSockets.js peer (exact names only there):
    tickcast-loadgen --url ws://127.0.0.1:9001/ws --publish 127.0.0.1:9002 --label uws ...
  1000 clients at 100 updates/s on one channel, plus one subscriber that stops reading:
    tickcast-loadgen --publish tcp:127.0.0.1:9100 --rate 100 --channels 1 --clients 1000 --stalled 1

EXIT STATUS:
  0 no unannounced gaps; 2 a prev chain broke without a resync or close announcing it;
  3 incomplete (clients or stalled connections failed to connect or subscribe, or the publisher
  stopped); 1 error.

Results go to --out (default ./results/loadgen/<unix time>-<label>/): result.json, latency.hgrm
(HdrHistogram percentile distribution, values in microseconds), latency.svg (percentile plot)."
)]
pub struct Args {
    /// WebSocket endpoint of the server under test (ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,

    /// Number of client connections to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,

    /// Extra connections that subscribe like the first N clients, then never read again (a
    /// slow consumer). Not counted in latency, deliveries or gap checks.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub stalled: usize,

    /// SO_RCVBUF (bytes) asked for on each stalled connection before it connects, so the
    /// server's writes back up quickly (Linux doubles it and enforces a minimum); 0 = the
    /// kernel's default.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    pub stalled_rcvbuf: u32,

    /// TCP_MAXSEG (bytes, Linux) asked for on each stalled connection, as on an Ethernet path:
    /// with loopback's ~64 KB segments the server's send buffer autotunes to megabytes before
    /// its writes block; 0 = the kernel's default.
    #[arg(long, default_value_t = 1460, value_name = "BYTES")]
    pub stalled_mss: u32,

    /// Connections opened per second during the ramp.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,

    /// Longest wait for one TCP connect plus WebSocket upgrade.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Spread connections over 127.0.0.1..N as source addresses (each adds ~28k local ports).
    /// 0 = one address per 25k clients.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,

    /// A channel name or pattern (`quotes.*`, `scores.>`) every client subscribes to.
    /// Repeatable.
    #[arg(long, short = 's', value_name = "NAME_OR_PATTERN")]
    pub subscribe: Vec<String>,

    /// N numbered channels PREFIX0 .. PREFIX{N-1} (see --channel-prefix) to pick from (and to
    /// publish to in publisher mode).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub channels: usize,

    /// How many of the N numbered channels each client subscribes to (distinct).
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub per_client: usize,

    /// How each client picks its K channels: zipf (a few hot channels) or uniform.
    #[arg(long, value_enum, default_value_t = PickArg::Zipf)]
    pub pick: PickArg,

    /// Zipf exponent s (rank r has weight 1/r^s).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// Prefix of the numbered channel names.
    #[arg(long, default_value = "quotes.S")]
    pub channel_prefix: String,

    /// Top-level field filter sent with each subscription, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub fields: Vec<String>,

    /// At most this many updates per second per channel, sent with each subscription.
    #[arg(long, value_name = "HZ")]
    pub max_hz: Option<f64>,

    /// Seed of the per-client channel picks (same seed, same mix).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Publisher mode: drive the feed at this TCP NDJSON ingest (`tcp:` prefix optional) and
    /// measure latency from each record's scheduled send time.
    #[arg(long, value_name = "ADDR", value_parser = parse_feed_addr)]
    pub publish: Option<SocketAddr>,

    /// Publisher mode: records per second over all published channels (round-robin).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Length of the measurement window (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time after all clients subscribed that is excluded from the latency figures.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Publisher mode: longest wait after the window for deliveries still in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Longest wait for the close handshakes at the end.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// Reconnects per client after an unexpected close (resuming with `since`); 0 disables.
    #[arg(long, default_value_t = 3)]
    pub max_reconnects: u32,

    /// Folder for result.json, latency.hgrm and latency.svg.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Write no result files, only print the table.
    #[arg(long, conflicts_with = "out")]
    pub no_files: bool,

    /// No live progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Offer permessage-deflate (with client_no_context_takeover, as a browser would with
    /// its window) and inflate every compressed frame; a server that declines fails the
    /// connect. For servers that agree to server_no_context_takeover (tickcast does).
    #[arg(long)]
    pub deflate: bool,

    /// A name for this run in the table, the JSON and the default folder (e.g. tickcast, uws).
    #[arg(long, default_value = "run")]
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PickArg {
    Zipf,
    Uniform,
}

impl Args {
    /// The run's settings; `command_line` is recorded in the result file.
    pub fn into_config(self, command_line: String) -> Config {
        let mut cfg = Config::new(self.url);
        cfg.clients = self.clients;
        cfg.stalled = self.stalled;
        cfg.stalled_recv_buffer = (self.stalled_rcvbuf > 0).then_some(self.stalled_rcvbuf);
        cfg.stalled_max_segment = (self.stalled_mss > 0).then_some(self.stalled_mss);
        cfg.connect_rate = self.connect_rate;
        cfg.connect_timeout = self.connect_timeout;
        cfg.source_ips = self.source_ips;
        cfg.mix.subscribe = self.subscribe;
        cfg.mix.channels = self.channels;
        cfg.mix.per_client = self.per_client;
        cfg.mix.pick = match self.pick {
            PickArg::Zipf => Pick::Zipf { s: self.zipf_s },
            PickArg::Uniform => Pick::Uniform,
        };
        cfg.mix.prefix = self.channel_prefix;
        cfg.mix.fields = self.fields;
        cfg.mix.max_hz = self.max_hz;
        cfg.mix.seed = self.seed;
        cfg.publish = self.publish.map(|addr| Publish {
            addr,
            rate: self.rate,
        });
        cfg.duration = self.duration;
        cfg.warmup = self.warmup;
        cfg.drain = self.drain;
        cfg.close_timeout = self.close_timeout;
        cfg.max_reconnects = self.max_reconnects;
        cfg.progress = !self.no_progress;
        cfg.deflate = self.deflate;
        cfg.label = self.label;
        cfg.command_line = command_line;
        cfg
    }
}

/// `250ms`, `10s`, `2m`, `1h`, or a plain number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration such as 500ms, 10s or 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))
}

/// `tcp:127.0.0.1:9100` or `127.0.0.1:9100` (a host name is resolved once).
pub fn parse_feed_addr(text: &str) -> Result<SocketAddr, String> {
    let addr = text.strip_prefix("tcp:").unwrap_or(text);
    addr.to_socket_addrs()
        .map_err(|e| format!("`{text}`: expected HOST:PORT of a TCP feed ingest ({e})"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags_become_a_config() {
        let args = Args::try_parse_from([
            "tickcast-loadgen",
            "--clients",
            "5000",
            "--subscribe",
            "quotes.*",
            "-s",
            "t.X",
            "--duration",
            "30s",
            "--publish",
            "tcp:127.0.0.1:9100",
            "--rate",
            "500",
            "--fields",
            "bid,ask",
            "--pick",
            "uniform",
            "--channels",
            "10",
            "--per-client",
            "2",
            "--stalled",
            "2",
            "--stalled-rcvbuf",
            "0",
            "--stalled-mss",
            "536",
        ])
        .unwrap();
        let cfg = args.into_config("x".into());
        assert_eq!(cfg.clients, 5000);
        assert_eq!(cfg.mix.subscribe, ["quotes.*", "t.X"]);
        assert_eq!(cfg.mix.fields, ["bid", "ask"]);
        assert_eq!(cfg.mix.pick, Pick::Uniform);
        assert_eq!(cfg.duration, Duration::from_secs(30));
        assert_eq!((cfg.stalled, cfg.stalled_recv_buffer), (2, None));
        assert_eq!(cfg.stalled_max_segment, Some(536));
        let p = cfg.publish.as_ref().unwrap();
        assert_eq!((p.addr.port(), p.rate), (9100, 500.0));
        cfg.validate().unwrap();
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" {
                assert!(arg.get_help().is_some(), "--{id} has no help text");
            }
        }
    }
}
