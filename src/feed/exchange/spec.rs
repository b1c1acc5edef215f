//! The `binance:` / `coinbase:` feed spec, and what it resolves to with
//! the config's URLs and limits ([`Upstream`]).
//!
//! Syntax: `KIND:SYM[,SYM...][?key=value&...]`, keys `depth` (levels kept
//! per side), `ws_url`, `rest_url` (upstream overrides, e.g. a local test
//! server), `name` (the status channel's last segment); for Binance
//! `trades=trade|agg`, for Coinbase `api=exchange|advanced`.

use std::fmt;
use std::time::Duration;

use crate::channel::ChannelName;

/// Which exchange a feed talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    Binance,
    Coinbase,
}

impl Exchange {
    pub fn as_str(self) -> &'static str {
        match self {
            Exchange::Binance => "binance",
            Exchange::Coinbase => "coinbase",
        }
    }
}

/// Default upstream URLs (overridden by `[exchanges.*]` and the spec).
pub const BINANCE_WS_URL: &str = "wss://stream.binance.com:9443";
pub const BINANCE_REST_URL: &str = "https://api.binance.com";
pub const COINBASE_WS_URL: &str = "wss://ws-feed.exchange.coinbase.com";
pub const COINBASE_ADVANCED_WS_URL: &str = "wss://advanced-trade-ws.coinbase.com";

/// Which of Coinbase's two public feeds (`api=` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoinbaseApi {
    /// The Exchange feed (`ws-feed`): level2, ticker, matches.
    #[default]
    Exchange,
    /// Advanced Trade: l2_data, ticker, market_trades with `sequence_num`.
    Advanced,
}

/// Which Binance trade stream to subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TradeStream {
    /// `<sym>@trade`: one record per trade.
    #[default]
    Trade,
    /// `<sym>@aggTrade`: trades aggregated by taker order and price.
    Agg,
}

/// A parsed `binance:...` or `coinbase:...` spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    pub exchange: Exchange,
    pub symbols: Vec<String>,
    /// `depth=N`: book levels kept per side (`limits.max_book_levels` if unset).
    pub depth: Option<usize>,
    pub ws_url: Option<String>,
    pub rest_url: Option<String>,
    /// `name=X`: status channel `feeds.X` (the exchange's name if unset).
    pub name: Option<String>,
    pub trades: TradeStream,
    /// `api=exchange|advanced` (Coinbase only).
    pub api: CoinbaseApi,
    /// The text the spec was given as (its display and feed name).
    pub text: String,
}

/// Most symbols one exchange feed subscribes to (a URL or subscribe
/// message with more gets refused upstream anyway).
pub const MAX_SYMBOLS: usize = 200;

impl ExchangeSpec {
    /// Parses what follows `binance:` or `coinbase:`.
    pub fn parse(exchange: Exchange, arg: &str, text: &str) -> Result<Self, String> {
        let kind = exchange.as_str();
        let (listed, options) = arg.split_once('?').unwrap_or((arg, ""));
        let mut symbols: Vec<String> = Vec::new();
        for symbol in listed.split(',').map(|s| s.trim().to_ascii_uppercase()) {
            // Each once, in the order given.
            if !symbol.is_empty() && !symbols.contains(&symbol) {
                symbols.push(symbol);
            }
            if symbols.len() > MAX_SYMBOLS {
                return Err(format!("{kind}: at most {MAX_SYMBOLS} symbols per feed"));
            }
        }
        if symbols.is_empty() {
            return Err(format!(
                "{kind}: needs at least one symbol, e.g. {}",
                example(exchange)
            ));
        }
        for s in &symbols {
            let ok = s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!(
                    "{kind}: symbol {s:?} must be letters, digits, '-' or '_' (at most 32)"
                ));
            }
        }
        let mut spec = ExchangeSpec {
            exchange,
            symbols,
            depth: None,
            ws_url: None,
            rest_url: None,
            name: None,
            trades: TradeStream::Trade,
            api: CoinbaseApi::Exchange,
            text: text.to_owned(),
        };
        for option in options.split('&').filter(|o| !o.is_empty()) {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("{kind}: option {option:?} must be key=value"))?;
            match key {
                "depth" => match value.parse::<usize>() {
                    Ok(n) if n > 0 => spec.depth = Some(n),
                    _ => return Err(format!("{kind}: depth must be a positive number of levels, not {value:?}")),
                },
                "ws_url" => spec.ws_url = Some(check_url(kind, value, &["ws", "wss"])?),
                "rest_url" if exchange == Exchange::Binance => {
                    spec.rest_url = Some(check_url(kind, value, &["http", "https"])?)
                }
                // `feeds.nats` is each NATS node's own status channel.
                "name" if value == "nats" => return Err(format!("{kind}: name \"nats\" is taken (feeds.nats is a NATS node's status channel): pick another")),
                "name" if ChannelName::new(&format!("feeds.{value}")).is_ok() && !value.contains('.') => {
                    spec.name = Some(value.to_owned())
                }
                "name" => return Err(format!("{kind}: name {value:?} must be one channel segment (letters, digits, '-', '_')")),
                "trades" if exchange == Exchange::Binance => {
                    spec.trades = match value {
                        "trade" => TradeStream::Trade,
                        "agg" => TradeStream::Agg,
                        _ => return Err(format!("binance: trades must be trade or agg, not {value:?}")),
                    }
                }
                "api" if exchange == Exchange::Coinbase => {
                    spec.api = match value {
                        "exchange" => CoinbaseApi::Exchange,
                        "advanced" => CoinbaseApi::Advanced,
                        _ => return Err(format!("coinbase: api must be exchange or advanced, not {value:?}")),
                    }
                }
                _ => {
                    return Err(format!(
                        "{kind}: unknown option {key:?} (use depth, ws_url, name, {})",
                        match exchange {
                            Exchange::Binance => "rest_url, trades",
                            Exchange::Coinbase => "api",
                        }
                    ))
                }
            }
        }
        Ok(spec)
    }

    /// The status channel's last segment.
    pub fn status_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.exchange.as_str())
    }
}

fn example(exchange: Exchange) -> &'static str {
    match exchange {
        Exchange::Binance => "binance:BTCUSDT,ETHUSDT",
        Exchange::Coinbase => "coinbase:BTC-USD,ETH-USD",
    }
}

fn check_url(kind: &str, value: &str, schemes: &[&str]) -> Result<String, String> {
    let scheme = value.split("://").next().unwrap_or("");
    if value.contains("://") && schemes.contains(&scheme) {
        Ok(value.trim_end_matches('/').to_owned())
    } else {
        Err(format!(
            "{kind}: {value:?} must be a {} URL",
            schemes.join(" or ")
        ))
    }
}

impl fmt::Display for ExchangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Everything an exchange feed needs to run: its spec with the config's
/// defaults filled in, and the `[limits]` it keeps to.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub spec: ExchangeSpec,
    pub ws_url: String,
    pub rest_url: String,
    pub depth: usize,
    pub limits: UpstreamLimits,
}

/// `[limits]` keys of the exchange feeds (see `config::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Largest upstream WebSocket message or REST body; bigger is rejected
    /// (`too_long`) and the connection made again.
    pub max_message_bytes: usize,
    /// Nothing received (not even a ping) for this long: reconnect.
    pub silence_timeout: Duration,
    /// Connecting, the handshake, and one REST snapshot each get this long.
    pub connect_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Book levels per side when the spec gives no `depth`.
    pub max_book_levels: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 << 20,
            silence_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_book_levels: 5000,
        }
    }
}

/// `[exchanges.binance]` / `[exchanges.coinbase]` URLs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeUrls {
    pub binance_ws: String,
    pub binance_rest: String,
    pub coinbase_ws: String,
    pub coinbase_advanced_ws: String,
}

impl Default for ExchangeUrls {
    fn default() -> Self {
        Self {
            binance_ws: BINANCE_WS_URL.into(),
            binance_rest: BINANCE_REST_URL.into(),
            coinbase_ws: COINBASE_WS_URL.into(),
            coinbase_advanced_ws: COINBASE_ADVANCED_WS_URL.into(),
        }
    }
}

impl Upstream {
    /// The spec's own options win over the config's URLs and limits.
    pub fn resolve(spec: ExchangeSpec, urls: &ExchangeUrls, limits: UpstreamLimits) -> Self {
        let (ws, rest) = match (spec.exchange, spec.api) {
            (Exchange::Binance, _) => (&urls.binance_ws, &urls.binance_rest),
            (Exchange::Coinbase, CoinbaseApi::Exchange) => (&urls.coinbase_ws, &urls.binance_rest),
            (Exchange::Coinbase, CoinbaseApi::Advanced) => {
                (&urls.coinbase_advanced_ws, &urls.binance_rest)
            }
        };
        Upstream {
            ws_url: spec.ws_url.clone().unwrap_or_else(|| ws.clone()),
            rest_url: spec.rest_url.clone().unwrap_or_else(|| rest.clone()),
            depth: spec.depth.unwrap_or(limits.max_book_levels),
            limits,
            spec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedSpec;

    fn upstream(text: &str) -> Upstream {
        match text.parse::<FeedSpec>() {
            Ok(FeedSpec::Exchange(upstream)) => *upstream,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn specs_name_symbols_and_options() {
        let b = upstream("binance:btcusdt, ETHUSDT,BTCUSDT?depth=50&trades=agg&name=spot");
        assert_eq!(b.spec.exchange, Exchange::Binance);
        assert_eq!(b.spec.symbols, ["BTCUSDT", "ETHUSDT"]);
        assert_eq!((b.depth, b.spec.trades), (50, TradeStream::Agg));
        assert_eq!(b.spec.status_name(), "spot");
        assert_eq!(b.ws_url, BINANCE_WS_URL);
        assert_eq!(b.rest_url, BINANCE_REST_URL);
        assert_eq!(
            "binance:BTCUSDT?depth=5"
                .parse::<FeedSpec>()
                .unwrap()
                .to_string(),
            "binance:BTCUSDT?depth=5"
        );
        let c = upstream("coinbase:BTC-USD?ws_url=ws://127.0.0.1:9/");
        assert_eq!(c.ws_url, "ws://127.0.0.1:9");
        assert_eq!(c.spec.status_name(), "coinbase");
        assert_eq!(c.depth, UpstreamLimits::default().max_book_levels);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (text, says) in [
            ("binance:", "at least one symbol"),
            ("binance:BTC/USDT", "letters, digits"),
            ("binance:BTCUSDT?depth=0", "depth"),
            ("binance:BTCUSDT?depth", "key=value"),
            ("binance:BTCUSDT?ws_url=http://x", "ws or wss"),
            ("coinbase:BTC-USD?rest_url=http://x", "unknown option"),
            ("coinbase:BTC-USD?trades=agg", "unknown option"),
            ("binance:BTCUSDT?name=a.b", "one channel segment"),
            ("binance:BTCUSDT?name=nats", "is taken"),
            ("binance:BTCUSDT?trades=some", "trade or agg"),
        ] {
            let err = text.parse::<FeedSpec>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let many: Vec<String> = (0..=MAX_SYMBOLS).map(|i| format!("S{i}")).collect();
        let many = many.join(",");
        assert!(format!("binance:{many}").parse::<FeedSpec>().is_err());
    }
}
