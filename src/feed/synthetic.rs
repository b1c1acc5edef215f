//! The synthetic feed: made-up but plausible data, so a demo never goes still.
//!
//! - 50 `quotes.<SYM>` channels (equities and a few `-USD` crypto pairs): a
//!   mean-reverting random walk on a 0.01 price grid, spread > 0, sizes in
//!   lots, a `last` trade price and a `volume` that only grows. Busy symbols
//!   update far more often than quiet ones, as on a real tape.
//! - `book.<SYM>` and `trades.<SYM>` for a few of them ([`depth`]): a
//!   depth ladder whose best levels are the quote, and every trade the
//!   quote prints.
//! - 4 `scores.<league>.<HOME>-<AWAY>` matches (two football, two basketball)
//!   on an accelerated clock, about ten real minutes each, that start over
//!   after full time (see [`matches`]).
//!
//! Each channel's first record carries its whole state; later records carry
//! only what changed, as an RFC 7396 merge patch (vanished members are `null`).
//! The quote rate is the configured total; match records come on top (about
//! 30/s, mostly the ticking clocks), and so do book and trade records (one
//! book record per quote update of a depth symbol, about a fifth of the
//! quote rate, and a trade for 30 % of those) and the burst of first states.
//! Records carry no `ts`: they happen as they are made, so the ingest time
//! stamped by [`FeedOutput::send`] is their time.
//!
//! [`SyntheticFeed`] is a pure state machine (seed and elapsed time in, records
//! out), so tests need neither sockets nor clocks; [`run`] drives it from a
//! tokio interval.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{FeedOutput, DEFAULT_SYNTHETIC_RATE};
use crate::channel::ChannelName;
use crate::record::{FeedRecord, JsonMap};

pub mod depth;
mod matches;

/// The seed [`run`] uses. Fixed, so every demo (and any bug seen in one)
/// replays the same way.
pub const SEED: u64 = 0x5eed_71c4_ca57;

/// How often [`run`] wakes to emit what is due. Small enough that 500
/// updates/s look continuous, large enough to batch a few records per wake.
pub const TICK: Duration = Duration::from_millis(10);

/// After a stall (a full ring, a paused process) at most this much backlog,
/// in seconds of rate, is caught up; the rest is dropped, not burst out.
const MAX_BACKLOG_SECS: f64 = 0.25;

/// Most quote records one step emits, whatever the rate (1M/s at [`TICK`]).
const MAX_QUOTES_PER_STEP: usize = 10_000;

/// Quote listings in order of activity: (symbol, start price, least spread
/// in cents). Symbols ending in `-USD` are crypto (fractional sizes).
#[rustfmt::skip]
const LISTINGS: [(&str, f64, i64); 50] = [
    ("AAPL", 189.50, 1), ("BTC-USD", 64250.00, 200), ("NVDA", 875.20, 2),
    ("TSLA", 176.80, 1), ("ETH-USD", 3120.00, 25), ("MSFT", 415.30, 1),
    ("AMZN", 181.60, 1), ("META", 492.10, 2), ("SOL-USD", 148.40, 3),
    ("AMD", 162.70, 1), ("GOOGL", 155.90, 1), ("NFLX", 612.40, 5),
    ("JPM", 198.30, 1), ("BAC", 37.85, 1), ("INTC", 31.20, 1),
    ("XOM", 117.60, 1), ("AVGO", 1320.00, 10), ("V", 276.40, 1),
    ("MA", 458.90, 2), ("WMT", 60.15, 1), ("COST", 725.00, 5),
    ("ORCL", 124.80, 1), ("CRM", 298.50, 2), ("ADBE", 485.20, 3),
    ("LTC-USD", 84.30, 2), ("DIS", 112.40, 1), ("KO", 60.90, 1),
    ("PEP", 171.20, 1), ("CSCO", 48.70, 1), ("QCOM", 168.40, 1),
    ("TXN", 172.60, 1), ("IBM", 184.30, 1), ("AVAX-USD", 36.40, 2),
    ("BNB-USD", 585.00, 10), ("LINK-USD", 17.85, 1), ("PFE", 27.90, 1),
    ("MRK", 128.60, 1), ("ABT", 106.20, 1), ("JNJ", 152.80, 1),
    ("UNH", 492.30, 3), ("HD", 345.10, 2), ("PG", 162.40, 1),
    ("MCD", 268.90, 1), ("NKE", 93.70, 1), ("CVX", 158.20, 1),
    ("GS", 448.60, 3), ("T", 17.20, 1), ("VZ", 40.10, 1),
    ("BCH-USD", 465.00, 10), ("UBER", 71.30, 1),
];

/// Activity weight of the symbol at rank r is 1 / (r + 1)^this.
const ACTIVITY_SKEW: f64 = 0.9;
/// Share of the way back to the start price the mid moves per update, so
/// prices wander but never drift off to zero over a long demo.
const MEAN_REVERSION: f64 = 0.002;
/// Typical relative move of the mid per update (equities, crypto).
const VOLATILITY: (f64, f64) = (0.0004, 0.0008);
/// Chance that an update includes a trade (new `last`, more `volume`).
const TRADE_CHANCE: f64 = 0.3;
/// Crypto sizes are counted in units of 0.0001 coin; equities in shares.
const CRYPTO_SIZE_SCALE: f64 = 10_000.0;

/// Remembers what a channel's subscribers have been sent, to turn each new
/// full state into the merge patch that leads there.
struct Emitter {
    channel: ChannelName,
    sent: Option<JsonMap>,
}

impl Emitter {
    fn new(channel: &str) -> Self {
        let channel = ChannelName::new(channel).expect("built-in channel names are valid");
        Self {
            channel,
            sent: None,
        }
    }

    /// The record taking subscribers to `state`, or `None` if nothing changed.
    fn record(&mut self, state: JsonMap) -> Option<FeedRecord> {
        let data = match &self.sent {
            None => state.clone(),
            Some(old) => diff(old, &state),
        };
        self.sent = Some(state);
        (!data.is_empty()).then(|| FeedRecord {
            channel: self.channel.clone(),
            data,
            ts: None,
            ingest_ns: 0,
        })
    }
}

/// The merge patch that turns `old` into `new`: the inverse of RFC 7396's
/// MergePatch (changed members, `null` for removed ones, nested objects
/// diffed member by member).
fn diff(old: &JsonMap, new: &JsonMap) -> JsonMap {
    let mut patch = JsonMap::new();
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(was), _) if was == value => {}
            (Some(Value::Object(was)), Value::Object(now)) => {
                patch.insert(key.clone(), Value::Object(diff(was, now)));
            }
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    patch
}

/// A price in whole cents as a JSON number: `cents / 100.0` is the double
/// nearest the decimal, which serde_json prints in its shortest form, so
/// 10123 cents is written `101.23`, never `101.23000000000001`.
fn cents(c: i64) -> Value {
    Value::from(c as f64 / 100.0)
}

/// A normally distributed number (Box-Muller), without pulling in rand_distr.
fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One symbol's book top and tape. Prices in cents, sizes in `lot` units.
struct Quote {
    out: Emitter,
    anchor: f64,
    mid: f64,
    volatility: f64,
    min_spread: i64,
    size_scale: f64,
    lot: u64,
    bid: i64,
    ask: i64,
    bid_size: u64,
    ask_size: u64,
    last: i64,
    volume: u64,
    /// Book and trade tape, for [`depth::DEPTH_SYMBOLS`] only.
    depth: Option<depth::Depth>,
}

impl Quote {
    fn new(
        &(symbol, price, min_spread): &(&str, f64, i64),
        rng: &mut SmallRng,
        depth_seed: u64,
    ) -> Self {
        let crypto = symbol.ends_with("-USD");
        let (volatility, size_scale, lot) = match crypto {
            true => (VOLATILITY.1, CRYPTO_SIZE_SCALE, 100),
            false => (VOLATILITY.0, 1.0, 100),
        };
        let mut size = || lot * rng.gen_range(1..=50);
        let (bid_size, ask_size) = (size(), size());
        let mut quote = Quote {
            out: Emitter::new(&format!("quotes.{symbol}")),
            anchor: price,
            mid: price,
            volatility,
            min_spread,
            size_scale,
            lot,
            bid: 0,
            ask: 0,
            bid_size,
            ask_size,
            last: 0,
            volume: lot * rng.gen_range(10_000..200_000),
            depth: depth::DEPTH_SYMBOLS
                .contains(&symbol)
                .then(|| depth::Depth::new(symbol, min_spread, lot, depth_seed)),
        };
        quote.step(rng);
        quote.last = quote.bid;
        let opening = depth::Print {
            price: quote.last,
            size: lot,
            buy: false,
        };
        if let Some(depth) = &mut quote.depth {
            depth.set_first_trade(opening);
        }
        quote
    }

    /// Moves the mid, requotes around it, and maybe prints a trade
    /// (returned).
    fn step(&mut self, rng: &mut SmallRng) -> Option<depth::Print> {
        self.mid *= 1.0 + self.volatility * normal(rng);
        self.mid += (self.anchor - self.mid) * MEAN_REVERSION;
        let spread = self.min_spread * rng.gen_range(1..=3);
        self.bid = ((self.mid * 100.0).round() as i64 - spread / 2).max(1);
        self.ask = self.bid + spread;
        // Always change at least one size, so no update is empty.
        let side = rng.gen_range(0..3);
        if side != 1 {
            self.bid_size = self.fresh_size(self.bid_size, rng);
        }
        if side != 0 {
            self.ask_size = self.fresh_size(self.ask_size, rng);
        }
        if !rng.gen_bool(TRADE_CHANCE) {
            return None;
        }
        let buy = !rng.gen_bool(0.5);
        self.last = if buy { self.ask } else { self.bid };
        let size = self.lot * rng.gen_range(1..=20);
        self.volume += size;
        Some(depth::Print {
            price: self.last,
            size,
            buy,
        })
    }

    /// The quote's records for this step: the quote, then (for a depth
    /// symbol) its book and the trade it printed.
    fn records(&mut self, print: Option<depth::Print>, out: &mut Vec<FeedRecord>) {
        out.extend(self.out.record(self.state()));
        let scale = self.size_scale;
        let size = move |units: u64| size_value(units, scale);
        let (bid, ask) = ((self.bid, self.bid_size), (self.ask, self.ask_size));
        if let Some(depth) = &mut self.depth {
            out.extend(depth.requote(bid, ask, &size));
            out.extend(depth.first_trade(&size));
            if let Some(print) = print {
                out.push(depth.trade(&print, &size));
            }
        }
    }

    fn fresh_size(&self, old: u64, rng: &mut SmallRng) -> u64 {
        let size = self.lot * rng.gen_range(1..=50);
        if size == old {
            size + self.lot
        } else {
            size
        }
    }

    fn size(&self, units: u64) -> Value {
        size_value(units, self.size_scale)
    }

    fn state(&self) -> JsonMap {
        let mut m = JsonMap::new();
        m.insert("bid".into(), cents(self.bid));
        m.insert("ask".into(), cents(self.ask));
        m.insert("bid_size".into(), self.size(self.bid_size));
        m.insert("ask_size".into(), self.size(self.ask_size));
        m.insert("last".into(), cents(self.last));
        m.insert("volume".into(), self.size(self.volume));
        m
    }
}

/// A size in lot units as JSON: whole shares, or coins (`scale` units each).
fn size_value(units: u64, scale: f64) -> Value {
    if scale == 1.0 {
        Value::from(units)
    } else {
        Value::from(units as f64 / scale)
    }
}

/// The whole synthetic world, stepped by elapsed time.
pub struct SyntheticFeed {
    rate: f64,
    rng: SmallRng,
    quotes: Vec<Quote>,
    /// Running sums of the activity weights, for picking a symbol.
    cumulative: Vec<f64>,
    matches: Vec<matches::Match>,
    /// Elapsed time at the previous step; `None` before the first.
    last_step: Option<Duration>,
    /// Quote records owed but not yet emitted (the fraction carries over).
    owed: f64,
}

impl SyntheticFeed {
    /// A world from `seed`, emitting `rate` quote updates per second in all
    /// (a rate that is not a positive number counts as the default).
    pub fn new(seed: u64, rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            DEFAULT_SYNTHETIC_RATE
        };
        let mut rng = SmallRng::seed_from_u64(seed);
        // Books draw from their own streams, so they leave the quotes as
        // they were before books existed.
        let quotes = LISTINGS
            .iter()
            .enumerate()
            .map(|(i, l)| Quote::new(l, &mut rng, seed ^ (0xb00c << 16) ^ i as u64))
            .collect();
        let cumulative = (0..LISTINGS.len())
            .scan(0.0, |sum, rank| {
                *sum += 1.0 / ((rank + 1) as f64).powf(ACTIVITY_SKEW);
                Some(*sum)
            })
            .collect();
        Self {
            rate,
            quotes,
            cumulative,
            matches: matches::Match::all(rng.gen()),
            rng,
            last_step: None,
            owed: 0.0,
        }
    }

    /// The records due at `elapsed` (time since the feed started; it never
    /// goes back). The first call returns every channel's full state.
    pub fn next_records(&mut self, elapsed: Duration) -> Vec<FeedRecord> {
        let Some(previous) = self.last_step.replace(elapsed) else {
            let mut records = Vec::new();
            for quote in &mut self.quotes {
                quote.records(None, &mut records);
            }
            records.extend(self.matches.iter_mut().filter_map(|m| m.record()));
            return records;
        };
        let dt = elapsed.saturating_sub(previous);
        let most_owed = (self.rate * MAX_BACKLOG_SECS).max(1.0);
        self.owed = (self.owed + self.rate * dt.as_secs_f64()).min(most_owed);
        let count = (self.owed.floor() as usize).min(MAX_QUOTES_PER_STEP);
        self.owed -= count as f64;
        let mut records = Vec::with_capacity(count + self.matches.len());
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        for _ in 0..count {
            let x = self.rng.gen::<f64>() * total;
            let i = self.cumulative.partition_point(|&c| c <= x);
            let Some(quote) = self.quotes.get_mut(i) else {
                continue;
            };
            let print = quote.step(&mut self.rng);
            quote.records(print, &mut records);
        }
        let nanos = u64::try_from(dt.as_nanos()).unwrap_or(u64::MAX);
        for game in &mut self.matches {
            game.advance(nanos);
            records.extend(game.record());
        }
        records
    }
}

/// Publishes synthetic data at `rate` quote updates per second until
/// `shutdown`.
pub async fn run(rate: f64, out: FeedOutput, shutdown: CancellationToken) {
    let mut feed = SyntheticFeed::new(SEED, rate);
    tracing::info!(
        feed = %out.stats().name, rate = feed.rate, seed = SEED,
        symbols = LISTINGS.len(), matches = feed.matches.len(),
        "synthetic feed started"
    );
    let start = Instant::now();
    let mut ticks = interval(TICK);
    // After a stall, carry on from now; `next_records` catches up the rate.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let batch = feed.next_records(start.elapsed());
        let send_all = async {
            for record in batch {
                out.send(record).await;
            }
        };
        // `send` waits while the ring is full; shutdown must not wait for it.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = send_all => {}
        }
    }
}

#[cfg(test)]
mod tests;
