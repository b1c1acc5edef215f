//! Live exchange feeds: `--feed binance:BTCUSDT,ETHUSDT` and
//! `--feed coinbase:BTC-USD,ETH-USD` (public market data, no keys).
//!
//! The exchange logic is sans-IO: [`binance::Binance`] and
//! [`coinbase::Coinbase`] are state machines fed with frame text (and REST
//! bodies) that answer with [`Action`]s: records to publish, rejections,
//! "fetch a REST snapshot", "send this frame". [`driver`] does the sockets:
//! connect ([`ws`], [`rest`]), answer pings, a silence timeout, reconnect
//! with [`backoff`] and resubscribe, and the `feeds.<name>` [`status`]
//! channel. [`coinbase_advanced`] is Coinbase's Advanced Trade feed
//! (`api=advanced`); [`spec`] parses the `--feed` argument and its options.
//! docs/feeds.md has the mapping tables and the book rules.

pub mod backoff;
pub mod binance;
pub mod book;
pub mod coinbase;
pub mod coinbase_advanced;
pub mod driver;
pub mod number;
pub mod rest;
pub mod spec;
pub mod status;
pub mod ws;

use serde_json::Value;

use crate::channel::ChannelName;
use crate::record::{FeedRecord, JsonMap, RejectReason};

pub use spec::{
    CoinbaseApi, Exchange, ExchangeSpec, ExchangeUrls, TradeStream, Upstream, UpstreamLimits,
    BINANCE_REST_URL, BINANCE_WS_URL, COINBASE_ADVANCED_WS_URL, COINBASE_WS_URL, MAX_SYMBOLS,
};

/// What an exchange state machine asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish this record.
    Publish(FeedRecord),
    /// Count and log a frame that could not be mapped; go on.
    Reject(RejectReason, String),
    /// GET this URL path (on the REST base URL) and hand the body to
    /// `on_snapshot` with `symbol`.
    FetchSnapshot { symbol: String, path: String },
    /// Send this text frame upstream.
    Send(String),
    /// A book was found out of sequence and is being synchronised again.
    Resync { symbol: String, why: String },
    /// Drop the connection and make it again (after the backoff).
    Reconnect(String),
}

/// The sans-IO side of an exchange feed.
pub trait ExchangeLogic: Send + Sync {
    /// The WebSocket URL to connect to (on the configured base).
    fn ws_url(&self, base: &str) -> String;
    /// A connection is open: forget what the last one synchronised and say
    /// what to send or fetch first.
    fn on_connect(&mut self, out: &mut Vec<Action>);
    /// One text frame from upstream.
    fn on_frame(&mut self, text: &str, out: &mut Vec<Action>);
    /// The REST body of a requested snapshot.
    fn on_snapshot(&mut self, symbol: &str, body: &str, out: &mut Vec<Action>);
    /// The last upstream sequence number (update id) seen.
    fn last_sequence(&self) -> Option<u64>;
}

/// A record for `channel` (a valid name is built by the caller from a
/// checked symbol; anything else is a bug reported as a rejection).
pub fn record(channel: String, data: JsonMap) -> Action {
    match ChannelName::new(&channel) {
        Ok(channel) => Action::Publish(FeedRecord {
            channel,
            data,
            ts: None,
            ingest_ns: 0,
        }),
        Err(e) => Action::Reject(RejectReason::BadChannel, format!("{channel:?}: {e}")),
    }
}

/// A member of a JSON object as a string, for mapping errors.
pub fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no string {key:?}"))
}

/// `v`'s `key`, a decimal string, as a JSON number.
pub fn decimal_field(v: &Value, key: &str) -> Result<Value, String> {
    number::decimal(str_field(v, key)?).ok_or_else(|| format!("{key:?} is not a number"))
}

/// `v`'s `key` if it names one of `subscribed`'s symbols or products.
pub fn subscribed_name<'a, T>(
    subscribed: &std::collections::HashMap<String, T>,
    v: &'a Value,
    key: &str,
) -> Result<&'a str, String> {
    let name = str_field(v, key)?;
    if subscribed.contains_key(name) {
        Ok(name)
    } else {
        Err(format!("{name:?} was not subscribed"))
    }
}

pub fn u64_field(v: &Value, key: &str) -> Result<u64, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("no unsigned integer {key:?}"))
}
