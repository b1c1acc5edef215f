//! Configuration: command-line flags, the optional TOML file, and every
//! limit with its default in one place.
//!
//! Precedence: a flag given on the command line, then the config file, then
//! the default written here.
//!
//! Values are checked while the file is read (the `check` module below), so
//! an unknown key or a bad value stops start-up with an error that quotes
//! the file's line, key included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::auth::{Access, Auth, OriginPolicy, PublishKey, SubscribeRules, TokenVerifier};
use crate::deflate::CompressionConfig;
use crate::engine::{EngineLimits, IngestLimits, Mode, NamespacePolicy, Namespaces};
use crate::feed::exchange::{ExchangeUrls, UpstreamLimits};
use crate::feed::record::RecordOptions;
use crate::feed::{FeedLimits, FeedSpec, ReplayFrom, ReplayOptions, Speed};
use crate::http::admission::AdmissionLimits;
use crate::http::client_ip::{AddrRange, TrustedProxy};
use crate::json_depth;
use crate::session::message_rate::MessageLimit;
use crate::session::protocol::RequestLimits;
use crate::session::SessionLimits;

/// tickcast: market data and live scores pushed to WebSocket clients.
///
/// With no command, tickcast serves: `tickcast --feed replay:FILE` is
/// `tickcast serve --feed replay:FILE`, and `tickcast` alone serves the
/// synthetic demo feed on 127.0.0.1:8080.
#[derive(Debug, Parser)]
#[command(name = "tickcast", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// `serve`'s flags, accepted without the word `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// What to do: a subcommand, or serving with the top-level flags.
    pub fn into_command(self) -> CliCommand {
        self.command.unwrap_or(CliCommand::Serve(self.serve))
    }
}

// Made once at start-up: the size of `Serve` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Subcommand)]
pub enum CliCommand {
    /// Serve channels over WebSocket (the default when no command is given).
    Serve(ServeArgs),
    /// Print the default configuration file, with every key documented.
    DefaultConfig,
}

#[derive(Debug, Default, PartialEq, Args)]
pub struct ServeArgs {
    /// Address to listen on for HTTP and WebSocket clients [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A feed to ingest: `synthetic[:RATE]`, `replay:PATH` (NDJSON, `.gz` ok),
    /// `tcp:ADDR` (producers write NDJSON records), `stdin` (NDJSON piped in),
    /// `binance:BTCUSDT,ETHUSDT` or `coinbase:BTC-USD,ETH-USD` (live public
    /// market data: quotes, trades, order books). Exchange options follow a
    /// `?`, joined by `&`: `depth=N` (book levels kept per side), `ws_url=`,
    /// `rest_url=` (Binance) to point at another server, `name=X` (status
    /// channel `feeds.X`), `trades=agg` (Binance aggTrade), `api=advanced`
    /// (Coinbase Advanced Trade). See docs/feeds.md.
    /// Repeat for several feeds.
    /// [default: synthetic]
    #[arg(long = "feed", value_name = "SPEC")]
    pub feeds: Vec<FeedSpec>,
    /// Replay speed: a factor on the recording's pace (2 = twice as fast) or `max`.
    /// [default: 1]
    #[arg(long, value_name = "X")]
    pub speed: Option<Speed>,
    /// Start replays over when they reach the end.
    #[arg(long = "loop")]
    pub looped: bool,
    /// Start replays at a time (RFC 3339, or unix ms), compared with each
    /// record's `ts`, or at a record number `#N` (1-based, counting records,
    /// not blank or rejected lines); earlier records are skipped unsent.
    #[arg(long, value_name = "WHEN")]
    pub from: Option<ReplayFrom>,
    /// Replay progress on stderr, a line every few seconds: records sent,
    /// share of the file read, how far behind schedule [default: on when
    /// stderr is a terminal].
    #[arg(long, value_name = "BOOL")]
    pub progress: Option<bool>,
    /// Append every record the engine accepts to FILE (NDJSON, gzip if it
    /// ends in `.gz`), in the replay feed's format; see `record_flush_ms`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// A TOML configuration file (see `tickcast default-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log the main figures (rates, end-to-end p50/p99/max) every SECS seconds;
    /// 0 turns it off [default: 10].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Write a frame straight to an idle socket from the fanout (true), or
    /// always hand it to the connection's writer task (false) [default: false].
    #[arg(long, value_name = "BOOL")]
    pub direct_writes: Option<bool>,
    /// Fanout shards (1 to 256): each owns a share of the connections and
    /// fans out to them on its own task; 0 = one per CPU core [default: 0].
    #[arg(long, value_name = "N")]
    pub engine_shards: Option<usize>,
    /// Log filter, e.g. `info`, `debug`, `tickcast=debug` [default: info; env RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Secret (at least 32 bytes) that HS256 tokens are signed with. With a
    /// secret or a public key, every namespace needs a token unless the config
    /// makes it public. Prefer the environment variable: flags show in `ps`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "TICKCAST_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// A PEM public key (RSA or EC) that RS256/PS256/ES256 tokens are checked
    /// with, for issuers that keep the private key elsewhere.
    #[arg(long, value_name = "PATH", env = "TICKCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// A browser origin that may open WebSockets, like `https://app.example.com`,
    /// or `*` for any; repeat for several. Without one, only pages served from
    /// this server's own host may (clients that send no Origin always may).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Key (at least 16 bytes) that `tcp:` producers send as their first line,
    /// `{"auth":"KEY"}`, and `POST /publish` as `Authorization: Bearer KEY`.
    /// Needed for a tcp feed on a non-loopback address, and for publishing
    /// over HTTP from anywhere but loopback.
    #[arg(
        long,
        value_name = "KEY",
        env = "TICKCAST_PUBLISH_KEY",
        hide_env_values = true
    )]
    pub publish_key: Option<String>,
    /// A PEM certificate chain (the server's own certificate first): with
    /// --tls-key, this port serves https and wss only. SIGHUP reloads both.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Scale out over NATS JetStream: the server URL, e.g.
    /// nats://127.0.0.1:4222 (credentials and TLS: `[nats]` in the config;
    /// docs/scaling.md). Without it everything stays in this process.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// With --nats: `ingest` (runs the feeds, assigns seqs, publishes;
    /// serves no WebSocket clients), `edge` (no feeds; follows the stream,
    /// serves clients) or `both` (both, its clients served from the
    /// stream) [default: both].
    #[arg(long, value_name = "ROLE")]
    pub role: Option<crate::nats::Role>,
}

/// The default configuration file; also the documentation of every key.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// The whole configuration, as read from the file (every key optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "check::feeds")]
    pub feeds: Vec<String>,
    #[serde(deserialize_with = "check::speed")]
    pub speed: String,
    #[serde(rename = "loop")]
    pub looped: bool,
    /// `--record`: the recording's path; empty for none.
    pub record: PathBuf,
    /// How often the recording is flushed (ms): what a crash can lose.
    #[serde(deserialize_with = "check::record_flush_ms")]
    pub record_flush_ms: u64,
    #[serde(deserialize_with = "check::log_filter")]
    pub log: String,
    pub stats_interval: u64,
    pub direct_writes: bool,
    #[serde(deserialize_with = "check::engine_shards")]
    pub engine_shards: usize,
    /// The header a trusted reverse proxy puts the client's address in
    /// (`x-forwarded-for`, `x-real-ip`, ...); empty: none.
    pub trusted_proxy_header: String,
    /// Peers (addresses or ranges) whose `trusted_proxy_header` is believed.
    pub trusted_proxies: Vec<AddrRange>,
    pub limits: Limits,
    /// Policy for every namespace not named in `namespaces`.
    pub namespace_defaults: NamespaceDefaults,
    /// Per-namespace policy; a key left out comes from `namespace_defaults`.
    #[serde(deserialize_with = "check::namespaces")]
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// `[auth]`: token keys, allowed origins, the publish key.
    pub auth: AuthConfig,
    /// `[tls]`: the certificate and key files.
    pub tls: TlsConfig,
    /// `[compression]`: permessage-deflate (`crate::deflate`).
    pub compression: CompressionConfig,
    /// `[exchanges.binance]`, `[exchanges.coinbase]`: upstream URLs.
    pub exchanges: ExchangesConfig,
    /// `[nats]`: scale-out over NATS JetStream (off without a url).
    pub nats: NatsConfig,
}

/// `[exchanges]`: where the exchange feeds connect (a spec's `ws_url=` /
/// `rest_url=` option wins).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangesConfig {
    pub binance: BinanceConfig,
    pub coinbase: CoinbaseConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BinanceConfig {
    pub ws_url: String,
    pub rest_url: String,
}

impl Default for BinanceConfig {
    fn default() -> Self {
        Self {
            ws_url: crate::feed::exchange::BINANCE_WS_URL.into(),
            rest_url: crate::feed::exchange::BINANCE_REST_URL.into(),
        }
    }
}

/// `[nats]` (docs/scaling.md); `--nats` and `--role` win.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// NATS server URL; empty: no NATS, one process (the default).
    pub url: String,
    /// `ingest`, `edge` or `both`.
    pub role: String,
    pub stream: String,
    pub subject_prefix: String,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A PEM CA file: the connection must then be TLS, checked against it.
    pub tls_ca: Option<PathBuf>,
    #[serde(deserialize_with = "check::max_pending_records")]
    pub max_pending_records: usize,
    #[serde(deserialize_with = "check::writer_lease_ms")]
    pub writer_lease_ms: u64,
    #[serde(deserialize_with = "check::max_stream_bytes")]
    pub max_stream_bytes: u64,
    #[serde(deserialize_with = "check::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(deserialize_with = "check::snapshot_interval_ms")]
    pub snapshot_interval_ms: u64,
    #[serde(deserialize_with = "check::snapshot_interval_records")]
    pub snapshot_interval_records: u64,
    #[serde(deserialize_with = "check::max_records_per_channel")]
    pub max_records_per_channel: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        let d = crate::nats::NatsSettings::new(String::new(), crate::nats::Role::Both);
        Self {
            url: String::new(),
            role: "both".into(),
            stream: d.stream,
            subject_prefix: d.prefix,
            creds: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            max_pending_records: d.max_pending_records,
            writer_lease_ms: d.writer_lease.as_millis() as u64,
            max_stream_bytes: d.max_stream_bytes as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            snapshot_interval_ms: d.snapshot_interval.as_millis() as u64,
            snapshot_interval_records: d.snapshot_interval_records,
            max_records_per_channel: d.max_records_per_channel as u64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoinbaseConfig {
    /// The Exchange feed.
    pub ws_url: String,
    /// Advanced Trade (`api=advanced`).
    pub advanced_ws_url: String,
}

impl Default for CoinbaseConfig {
    fn default() -> Self {
        Self {
            ws_url: crate::feed::exchange::COINBASE_WS_URL.into(),
            advanced_ws_url: crate::feed::exchange::COINBASE_ADVANCED_WS_URL.into(),
        }
    }
}

impl ExchangesConfig {
    /// The URLs, each checked for its scheme.
    fn urls(&self) -> Result<ExchangeUrls, String> {
        let check = |key: &str, url: &str, schemes: [&str; 2]| -> Result<String, String> {
            let scheme = url.split("://").next().unwrap_or("");
            if url.contains("://") && schemes.contains(&scheme) {
                Ok(url.trim_end_matches('/').to_owned())
            } else {
                Err(format!(
                    "exchanges.{key} must be a {} URL, not {url:?}",
                    schemes.join(" or ")
                ))
            }
        };
        Ok(ExchangeUrls {
            binance_ws: check("binance.ws_url", &self.binance.ws_url, ["ws", "wss"])?,
            binance_rest: check(
                "binance.rest_url",
                &self.binance.rest_url,
                ["http", "https"],
            )?,
            coinbase_ws: check("coinbase.ws_url", &self.coinbase.ws_url, ["ws", "wss"])?,
            coinbase_advanced_ws: check(
                "coinbase.advanced_ws_url",
                &self.coinbase.advanced_ws_url,
                ["ws", "wss"],
            )?,
        })
    }
}

impl std::fmt::Debug for NatsConfig {
    // The password and token are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("role", &self.role)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// `[nats]` with `--nats` and `--role` on top; `None` without a url.
    fn settings(&self, args: &ServeArgs) -> Result<Option<crate::nats::NatsSettings>, String> {
        let url = args.nats.clone().unwrap_or_else(|| self.url.clone());
        if url.is_empty() {
            if args.role.is_some() {
                return Err("--role needs --nats URL (or url in [nats])".into());
            }
            return Ok(None);
        }
        let role = match args.role {
            Some(role) => role,
            None => self.role.parse()?,
        };
        let valid_token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid_token(&self.stream) || !valid_token(&self.subject_prefix) {
            return Err(format!(
                "[nats] stream ({:?}) and subject_prefix ({:?}) must be non-empty letters, digits, _ or -",
                self.stream, self.subject_prefix
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("[nats] user and password go together".into());
        }
        let mut settings = crate::nats::NatsSettings::new(url, role);
        settings.stream = self.stream.clone();
        settings.prefix = self.subject_prefix.clone();
        settings.creds = self.creds.clone();
        settings.user = self.user.clone();
        settings.password = self.password.clone();
        settings.token = self.token.clone();
        settings.tls_ca = self.tls_ca.clone();
        settings.max_pending_records = self.max_pending_records;
        settings.writer_lease = Duration::from_millis(self.writer_lease_ms);
        settings.max_stream_bytes = i64::try_from(self.max_stream_bytes).unwrap_or(i64::MAX);
        settings.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        // A channel's records since its last snapshot must still be in
        // the stream for a catch-up to read them.
        if self.max_records_per_channel <= self.snapshot_interval_records {
            return Err(format!(
                "[nats] max_records_per_channel ({}) must be greater than snapshot_interval_records ({})",
                self.max_records_per_channel, self.snapshot_interval_records
            ));
        }
        settings.snapshot_interval = Duration::from_millis(self.snapshot_interval_ms);
        settings.snapshot_interval_records = self.snapshot_interval_records;
        settings.max_records_per_channel =
            i64::try_from(self.max_records_per_channel).unwrap_or(i64::MAX);
        Ok(Some(settings))
    }
}

/// `[tls]`: both keys or neither; flags win.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (`--tls-cert`).
    pub cert: Option<PathBuf>,
    /// PEM private key (`--tls-key`).
    pub key: Option<PathBuf>,
}

/// `[auth]`. Every key is optional; flags and environment variables win.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret (`--jwt-secret`, `TICKCAST_JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS/PS/ES tokens (`--jwt-public-key`).
    pub jwt_public_key: Option<PathBuf>,
    /// Browser origins that may open WebSockets (`--allowed-origin`).
    pub allowed_origins: Vec<String>,
    /// Key `tcp:` producers send first (`--publish-key`, `TICKCAST_PUBLISH_KEY`).
    pub publish_key: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    // The secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| ".."))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("allowed_origins", &self.allowed_origins)
            .field("publish_key", &self.publish_key.as_ref().map(|_| ".."))
            .finish()
    }
}

/// `[namespace_defaults]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceDefaults {
    pub mode: Mode,
    #[serde(deserialize_with = "check::history")]
    pub history: usize,
    /// Who may subscribe; unset means "token" when a token key is
    /// configured, else "public".
    pub subscribe: Option<Access>,
}

impl Default for NamespaceDefaults {
    fn default() -> Self {
        let policy = NamespacePolicy::default();
        Self {
            mode: policy.mode,
            history: policy.history,
            subscribe: None,
        }
    }
}

/// `[namespaces.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub mode: Option<Mode>,
    #[serde(default, deserialize_with = "check::some_history")]
    pub history: Option<usize>,
    pub subscribe: Option<Access>,
}

/// Most fanout shards one may ask for. Shards hold only their sessions'
/// delivery state, so more cost little; past this many a typo is likelier
/// than a machine that needs them.
pub const MAX_ENGINE_SHARDS: usize = 256;

/// 0 means one shard per CPU core, whatever the count.
fn resolve_shards(shards: usize) -> Result<usize, String> {
    match shards {
        0 => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n if n <= MAX_ENGINE_SHARDS => Ok(n),
        n => Err(format!(
            "engine_shards must be between 1 and {MAX_ENGINE_SHARDS}, not {n} \
             (0 = one per CPU core)"
        )),
    }
}

/// Most updates a channel may keep for resume (memory is per channel).
pub const MAX_HISTORY: usize = 1 << 20;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            feeds: vec!["synthetic".into()],
            speed: "1".into(),
            looped: false,
            record: PathBuf::new(),
            record_flush_ms: 1000,
            log: "info".into(),
            stats_interval: 10,
            direct_writes: false,
            engine_shards: 0,
            trusted_proxy_header: String::new(),
            trusted_proxies: Vec::new(),
            limits: Limits::default(),
            namespace_defaults: NamespaceDefaults::default(),
            namespaces: BTreeMap::new(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            compression: CompressionConfig::default(),
            exchanges: ExchangesConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// Every bound the server enforces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest client message in bytes; a larger frame is closed with 1009.
    #[serde(deserialize_with = "check::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Outbound queue bound per connection, in bytes.
    #[serde(deserialize_with = "check::outbox_bytes")]
    pub outbox_bytes: usize,
    /// Most names and patterns one connection may be subscribed to.
    #[serde(deserialize_with = "check::max_subscriptions_per_connection")]
    pub max_subscriptions_per_connection: usize,
    /// Most channels in one subscribe or unsubscribe message.
    #[serde(deserialize_with = "check::max_channels_per_request")]
    pub max_channels_per_request: usize,
    /// Most entries in one subscribe's `fields`.
    #[serde(deserialize_with = "check::max_fields_per_subscribe")]
    pub max_fields_per_subscribe: usize,
    /// Most channels the server keeps.
    #[serde(deserialize_with = "check::max_channels")]
    pub max_channels: usize,
    /// Most WebSocket connections at once.
    #[serde(deserialize_with = "check::max_connections")]
    pub max_connections: usize,
    /// Records the feed-to-engine ring holds (a power of two).
    #[serde(deserialize_with = "check::power_of_two")]
    pub ring_capacity: usize,
    /// Commands from sessions the engine queues before sessions wait.
    #[serde(deserialize_with = "check::engine_queue")]
    pub engine_queue: usize,
    /// How long a peer may accept no byte of what is owed to it before it
    /// is dropped (ms).
    #[serde(deserialize_with = "check::write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// How deep `[`/`{` may nest in a client message or feed line; deeper
    /// input is refused before it is parsed (see `json_depth`).
    #[serde(deserialize_with = "check::max_json_depth")]
    pub max_json_depth: usize,
    /// Producer connections one tcp feed serves at once; more are refused
    /// with an error line.
    #[serde(deserialize_with = "check::max_producers_per_feed")]
    pub max_producers_per_feed: usize,
    /// A producer that completes no line for this long is closed (ms).
    #[serde(deserialize_with = "check::producer_idle_timeout_ms")]
    pub producer_idle_timeout_ms: u64,
    /// Rejected lines logged per feed per `reject_log_interval_ms`; the
    /// rest are counted only.
    #[serde(deserialize_with = "check::reject_log_per_interval")]
    pub reject_log_per_interval: u32,
    #[serde(deserialize_with = "check::reject_log_interval_ms")]
    pub reject_log_interval_ms: u64,
    /// Largest channel state (bytes of its JSON); a record that would make
    /// it larger is rejected and the channel keeps its state and seq.
    #[serde(deserialize_with = "check::max_state_bytes")]
    pub max_state_bytes: usize,
    /// Every channel's state together (bytes of JSON); a record that would
    /// grow it past this is rejected, its channel keeps its state and seq.
    #[serde(deserialize_with = "check::max_total_state_bytes")]
    pub max_total_state_bytes: usize,
    /// Bytes of resume history kept over all channels (per engine shard).
    #[serde(deserialize_with = "check::max_history_bytes")]
    pub max_history_bytes: usize,
    /// How long a client frame (or fragmented message) may take from its
    /// first byte to its last before the connection is closed (ms).
    #[serde(deserialize_with = "check::frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// How long a connection may go unheard from (nothing read, and no
    /// byte of a backlog taken) before it is closed (ms); it gets a
    /// WebSocket ping at half this time.
    #[serde(deserialize_with = "check::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// How long a client may take to send an HTTP request's headers, and
    /// how long a kept-alive HTTP connection may wait for its next
    /// request (ms).
    #[serde(deserialize_with = "check::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Client messages (and pings) a connection may send per second on
    /// average; more are answered `rate_limited` and not acted on.
    #[serde(deserialize_with = "check::messages_per_sec")]
    pub messages_per_sec: u32,
    /// Messages a connection may send at once, above the rate.
    #[serde(deserialize_with = "check::message_burst")]
    pub message_burst: u32,
    /// How many messages a connection may get ahead of its allowance
    /// (each refused one counts) before it is closed with 1008.
    #[serde(deserialize_with = "check::rate_limited_before_close")]
    pub rate_limited_before_close: u32,
    /// WebSocket sessions one client address may hold at once; more get 503.
    #[serde(deserialize_with = "check::max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// New WebSocket sessions per second per client address (a burst of
    /// as many at once); more get 503 with Retry-After.
    #[serde(deserialize_with = "check::new_connections_per_ip_per_sec")]
    pub new_connections_per_ip_per_sec: u32,
    /// New WebSocket sessions per second over all clients (a burst of as
    /// many at once); more get 503 with Retry-After.
    #[serde(deserialize_with = "check::new_connections_per_sec")]
    pub new_connections_per_sec: u32,
    /// Client addresses the per-address limits keep track of at once.
    #[serde(deserialize_with = "check::max_tracked_ips")]
    pub max_tracked_ips: usize,
    /// Client addresses (or ranges) the per-address and new-connection
    /// limits do not apply to.
    pub connection_limits_exempt: Vec<AddrRange>,
    /// On SIGTERM or Ctrl-C, the most time (ms) given to sending every
    /// client what is queued and its close frame before the process exits.
    #[serde(deserialize_with = "check::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Each client's close frame on shutdown carries a delay drawn at
    /// random from 0 to this (ms), after which it should reconnect.
    pub shutdown_reconnect_spread_ms: u64,
    /// Most patterns a token's `channels` claim may hold; a token with more
    /// is refused (each subscribe is checked against all of them).
    #[serde(deserialize_with = "check::max_token_channels")]
    pub max_token_channels: usize,
    /// Largest `POST /publish` body in bytes; a larger one gets 413 and
    /// none of its records is taken (it is never buffered past this).
    #[serde(deserialize_with = "check::max_publish_body_bytes")]
    pub max_publish_body_bytes: usize,
    /// `POST /publish` requests served at once (their bodies are what is
    /// held); more get 503 with `Retry-After`.
    #[serde(deserialize_with = "check::max_concurrent_publishes")]
    pub max_concurrent_publishes: usize,
    /// How long one `POST /publish` request may wait, in all, for room in a
    /// full ring before it is answered 503 (ms).
    #[serde(deserialize_with = "check::publish_ring_wait_ms")]
    pub publish_ring_wait_ms: u64,
    /// At the descriptor limit, how long the short answer waits for the
    /// request head (ms) before answering anyway.
    #[serde(deserialize_with = "check::at_limit_read_timeout_ms")]
    pub at_limit_read_timeout_ms: u64,
    /// At the descriptor limit, how long the short answer may take to be
    /// written (ms) before the connection is dropped.
    #[serde(deserialize_with = "check::at_limit_write_timeout_ms")]
    pub at_limit_write_timeout_ms: u64,
    /// Accepted records queued for the `--record` writer; past it they are
    /// left out of the recording (counted), never waited for.
    #[serde(deserialize_with = "check::record_queue")]
    pub record_queue: usize,
    /// `[compression]`, carried here to the sessions (not a `[limits]` key).
    #[serde(skip)]
    pub compression: CompressionConfig,
    /// Largest message an exchange feed takes from upstream (WebSocket
    /// message or REST snapshot); a bigger one is rejected (`too_long`) and
    /// the connection made again.
    #[serde(deserialize_with = "check::max_upstream_message_bytes")]
    pub max_upstream_message_bytes: usize,
    /// An exchange connection that receives nothing (not even a ping or
    /// heartbeat) for this long is dropped and made again.
    #[serde(deserialize_with = "check::upstream_silence_timeout_ms")]
    pub upstream_silence_timeout_ms: u64,
    /// Time to connect to an exchange (TCP, TLS, WebSocket handshake), to
    /// send a subscription, and to fetch one REST snapshot.
    #[serde(deserialize_with = "check::upstream_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// Reconnect delays: random in [0, base * 2^failures), capped at max.
    #[serde(deserialize_with = "check::upstream_backoff_base_ms")]
    pub upstream_backoff_base_ms: u64,
    #[serde(deserialize_with = "check::upstream_backoff_max_ms")]
    pub upstream_backoff_max_ms: u64,
    /// Order-book levels kept per side when a feed's spec gives no `depth`.
    #[serde(deserialize_with = "check::max_book_levels")]
    pub max_book_levels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            outbox_bytes: 4 * 1024 * 1024,
            max_subscriptions_per_connection: 1024,
            max_channels_per_request: 1024,
            max_fields_per_subscribe: crate::session::protocol::MAX_FIELDS,
            max_channels: 100_000,
            max_connections: 50_000,
            ring_capacity: 1 << 16,
            engine_queue: 4096,
            write_timeout_ms: 10_000,
            max_json_depth: json_depth::DEFAULT_LIMIT,
            max_producers_per_feed: 64,
            producer_idle_timeout_ms: 300_000,
            reject_log_per_interval: 10,
            reject_log_interval_ms: 10_000,
            max_state_bytes: 2 * 1024 * 1024,
            max_total_state_bytes: 1024 * 1024 * 1024,
            max_history_bytes: 256 * 1024 * 1024,
            frame_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            handshake_timeout_ms: 10_000,
            messages_per_sec: 50,
            message_burst: 100,
            rate_limited_before_close: 100,
            max_connections_per_ip: 500,
            new_connections_per_ip_per_sec: 50,
            new_connections_per_sec: 5_000,
            max_tracked_ips: 65_536,
            connection_limits_exempt: AddrRange::loopback(),
            shutdown_timeout_ms: 10_000,
            shutdown_reconnect_spread_ms: 10_000,
            max_token_channels: 256,
            max_publish_body_bytes: 1 << 20,
            max_concurrent_publishes: 16,
            publish_ring_wait_ms: 200,
            at_limit_read_timeout_ms: 200,
            at_limit_write_timeout_ms: 500,
            record_queue: 65_536,
            compression: CompressionConfig::default(),
            max_upstream_message_bytes: 8 << 20,
            upstream_silence_timeout_ms: 60_000,
            upstream_connect_timeout_ms: 10_000,
            upstream_backoff_base_ms: 500,
            upstream_backoff_max_ms: 30_000,
            max_book_levels: 5000,
        }
    }
}

impl Limits {
    pub fn engine(&self) -> EngineLimits {
        EngineLimits {
            max_targets_per_session: self.max_subscriptions_per_connection,
            max_channels: self.max_channels,
        }
    }

    pub fn ingest(&self) -> IngestLimits {
        IngestLimits {
            max_state_bytes: self.max_state_bytes,
            max_total_state_bytes: self.max_total_state_bytes,
            max_history_bytes: self.max_history_bytes,
            log_per_interval: self.reject_log_per_interval,
            log_interval_ns: self.reject_log_interval_ms.saturating_mul(1_000_000),
        }
    }

    pub fn feed(&self) -> FeedLimits {
        FeedLimits {
            max_producers: self.max_producers_per_feed,
            producer_idle_timeout: Duration::from_millis(self.producer_idle_timeout_ms),
            reject_log_per_interval: self.reject_log_per_interval,
            reject_log_interval: Duration::from_millis(self.reject_log_interval_ms),
        }
    }

    pub fn upstream(&self) -> UpstreamLimits {
        UpstreamLimits {
            max_message_bytes: self.max_upstream_message_bytes,
            silence_timeout: Duration::from_millis(self.upstream_silence_timeout_ms),
            connect_timeout: Duration::from_millis(self.upstream_connect_timeout_ms),
            backoff_base: Duration::from_millis(self.upstream_backoff_base_ms),
            backoff_max: Duration::from_millis(self.upstream_backoff_max_ms),
            max_book_levels: self.max_book_levels,
        }
    }

    pub fn session(&self, direct_writes: bool) -> SessionLimits {
        SessionLimits {
            max_message_bytes: self.max_message_bytes,
            requests: RequestLimits {
                max_channels: self.max_channels_per_request,
                max_fields: self.max_fields_per_subscribe,
                max_depth: self.max_json_depth,
            },
            outbox_bytes: self.outbox_bytes,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            at_limit_read_timeout: Duration::from_millis(self.at_limit_read_timeout_ms),
            at_limit_write_timeout: Duration::from_millis(self.at_limit_write_timeout_ms),
            direct_writes,
            auth: Auth::open(),
            compression: self.compression,
            messages: MessageLimit::new(
                self.messages_per_sec,
                self.message_burst,
                self.rate_limited_before_close,
            ),
        }
    }

    /// The limits on new sessions, with where client addresses come from.
    pub fn admission(&self, proxy: TrustedProxy) -> AdmissionLimits {
        AdmissionLimits {
            max_connections_per_ip: self.max_connections_per_ip,
            new_connections_per_ip_per_sec: self.new_connections_per_ip_per_sec,
            new_connections_per_sec: self.new_connections_per_sec,
            max_tracked_ips: self.max_tracked_ips,
            exempt: self.connection_limits_exempt.clone(),
            proxy,
        }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The configuration resolved into typed values the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub feeds: Vec<FeedSpec>,
    pub replay: ReplayOptions,
    /// `--record`, if on.
    pub record: Option<RecordOptions>,
    pub log: String,
    /// Seconds between stats log lines; `None` for never.
    pub stats_interval: Option<Duration>,
    /// See `ServeArgs::direct_writes`.
    pub direct_writes: bool,
    /// Engine shards, resolved (at least 1).
    pub engine_shards: usize,
    pub limits: Limits,
    /// Mode and history depth per namespace.
    pub namespaces: Namespaces,
    /// Where client addresses come from behind a reverse proxy.
    pub trusted_proxy: TrustedProxy,
    /// Token keys, who may subscribe where, allowed origins.
    pub auth: Arc<Auth>,
    /// The key `tcp:` producers must send first, if one is configured.
    pub publish_key: Option<PublishKey>,
    /// The certificate https and wss are served with, if one is configured.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Where exchange feeds connect unless their spec says otherwise.
    pub exchanges: ExchangeUrls,
    /// `--nats`: scale-out over NATS JetStream; `None`: one process.
    pub nats: Option<crate::nats::NatsSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Config::default()
            .resolve(&ServeArgs::default(), None)
            .expect("the defaults are valid")
    }
}

impl Settings {
    /// The limits on new sessions (`http::admission`).
    pub fn admission(&self) -> AdmissionLimits {
        self.limits.admission(self.trusted_proxy.clone())
    }
}

impl Config {
    /// Reads a TOML file; unknown keys and bad values name the key and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies command-line flags on top of this file configuration.
    pub fn resolve(self, args: &ServeArgs, file: Option<&Path>) -> Result<Settings, ConfigError> {
        let place = |key: &str| match file {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_owned(),
        };
        let feeds = if args.feeds.is_empty() {
            self.feeds
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    spec.parse::<FeedSpec>().map_err(|e| {
                        ConfigError::Invalid(format!("{}: {e}", place(&format!("feeds[{i}]"))))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            args.feeds.clone()
        };
        let speed = match args.speed {
            Some(speed) => speed,
            None => self
                .speed
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", place("speed"))))?,
        };
        let namespaces = self.namespace_policies();
        let trusted_proxy = self
            .trusted_proxy()
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", place("trusted_proxy_header"))))?;
        let (auth, publish_key) = self.auth_settings(args, &feeds)?;
        let tls = self.tls_settings(args)?;
        self.compression
            .check()
            .map_err(|e| ConfigError::Invalid(format!("{e} ({})", place("[compression]"))))?;
        let exchanges = self
            .exchanges
            .urls()
            .map_err(|e| ConfigError::Invalid(place(&e)))?;
        let nats = self
            .nats
            .settings(args)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", place("[nats]"))))?;
        Ok(Settings {
            listen: args.listen.unwrap_or(self.listen),
            feeds,
            replay: ReplayOptions {
                speed,
                looped: args.looped || self.looped,
                from: args.from,
                progress: args.progress,
            },
            record: args
                .record
                .clone()
                .or_else(|| Some(self.record.clone()))
                .filter(|path| !path.as_os_str().is_empty())
                .map(|path| RecordOptions {
                    path,
                    flush_interval: Duration::from_millis(self.record_flush_ms),
                    queue: self.limits.record_queue,
                }),
            log: args.log.clone().unwrap_or(self.log),
            stats_interval: Some(args.stats_interval.unwrap_or(self.stats_interval))
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            direct_writes: args.direct_writes.unwrap_or(self.direct_writes),
            engine_shards: resolve_shards(args.engine_shards.unwrap_or(self.engine_shards))
                .map_err(ConfigError::Invalid)?,
            limits: Limits {
                compression: self.compression,
                ..self.limits
            },
            namespaces,
            auth,
            publish_key,
            trusted_proxy,
            tls,
            exchanges,
            nats,
        })
    }

    /// The certificate and key, read and checked now so a mistake stops
    /// start-up with what to fix.
    fn tls_settings(&self, args: &ServeArgs) -> Result<Option<Arc<crate::tls::Tls>>, ConfigError> {
        let cert = args.tls_cert.as_ref().or(self.tls.cert.as_ref());
        let key = args.tls_key.as_ref().or(self.tls.key.as_ref());
        match crate::tls::files(cert.map(PathBuf::as_path), key.map(PathBuf::as_path)) {
            Ok(None) => Ok(None),
            Ok(Some(files)) => crate::tls::Tls::load(files)
                .map(|tls| Some(Arc::new(tls)))
                .map_err(ConfigError::Invalid),
            Err(e) => Err(ConfigError::Invalid(e)),
        }
    }

    /// The header and the proxies it is believed from: both or neither.
    fn trusted_proxy(&self) -> Result<TrustedProxy, String> {
        let name = self.trusted_proxy_header.trim();
        match (name.is_empty(), self.trusted_proxies.is_empty()) {
            (true, true) => Ok(TrustedProxy::default()),
            (false, true) => Err(format!(
                "{name:?} would never be believed: list your proxies' addresses in \
                 trusted_proxies (e.g. [\"127.0.0.1\"])"
            )),
            (true, false) => Err("trusted_proxies is set but trusted_proxy_header is empty: \
                 name the header your proxies set (e.g. \"x-forwarded-for\")"
                .to_owned()),
            (false, false) => {
                let header = hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?;
                Ok(TrustedProxy {
                    header: Some(header),
                    proxies: self.trusted_proxies.clone(),
                })
            }
        }
    }

    /// `[auth]`, the flags and each namespace's `subscribe`, checked
    /// together: a token namespace needs a key to check tokens with, a
    /// `tcp:` feed beyond loopback a publish key.
    fn auth_settings(
        &self,
        args: &ServeArgs,
        feeds: &[FeedSpec],
    ) -> Result<(Arc<Auth>, Option<PublishKey>), ConfigError> {
        let invalid = |what: &str, e: String| ConfigError::Invalid(format!("{what}: {e}"));
        let mut tokens = None;
        let max_channels = self.limits.max_token_channels;
        if let Some(secret) = args.jwt_secret.as_ref().or(self.auth.jwt_secret.as_ref()) {
            let verifier = TokenVerifier::new(max_channels).with_secret(secret.as_bytes());
            tokens = Some(verifier.map_err(|e| invalid("--jwt-secret / [auth] jwt_secret", e))?);
        }
        if let Some(path) = args
            .jwt_public_key
            .as_ref()
            .or(self.auth.jwt_public_key.as_ref())
        {
            let verifier = tokens.unwrap_or_else(|| TokenVerifier::new(max_channels));
            tokens = Some(
                verifier
                    .with_public_key_file(path)
                    .map_err(ConfigError::Invalid)?,
            );
        }
        let default = match self.namespace_defaults.subscribe {
            Some(access) => access,
            None if tokens.is_some() => Access::Token,
            None => Access::Public,
        };
        let named = self
            .namespaces
            .iter()
            .filter_map(|(name, ns)| Some((name.clone(), ns.subscribe?)))
            .collect();
        let origins = if args.allowed_origins.is_empty() {
            &self.auth.allowed_origins
        } else {
            &args.allowed_origins
        };
        let auth = Auth {
            tokens,
            subscribe: SubscribeRules { default, named },
            origins: OriginPolicy::new(origins)
                .map_err(|e| invalid("--allowed-origin / [auth] allowed_origins", e))?,
        };
        let publish_key = match args.publish_key.as_ref().or(self.auth.publish_key.as_ref()) {
            Some(key) => Some(
                PublishKey::new(key)
                    .map_err(|e| invalid("--publish-key / [auth] publish_key", e))?,
            ),
            None => None,
        };
        crate::auth::check_startup(&auth, feeds, publish_key.as_ref())
            .map_err(ConfigError::Invalid)?;
        Ok((Arc::new(auth), publish_key))
    }

    fn namespace_policies(&self) -> Namespaces {
        let default = NamespacePolicy {
            mode: self.namespace_defaults.mode,
            history: self.namespace_defaults.history,
        };
        let named = self
            .namespaces
            .iter()
            .map(|(name, ns)| {
                let policy = NamespacePolicy {
                    mode: ns.mode.unwrap_or(default.mode),
                    history: ns.history.unwrap_or(default.history),
                };
                (name.clone(), policy)
            })
            .collect();
        Namespaces { default, named }
    }
}

/// Reads the file named by `--config` (if any) and applies the flags.
pub fn settings_from_args(args: &ServeArgs) -> Result<Settings, ConfigError> {
    match &args.config {
        Some(path) => Config::load(path)?.resolve(args, Some(path)),
        None => Config::default().resolve(args, None),
    }
}

/// Value checks run while the file is read. toml puts the file line, and
/// the text of that line, in front of each message; the messages name their
/// key as well, so the error is clear even for a value split over lines.
mod check {
    use std::collections::BTreeMap;

    use serde::de::{Deserialize, Deserializer, Error};

    use super::{NamespaceConfig, MAX_HISTORY};
    use crate::channel::ChannelName;
    use crate::feed::{FeedSpec, Speed};

    macro_rules! positive {
        ($($name:ident: $ty:ty = $key:literal;)*) => {$(
            pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                match <$ty>::deserialize(d)? {
                    0 => Err(D::Error::custom(concat!($key, " must be greater than 0"))),
                    value => Ok(value),
                }
            }
        )*};
    }

    positive! {
        max_pending_records: usize = "nats.max_pending_records";
        writer_lease_ms: u64 = "nats.writer_lease_ms";
        max_stream_bytes: u64 = "nats.max_stream_bytes";
        connect_timeout_ms: u64 = "nats.connect_timeout_ms";
        snapshot_interval_ms: u64 = "nats.snapshot_interval_ms";
        snapshot_interval_records: u64 = "nats.snapshot_interval_records";
        max_records_per_channel: u64 = "nats.max_records_per_channel";
        max_message_bytes: usize = "limits.max_message_bytes";
        outbox_bytes: usize = "limits.outbox_bytes";
        max_subscriptions_per_connection: usize = "limits.max_subscriptions_per_connection";
        max_channels_per_request: usize = "limits.max_channels_per_request";
        max_fields_per_subscribe: usize = "limits.max_fields_per_subscribe";
        max_channels: usize = "limits.max_channels";
        max_connections: usize = "limits.max_connections";
        engine_queue: usize = "limits.engine_queue";
        write_timeout_ms: u64 = "limits.write_timeout_ms";
        max_producers_per_feed: usize = "limits.max_producers_per_feed";
        producer_idle_timeout_ms: u64 = "limits.producer_idle_timeout_ms";
        reject_log_per_interval: u32 = "limits.reject_log_per_interval";
        reject_log_interval_ms: u64 = "limits.reject_log_interval_ms";
        max_state_bytes: usize = "limits.max_state_bytes";
        max_total_state_bytes: usize = "limits.max_total_state_bytes";
        max_history_bytes: usize = "limits.max_history_bytes";
        frame_timeout_ms: u64 = "limits.frame_timeout_ms";
        idle_timeout_ms: u64 = "limits.idle_timeout_ms";
        handshake_timeout_ms: u64 = "limits.handshake_timeout_ms";
        messages_per_sec: u32 = "limits.messages_per_sec";
        message_burst: u32 = "limits.message_burst";
        rate_limited_before_close: u32 = "limits.rate_limited_before_close";
        max_connections_per_ip: u32 = "limits.max_connections_per_ip";
        new_connections_per_ip_per_sec: u32 = "limits.new_connections_per_ip_per_sec";
        new_connections_per_sec: u32 = "limits.new_connections_per_sec";
        max_tracked_ips: usize = "limits.max_tracked_ips";
        shutdown_timeout_ms: u64 = "limits.shutdown_timeout_ms";
        max_token_channels: usize = "limits.max_token_channels";
        max_publish_body_bytes: usize = "limits.max_publish_body_bytes";
        max_concurrent_publishes: usize = "limits.max_concurrent_publishes";
        publish_ring_wait_ms: u64 = "limits.publish_ring_wait_ms";
        at_limit_read_timeout_ms: u64 = "limits.at_limit_read_timeout_ms";
        at_limit_write_timeout_ms: u64 = "limits.at_limit_write_timeout_ms";
        record_queue: usize = "limits.record_queue";
        max_upstream_message_bytes: usize = "limits.max_upstream_message_bytes";
        upstream_silence_timeout_ms: u64 = "limits.upstream_silence_timeout_ms";
        upstream_connect_timeout_ms: u64 = "limits.upstream_connect_timeout_ms";
        upstream_backoff_base_ms: u64 = "limits.upstream_backoff_base_ms";
        upstream_backoff_max_ms: u64 = "limits.upstream_backoff_max_ms";
        max_book_levels: usize = "limits.max_book_levels";
        record_flush_ms: u64 = "record_flush_ms";
    }

    pub fn engine_shards<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        // The same check as for the flag; 0 stays 0 until resolved.
        let value = usize::deserialize(d)?;
        super::resolve_shards(value).map_err(D::Error::custom)?;
        Ok(value)
    }

    pub fn max_json_depth<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let value = usize::deserialize(d)?;
        let highest = crate::json_depth::HIGHEST_LIMIT;
        if value == 0 || value > highest {
            return Err(D::Error::custom(format!(
                "limits.max_json_depth must be between 1 and {highest}, not {value}"
            )));
        }
        Ok(value)
    }

    pub fn power_of_two<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let value = usize::deserialize(d)?;
        if value < 2 || !value.is_power_of_two() {
            return Err(D::Error::custom(format!(
                "limits.ring_capacity must be a power of two >= 2, not {value}"
            )));
        }
        Ok(value)
    }

    pub fn feeds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let feeds = Vec::<String>::deserialize(d)?;
        for (i, spec) in feeds.iter().enumerate() {
            if let Err(e) = spec.parse::<FeedSpec>() {
                return Err(D::Error::custom(format!("feeds[{i}] {spec:?}: {e}")));
            }
        }
        Ok(feeds)
    }

    pub fn speed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let speed = String::deserialize(d)?;
        match speed.parse::<Speed>() {
            Ok(_) => Ok(speed),
            Err(e) => Err(D::Error::custom(format!("speed {speed:?}: {e}"))),
        }
    }

    pub fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let filter = String::deserialize(d)?;
        match tracing_subscriber::EnvFilter::try_new(&filter) {
            Ok(_) => Ok(filter),
            Err(e) => Err(D::Error::custom(format!("log {filter:?}: {e}"))),
        }
    }

    fn history_value<E: Error>(value: usize) -> Result<usize, E> {
        if value > MAX_HISTORY {
            return Err(E::custom(format!(
                "history must be at most {MAX_HISTORY} updates, not {value}"
            )));
        }
        Ok(value)
    }

    pub fn history<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        history_value(usize::deserialize(d)?)
    }

    pub fn some_history<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        history_value(usize::deserialize(d)?).map(Some)
    }

    pub fn namespaces<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, NamespaceConfig>, D::Error> {
        let map = BTreeMap::<String, NamespaceConfig>::deserialize(d)?;
        for name in map.keys() {
            if name.contains('.') || ChannelName::new(name).is_err() {
                return Err(D::Error::custom(format!(
                    "namespaces.{name:?}: a namespace is one channel segment (A-Z a-z 0-9 _ - :)"
                )));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_file_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        let defaults = Config::default();
        assert_eq!(parsed.listen, defaults.listen);
        assert_eq!(parsed.feeds, defaults.feeds);
        assert_eq!(parsed.limits.outbox_bytes, defaults.limits.outbox_bytes);
        assert_eq!(
            parsed.limits.max_connections,
            defaults.limits.max_connections
        );
        assert_eq!(parsed.limits.ring_capacity, defaults.limits.ring_capacity);
        assert_eq!(parsed.limits.max_json_depth, defaults.limits.max_json_depth);
        assert_eq!(parsed.limits.max_channels, defaults.limits.max_channels);
        assert_eq!(parsed.limits.feed(), defaults.limits.feed());
        assert_eq!(parsed.limits.ingest(), defaults.limits.ingest());
        assert_eq!(defaults.limits.feed(), FeedLimits::default());
        assert_eq!(defaults.limits.ingest(), IngestLimits::default());
        assert_eq!(
            parsed.limits.max_state_bytes,
            defaults.limits.max_state_bytes
        );
        assert_eq!(
            parsed.limits.max_total_state_bytes,
            defaults.limits.max_total_state_bytes
        );
        assert_eq!(
            parsed.limits.max_history_bytes,
            defaults.limits.max_history_bytes
        );
        assert_eq!(
            parsed.limits.write_timeout_ms,
            defaults.limits.write_timeout_ms
        );
        assert_eq!(
            parsed.limits.frame_timeout_ms,
            defaults.limits.frame_timeout_ms
        );
        assert_eq!(
            parsed.limits.idle_timeout_ms,
            defaults.limits.idle_timeout_ms
        );
        assert_eq!(
            parsed.limits.handshake_timeout_ms,
            defaults.limits.handshake_timeout_ms
        );
        assert_eq!(parsed.namespace_defaults, defaults.namespace_defaults);
        assert_eq!(parsed.namespaces, defaults.namespaces);
        assert_eq!(
            parsed.limits.max_token_channels,
            defaults.limits.max_token_channels
        );
        assert_eq!(parsed.auth.allowed_origins, defaults.auth.allowed_origins);
        assert_eq!(parsed.compression, defaults.compression);
        assert!(parsed.auth.jwt_secret.is_none() && parsed.auth.publish_key.is_none());
        let (p, d) = (&parsed.limits, &defaults.limits);
        assert_eq!(
            p.session(false).messages,
            d.session(false).messages,
            "messages_per_sec, message_burst, rate_limited_before_close"
        );
        assert_eq!(
            (
                p.max_connections_per_ip,
                p.new_connections_per_ip_per_sec,
                p.new_connections_per_sec,
                p.max_tracked_ips,
                &p.connection_limits_exempt,
            ),
            (
                d.max_connections_per_ip,
                d.new_connections_per_ip_per_sec,
                d.new_connections_per_sec,
                d.max_tracked_ips,
                &d.connection_limits_exempt,
            )
        );
        assert_eq!(
            (p.shutdown_timeout_ms, p.shutdown_reconnect_spread_ms),
            (d.shutdown_timeout_ms, d.shutdown_reconnect_spread_ms)
        );
        assert_eq!(parsed.trusted_proxy_header, defaults.trusted_proxy_header);
        assert_eq!(parsed.trusted_proxies, defaults.trusted_proxies);
    }

    /// The forwarding header is believed only from listed proxies, and one
    /// key without the other is refused rather than silently useless.
    #[test]
    fn the_trusted_proxy_needs_both_keys() {
        let resolve = |text: &str| {
            toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())?
                .resolve(&ServeArgs::default(), None)
                .map_err(|e| e.to_string())
        };
        let settings = resolve(
            "trusted_proxy_header = \"X-Forwarded-For\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let proxy = settings.trusted_proxy;
        assert_eq!(proxy.header.unwrap().as_str(), "x-forwarded-for");
        assert_eq!(proxy.proxies.len(), 2);
        let default = resolve("").unwrap().trusted_proxy;
        assert!(default.header.is_none() && default.proxies.is_empty());
        let err = resolve("trusted_proxy_header = \"x-forwarded-for\"\n").unwrap_err();
        assert!(err.contains("trusted_proxies"), "{err}");
        let err = resolve("trusted_proxies = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(err.contains("trusted_proxy_header"), "{err}");
        let err =
            resolve("trusted_proxy_header = \"bad header\"\ntrusted_proxies = [\"127.0.0.1\"]\n")
                .unwrap_err();
        assert!(err.contains("not a valid header name"), "{err}");
        let err = resolve("trusted_proxies = [\"10.0.0.0/99\"]\n").unwrap_err();
        assert!(
            err.contains("10.0.0.0/99") && err.contains("line 1"),
            "{err}"
        );
    }

    #[test]
    fn auth_keys_resolve_together() {
        // No key: every namespace public, as in the demo.
        let open = Settings::default();
        assert!(open.auth.tokens.is_none() && open.publish_key.is_none());
        assert_eq!(open.auth.subscribe.default, Access::Public);
        // A secret makes "token" the default; a namespace may stay public.
        let text = "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n\
                    [namespaces.demo]\nsubscribe = \"public\"\n";
        let file: Config = toml::from_str(text).unwrap();
        assert!(
            !format!("{file:?}").contains("0123456789abcdef"),
            "secrets are never printed"
        );
        let settings = file.resolve(&ServeArgs::default(), None).unwrap();
        assert!(settings.auth.tokens.is_some());
        assert_eq!(settings.auth.subscribe.of("quotes"), Access::Token);
        assert_eq!(settings.auth.subscribe.of("demo"), Access::Public);
        // Flags, and what they are checked for.
        let args = ServeArgs {
            allowed_origins: vec!["https://app.example".into()],
            publish_key: Some("k".repeat(16)),
            feeds: vec!["tcp:0.0.0.0:9100".parse().unwrap()],
            ..ServeArgs::default()
        };
        let settings = Config::default().resolve(&args, None).unwrap();
        assert!(
            settings.publish_key.is_some(),
            "a key lets a tcp feed off loopback"
        );
        assert!(settings
            .auth
            .origins
            .check(Some(b"https://app.example"), Some(b"x"))
            .is_ok());
        for (args, key) in [
            (
                ServeArgs {
                    jwt_secret: Some("short".into()),
                    ..ServeArgs::default()
                },
                "--jwt-secret",
            ),
            (
                ServeArgs {
                    publish_key: Some("short".into()),
                    ..ServeArgs::default()
                },
                "--publish-key",
            ),
            (
                ServeArgs {
                    allowed_origins: vec!["app.example".into()],
                    ..ServeArgs::default()
                },
                "--allowed-origin",
            ),
            (
                ServeArgs {
                    jwt_public_key: Some("/no/such/key.pem".into()),
                    ..ServeArgs::default()
                },
                "/no/such/key.pem",
            ),
        ] {
            let err = Config::default()
                .resolve(&args, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let err = toml::from_str::<Config>("[auth]\njwt_secert = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jwt_secert") && err.contains("line 2"),
            "{err}"
        );
    }

    /// `[nats]` is off by default; `--nats` turns it on as `both`, the
    /// table's keys reach the settings, flags win, and mistakes are named.
    #[test]
    fn nats_settings_come_from_the_table_and_the_flags() {
        use crate::nats::Role;
        assert_eq!(Settings::default().nats, None, "one process by default");
        let args = |nats: Option<&str>, role: Option<Role>| ServeArgs {
            nats: nats.map(str::to_owned),
            role,
            ..ServeArgs::default()
        };
        let on = Config::default()
            .resolve(&args(Some("nats://127.0.0.1:4222"), None), None)
            .unwrap()
            .nats
            .unwrap();
        assert_eq!(on.role, Role::Both);
        assert_eq!(on.max_pending_records, 65_536);
        assert_eq!(on.writer_lease, Duration::from_millis(3000));
        let file: Config = toml::from_str(
            "[nats]\nurl = \"nats://n:4222\"\nrole = \"edge\"\nstream = \"S1\"\n\
             max_pending_records = 8\nwriter_lease_ms = 500\nuser = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let from_file = file.clone().resolve(&args(None, None), None).unwrap();
        let nats = from_file.nats.unwrap();
        assert_eq!(
            (nats.url.as_str(), nats.role, nats.stream.as_str()),
            ("nats://n:4222", Role::Edge, "S1")
        );
        assert_eq!(nats.max_pending_records, 8);
        assert_eq!(nats.writer_lease, Duration::from_millis(500));
        assert!(
            !format!("{nats:?}").contains("\"p\""),
            "no password in Debug"
        );
        let flagged = file
            .resolve(&args(Some("nats://m:1"), Some(Role::Ingest)), None)
            .unwrap()
            .nats
            .unwrap();
        assert_eq!(
            (flagged.url.as_str(), flagged.role),
            ("nats://m:1", Role::Ingest)
        );
        let err = Config::default()
            .resolve(&args(None, Some(Role::Edge)), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--role needs --nats"), "{err}");
        for bad in [
            "[nats]\nmax_pending_records = 0\n",
            "[nats]\nwriter_lease_ms = 0\n",
        ] {
            let err = toml::from_str::<Config>(bad).unwrap_err().to_string();
            assert!(err.contains("nats."), "{bad}: {err}");
        }
        let half = toml::from_str::<Config>("[nats]\nurl = \"nats://n\"\nuser = \"u\"\n")
            .unwrap()
            .resolve(&args(None, None), None)
            .unwrap_err()
            .to_string();
        assert!(half.contains("user and password go together"), "{half}");
    }

    /// The snapshot keys reach the settings; a per-channel record limit
    /// that a snapshot cycle could outrun is refused at start-up.
    #[test]
    fn nats_snapshot_keys_and_their_check() {
        let args = ServeArgs::default();
        let on = toml::from_str::<Config>(
            "[nats]\nurl = \"nats://n\"\nsnapshot_interval_ms = 250\n\
             snapshot_interval_records = 500\nmax_records_per_channel = 501\n",
        )
        .unwrap()
        .resolve(&args, None)
        .unwrap()
        .nats
        .unwrap();
        assert_eq!(on.snapshot_interval, Duration::from_millis(250));
        assert_eq!(
            (on.snapshot_interval_records, on.max_records_per_channel),
            (500, 501)
        );
        let defaults = crate::nats::NatsSettings::new(String::new(), crate::nats::Role::Both);
        assert_eq!(
            (
                defaults.snapshot_interval,
                defaults.snapshot_interval_records,
                defaults.max_records_per_channel
            ),
            (Duration::from_millis(1000), 10_000, 100_000)
        );
        let err = toml::from_str::<Config>(
            "[nats]\nurl = \"nats://n\"\nmax_records_per_channel = 10000\n",
        )
        .unwrap()
        .resolve(&args, None)
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_records_per_channel"), "{err}");
        for bad in [
            "[nats]\nsnapshot_interval_ms = 0\n",
            "[nats]\nsnapshot_interval_records = 0\n",
            "[nats]\nmax_records_per_channel = 0\n",
        ] {
            let err = toml::from_str::<Config>(bad).unwrap_err().to_string();
            assert!(err.contains("nats."), "{bad}: {err}");
        }
    }

    /// `tickcast --flag` means `tickcast serve --flag`; a subcommand and
    /// top-level serve flags together are refused rather than half-applied.
    #[test]
    fn serve_flags_work_without_the_serve_command() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(Cli::into_command);
        let top = parse(&[
            "tickcast",
            "--listen",
            "127.0.0.1:9",
            "--feed",
            "tcp:127.0.0.1:0",
        ]);
        let sub = parse(&[
            "tickcast",
            "serve",
            "--listen",
            "127.0.0.1:9",
            "--feed",
            "tcp:127.0.0.1:0",
        ]);
        assert_eq!(top.unwrap(), sub.unwrap());
        let Ok(CliCommand::Serve(alone)) = parse(&["tickcast"]) else {
            panic!("no arguments serve the demo");
        };
        assert_eq!(alone, ServeArgs::default());
        assert_eq!(
            parse(&["tickcast", "default-config"]).unwrap(),
            CliCommand::DefaultConfig
        );
        assert!(parse(&["tickcast", "--listen", "127.0.0.1:9", "default-config"]).is_err());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err =
            toml::from_str::<Config>("listen = \"127.0.0.1:1\"\n[limits]\nmax_conections = 3\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn engine_shards_default_to_one_per_core_and_flags_win() {
        let settings = Settings::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(settings.engine_shards, cores, "one per core, however many");
        let file: Config = toml::from_str("engine_shards = 3\n").unwrap();
        assert_eq!(
            file.clone()
                .resolve(&ServeArgs::default(), None)
                .unwrap()
                .engine_shards,
            3
        );
        let args = ServeArgs {
            engine_shards: Some(1),
            ..ServeArgs::default()
        };
        assert_eq!(file.resolve(&args, None).unwrap().engine_shards, 1);
        let args = ServeArgs {
            engine_shards: Some(256),
            ..ServeArgs::default()
        };
        assert_eq!(
            Config::default()
                .resolve(&args, None)
                .unwrap()
                .engine_shards,
            256
        );
        let args = ServeArgs {
            engine_shards: Some(500),
            ..ServeArgs::default()
        };
        let err = Config::default().resolve(&args, None).unwrap_err();
        assert!(err.to_string().contains("engine_shards"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: Config =
            toml::from_str("feeds = [\"tcp:127.0.0.1:9000\"]\nspeed = \"max\"\n").unwrap();
        let args = ServeArgs {
            speed: Some(Speed::Factor(2.0)),
            ..ServeArgs::default()
        };
        let settings = file.resolve(&args, None).unwrap();
        assert_eq!(settings.replay.speed, Speed::Factor(2.0));
        assert_eq!(settings.feeds, vec!["tcp:127.0.0.1:9000".parse().unwrap()]);
        // Built in code, a bad value is still caught when resolving.
        let bad = Config {
            feeds: vec!["carrier-pigeon".into()],
            ..Config::default()
        };
        let err = bad
            .resolve(&ServeArgs::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("feeds[0]"), "{err}");
    }

    #[test]
    fn record_comes_from_the_file_or_the_flag() {
        assert_eq!(Settings::default().record, None, "off by default");
        let file: Config = toml::from_str(
            "record = \"a.ndjson\"\nrecord_flush_ms = 250\n[limits]\nrecord_queue = 8\n",
        )
        .unwrap();
        let expected = RecordOptions {
            path: "a.ndjson".into(),
            flush_interval: Duration::from_millis(250),
            queue: 8,
        };
        let settings = file.clone().resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(settings.record, Some(expected.clone()));
        let args = ServeArgs {
            record: Some("b.ndjson.gz".into()),
            ..ServeArgs::default()
        };
        let settings = file.resolve(&args, None).unwrap();
        let path = PathBuf::from("b.ndjson.gz");
        assert_eq!(settings.record, Some(RecordOptions { path, ..expected }));
    }

    /// A bad value in the file stops start-up naming the key and its line.
    #[test]
    fn tls_files_come_from_the_file_or_the_flags_and_go_in_pairs() {
        let resolve = |text: &str, args: &ServeArgs| {
            let config: Config = toml::from_str(text).unwrap();
            config.resolve(args, None).map(|s| s.tls.is_some())
        };
        let none = ServeArgs::default();
        assert!(!resolve("", &none).unwrap());
        let half = resolve("[tls]\ncert = \"c.pem\"\n", &none).unwrap_err();
        assert!(half.to_string().contains("TLS needs both"), "{half}");
        // Both set; the flag's file wins over the file's (and is missing).
        let args = ServeArgs {
            tls_key: Some("/nonexistent/flag-key.pem".into()),
            ..ServeArgs::default()
        };
        let text = "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n";
        let missing = resolve(text, &args).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/c.pem"), "{missing}");
        let key_only = ServeArgs {
            tls_cert: Some("/dev/null".into()),
            ..args
        };
        let missing = resolve(text, &key_only).unwrap_err().to_string();
        assert!(missing.contains("/nonexistent/flag-key.pem"), "{missing}");
    }

    #[test]
    fn bad_values_are_named_with_their_key_and_line() {
        let cases = [
            (
                "[limits]\nring_capacity = 1000\n",
                "limits.ring_capacity",
                2,
            ),
            (
                "log = \"info\"\n[limits]\n\noutbox_bytes = 0\n",
                "limits.outbox_bytes",
                4,
            ),
            (
                "feeds = [\"synthetic\", \"carrier-pigeon\"]\n",
                "feeds[1]",
                1,
            ),
            ("speed = \"warp\"\n", "speed", 1),
            ("stats_interval = -1\n", "stats_interval", 1),
            (
                "[namespace_defaults]\nmode = \"merge\"\nhistory = 99999999\n",
                "history",
                3,
            ),
            ("[namespaces.trades]\nmode = \"firehose\"\n", "mode", 2),
            (
                "[namespaces.trades]\nmode = \"stream\"\nhistroy = 5\n",
                "histroy",
                3,
            ),
            ("[namespaces.\"a.b\"]\nmode = \"stream\"\n", "a.b", 1),
            ("engine_shards = 257\n", "engine_shards", 1),
            ("[limits]\nmax_json_depth = 0\n", "limits.max_json_depth", 2),
            (
                "[limits]\nmax_json_depth = 129\n",
                "limits.max_json_depth",
                2,
            ),
            (
                "[limits]\nidle_timeout_ms = 0\n",
                "limits.idle_timeout_ms",
                2,
            ),
            (
                "[limits]\nmessages_per_sec = 0\n",
                "limits.messages_per_sec",
                2,
            ),
            (
                "[limits]\nmax_connections_per_ip = 0\n",
                "limits.max_connections_per_ip",
                2,
            ),
            (
                "[limits]\nnew_connections_per_sec = 0\n",
                "limits.new_connections_per_sec",
                2,
            ),
            (
                "[limits]\nshutdown_timeout_ms = 0\n",
                "limits.shutdown_timeout_ms",
                2,
            ),
            (
                "[limits]\nconnection_limits_exempt = [\"localhost\"]\n",
                "localhost",
                2,
            ),
            ("record_flush_ms = 0\n", "record_flush_ms", 1),
            ("[limits]\nrecord_queue = 0\n", "limits.record_queue", 2),
            (
                "[limits]\npublish_ring_wait_ms = 0\n",
                "limits.publish_ring_wait_ms",
                2,
            ),
            (
                "[limits]\nat_limit_read_timeout_ms = 0\n",
                "limits.at_limit_read_timeout_ms",
                2,
            ),
            (
                "[limits]\nat_limit_write_timeout_ms = 0\n",
                "limits.at_limit_write_timeout_ms",
                2,
            ),
            (
                "[limits]\nmax_upstream_message_bytes = 0\n",
                "limits.max_upstream_message_bytes",
                2,
            ),
            (
                "[limits]\nupstream_silence_timeout_ms = 0\n",
                "limits.upstream_silence_timeout_ms",
                2,
            ),
            (
                "[limits]\nupstream_connect_timeout_ms = 0\n",
                "limits.upstream_connect_timeout_ms",
                2,
            ),
            (
                "[limits]\nupstream_backoff_base_ms = 0\n",
                "limits.upstream_backoff_base_ms",
                2,
            ),
            (
                "[limits]\nupstream_backoff_max_ms = 0\n",
                "limits.upstream_backoff_max_ms",
                2,
            ),
            (
                "[limits]\nmax_book_levels = 0\n",
                "limits.max_book_levels",
                2,
            ),
        ];
        for (text, key, line) in cases {
            let err = toml::from_str::<Config>(text).unwrap_err().to_string();
            assert!(err.contains(key), "{key} missing from: {err}");
            assert!(
                err.contains(&format!("line {line}")),
                "line {line} missing from: {err}"
            );
        }
    }

    #[test]
    fn exchange_urls_come_from_the_config_and_a_spec_option_wins() {
        let text = "[exchanges.binance]\nws_url = \"ws://127.0.0.1:9001/\"\n\
                    rest_url = \"http://127.0.0.1:9002\"\n[exchanges.coinbase]\n\
                    ws_url = \"ws://127.0.0.1:9003\"\n[limits]\nmax_book_levels = 20\n";
        let settings = toml::from_str::<Config>(text)
            .unwrap()
            .resolve(&ServeArgs::default(), None)
            .unwrap();
        assert_eq!(settings.exchanges.binance_ws, "ws://127.0.0.1:9001");
        let resolve = |spec: &str| match spec
            .parse::<FeedSpec>()
            .unwrap()
            .with_upstream_defaults(&settings.exchanges, settings.limits.upstream())
        {
            FeedSpec::Exchange(upstream) => *upstream,
            other => panic!("not an exchange feed: {other:?}"),
        };
        let binance = resolve("binance:btcusdt");
        assert_eq!(binance.spec.symbols, ["BTCUSDT"]);
        assert_eq!(binance.ws_url, "ws://127.0.0.1:9001");
        assert_eq!(binance.rest_url, "http://127.0.0.1:9002");
        assert_eq!(binance.depth, 20);
        let coinbase = resolve("coinbase:BTC-USD?ws_url=ws://127.0.0.1:7&depth=5");
        assert_eq!(coinbase.ws_url, "ws://127.0.0.1:7");
        assert_eq!(coinbase.depth, 5);
        let bad = "[exchanges.coinbase]\nws_url = \"ftp://example.com\"\n";
        let err = toml::from_str::<Config>(bad)
            .unwrap()
            .resolve(&ServeArgs::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exchanges.coinbase.ws_url"), "{err}");
    }

    #[test]
    fn namespaces_inherit_what_they_do_not_set() {
        let text = "[namespace_defaults]\nhistory = 10\n[namespaces.trades]\nmode = \"stream\"\n\
                    [namespaces.quotes]\nhistory = 0\n";
        let settings = toml::from_str::<Config>(text)
            .unwrap()
            .resolve(&ServeArgs::default(), None)
            .unwrap();
        let ns = &settings.namespaces;
        assert_eq!(
            ns.policy("trades"),
            NamespacePolicy {
                mode: Mode::Stream,
                history: 10
            }
        );
        assert_eq!(
            ns.policy("quotes"),
            NamespacePolicy {
                mode: Mode::Merge,
                history: 0
            }
        );
        assert_eq!(
            ns.policy("scores"),
            NamespacePolicy {
                mode: Mode::Merge,
                history: 10
            }
        );
    }
}
