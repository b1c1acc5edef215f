//! Configuration: command-line flags, the optional TOML file, and every
//! limit with its default in one place.
//!
//! Precedence: a flag given on the command line, then the config file, then
//! the default written here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::engine::{EngineLimits, Namespaces};
use crate::feed::{FeedSpec, ReplayOptions, Speed};
use crate::session::SessionLimits;

/// tickcast: market data and live scores pushed to WebSocket clients.
#[derive(Debug, Parser)]
#[command(name = "tickcast", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Serve channels over WebSocket (the default when no command is given).
    Serve(ServeArgs),
    /// Print the default configuration file, with every key documented.
    DefaultConfig,
}

#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on for HTTP and WebSocket clients [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A feed to ingest: `synthetic[:RATE]`, `replay:PATH` (NDJSON, `.gz` ok) or
    /// `tcp:ADDR` (producers write NDJSON records). Repeat for several feeds.
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
    /// A TOML configuration file (see `tickcast default-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log the main figures (rates, end-to-end p50/p99/max) every SECS seconds;
    /// 0 turns it off [default: 10].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Log filter, e.g. `info`, `debug`, `tickcast=debug` [default: info; env RUST_LOG].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// The default configuration file; also the documentation of every key.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// The whole configuration, as read from the file (every key optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub feeds: Vec<String>,
    pub speed: String,
    #[serde(rename = "loop")]
    pub looped: bool,
    pub log: String,
    pub stats_interval: u64,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            feeds: vec!["synthetic".into()],
            speed: "1".into(),
            looped: false,
            log: "info".into(),
            stats_interval: 10,
            limits: Limits::default(),
        }
    }
}

/// Every bound the server enforces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest client message in bytes; a larger frame is closed with 1009.
    pub max_message_bytes: usize,
    /// Outbound queue bound per connection, in bytes.
    pub outbox_bytes: usize,
    /// Most names and patterns one connection may be subscribed to.
    pub max_subscriptions_per_connection: usize,
    /// Most channels in one subscribe or unsubscribe message.
    pub max_channels_per_request: usize,
    /// Most channels the server keeps.
    pub max_channels: usize,
    /// Most WebSocket connections at once.
    pub max_connections: usize,
    /// Records the feed-to-engine ring holds (a power of two).
    pub ring_capacity: usize,
    /// Commands from sessions the engine queues before sessions wait.
    pub engine_queue: usize,
    /// How long one socket write may take before the client is dropped (ms).
    pub write_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            outbox_bytes: 4 * 1024 * 1024,
            max_subscriptions_per_connection: 1024,
            max_channels_per_request: 1024,
            max_channels: 1_000_000,
            max_connections: 50_000,
            ring_capacity: 1 << 16,
            engine_queue: 4096,
            write_timeout_ms: 10_000,
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

    pub fn session(&self) -> SessionLimits {
        SessionLimits {
            max_message_bytes: self.max_message_bytes,
            max_channels_per_request: self.max_channels_per_request,
            outbox_bytes: self.outbox_bytes,
            write_timeout: Duration::from_millis(self.write_timeout_ms),
        }
    }

    fn check(&self) -> Result<(), String> {
        if !self.ring_capacity.is_power_of_two() || self.ring_capacity < 2 {
            return Err(format!(
                "limits.ring_capacity must be a power of two >= 2, not {}",
                self.ring_capacity
            ));
        }
        for (key, value) in [
            ("limits.max_message_bytes", self.max_message_bytes),
            ("limits.outbox_bytes", self.outbox_bytes),
            (
                "limits.max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
            ),
            (
                "limits.max_channels_per_request",
                self.max_channels_per_request,
            ),
            ("limits.max_channels", self.max_channels),
            ("limits.max_connections", self.max_connections),
            ("limits.engine_queue", self.engine_queue),
            ("limits.write_timeout_ms", self.write_timeout_ms as usize),
        ] {
            if value == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        Ok(())
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
    pub log: String,
    /// Seconds between stats log lines; `None` for never.
    pub stats_interval: Option<Duration>,
    pub limits: Limits,
    /// Mode and history depth per namespace.
    pub namespaces: Namespaces,
}

impl Default for Settings {
    fn default() -> Self {
        Config::default()
            .resolve(&ServeArgs::default(), None)
            .expect("the defaults are valid")
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
        self.limits.check().map_err(|e| {
            ConfigError::Invalid(match file {
                Some(path) => format!("{e} (in {})", path.display()),
                None => e,
            })
        })?;
        Ok(Settings {
            listen: args.listen.unwrap_or(self.listen),
            feeds,
            replay: ReplayOptions {
                speed,
                looped: args.looped || self.looped,
            },
            log: args.log.clone().unwrap_or(self.log),
            stats_interval: Some(args.stats_interval.unwrap_or(self.stats_interval))
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            limits: self.limits,
            namespaces: Namespaces::default(),
        })
    }
}

/// Reads the file named by `--config` (if any) and applies the flags.
pub fn settings_from_args(args: &ServeArgs) -> Result<Settings, ConfigError> {
    match &args.config {
        Some(path) => Config::load(path)?.resolve(args, Some(path)),
        None => Config::default().resolve(args, None),
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
        let bad: Config = toml::from_str("feeds = [\"carrier-pigeon\"]").unwrap();
        let err = bad
            .resolve(&ServeArgs::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("feeds[0]"), "{err}");
        let zero: Config = toml::from_str("[limits]\nring_capacity = 1000").unwrap();
        assert!(zero.resolve(&ServeArgs::default(), None).is_err());
    }
}
