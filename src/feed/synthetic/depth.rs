//! Order books and trade tapes for a few synthetic symbols ([`DEPTH_SYMBOLS`]):
//! `book.<SYM>` and `trades.<SYM>`, in the shape the converted exchange
//! feeds use (the shared data set's "Feed conventions"):
//!
//! - `book.<SYM>`: `{"bids":{"<price>":size,...},"asks":{...}}`, price
//!   strings as keys (two decimals), a `null` size deleting a level. The
//!   best levels are always the symbol's quote (`bid`/`bid_size`,
//!   `ask`/`ask_size`), so the book and `quotes.<SYM>` agree; below them
//!   [`LEVELS`] levels a side come and go at random.
//! - `trades.<SYM>`: one record per trade the quote prints: `price`, `size`,
//!   `side` (the aggressor: `buy` at the ask, `sell` at the bid) and an `id`
//!   that counts up. Each record carries the whole trade, so a client that
//!   lists updates sees every field of every trade.
//!
//! A book has its own random stream, so adding books did not change the
//! quotes a seed gives.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::Emitter;
use crate::channel::ChannelName;
use crate::record::{FeedRecord, JsonMap};

/// Symbols (of the quote listings) that get a book and a trade tape.
pub const DEPTH_SYMBOLS: [&str; 3] = ["AAPL", "BTC-USD", "ETH-USD"];

/// Price levels kept a side, the best one included.
pub const LEVELS: usize = 12;

/// Chance per quote step that each deeper level's size changes.
const RESIZE_CHANCE: f64 = 0.15;

/// A trade the quote printed: price in cents, size in lot units.
pub struct Print {
    pub price: i64,
    pub size: u64,
    pub buy: bool,
}

/// One symbol's book and tape.
pub struct Depth {
    book: Emitter,
    trades: ChannelName,
    rng: SmallRng,
    /// Price in cents -> size in the quote's units.
    bids: BTreeMap<i64, u64>,
    asks: BTreeMap<i64, u64>,
    /// Distance in cents between levels added below the best.
    tick: i64,
    lot: u64,
    next_trade_id: u64,
    /// The first trade record waits for [`Depth::first_records`].
    first_trade: Option<Print>,
}

impl Depth {
    /// `tick` in cents (the symbol's least spread), `lot` its size unit.
    pub fn new(symbol: &str, tick: i64, lot: u64, seed: u64) -> Self {
        let channel = |ns: &str| {
            ChannelName::new(&format!("{ns}.{symbol}")).expect("built-in channel names are valid")
        };
        Self {
            book: Emitter::new(&format!("book.{symbol}")),
            trades: channel("trades"),
            rng: SmallRng::seed_from_u64(seed),
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            tick: tick.max(1),
            lot,
            next_trade_id: 1,
            first_trade: None,
        }
    }

    /// Moves the book to the quote's new best levels, reshuffles a few
    /// deeper ones; returns the record of what changed.
    pub fn requote(
        &mut self,
        (bid, bid_size): (i64, u64),
        (ask, ask_size): (i64, u64),
        size: &dyn Fn(u64) -> Value,
    ) -> Option<FeedRecord> {
        // Bids above the new best bid, asks below the new best ask, are gone.
        self.bids.retain(|&price, _| price <= bid);
        self.asks.retain(|&price, _| price >= ask);
        self.bids.insert(bid, bid_size);
        self.asks.insert(ask, ask_size);
        let (tick, lot) = (self.tick, self.lot);
        let rng = &mut self.rng;
        // Levels left far behind by a moving price go, so the ladder stays
        // a dense few ticks deep rather than a scatter of stale prices.
        let reach = LEVELS as i64 * 2 * tick;
        for (side, best, away) in [(&mut self.bids, bid, -1), (&mut self.asks, ask, 1)] {
            side.retain(|&price, _| (price - best).abs() <= reach);
            for (&price, units) in side.iter_mut() {
                if price != best && rng.gen_bool(RESIZE_CHANCE) {
                    *units = lot * rng.gen_range(1..=80);
                }
            }
            // Fill the side back up behind its deepest level, then trim.
            while side.len() < LEVELS {
                let deepest = if away < 0 {
                    side.keys().next().copied()
                } else {
                    side.keys().next_back().copied()
                }
                .unwrap_or(best);
                let price = deepest + away * tick * rng.gen_range(1..=2);
                if price <= 0 {
                    break;
                }
                side.insert(price, lot * rng.gen_range(1..=80));
            }
            while side.len() > LEVELS {
                let deepest = if away < 0 {
                    side.keys().next().copied()
                } else {
                    side.keys().next_back().copied()
                };
                if let Some(price) = deepest {
                    side.remove(&price);
                }
            }
        }
        let levels = |side: &BTreeMap<i64, u64>| -> Value {
            let map: JsonMap = side
                .iter()
                .map(|(&price, &units)| (price_key(price), size(units)))
                .collect();
            Value::Object(map)
        };
        let mut state = JsonMap::new();
        state.insert("bids".into(), levels(&self.bids));
        state.insert("asks".into(), levels(&self.asks));
        self.book.record(state)
    }

    /// The record of one trade (the whole trade, not a diff).
    pub fn trade(&mut self, print: &Print, size: &dyn Fn(u64) -> Value) -> FeedRecord {
        let mut data = JsonMap::new();
        data.insert("price".into(), super::cents(print.price));
        data.insert("size".into(), size(print.size));
        data.insert("side".into(), if print.buy { "buy" } else { "sell" }.into());
        data.insert("id".into(), self.next_trade_id.into());
        self.next_trade_id += 1;
        FeedRecord {
            channel: self.trades.clone(),
            data,
            ts: None,
            ingest_ns: 0,
        }
    }

    /// Remembers the trade the tape opens with (so `trades.<SYM>` exists
    /// from the start, as the book does).
    pub fn set_first_trade(&mut self, print: Print) {
        self.first_trade = Some(print);
    }

    /// The opening trade, once.
    pub fn first_trade(&mut self, size: &dyn Fn(u64) -> Value) -> Option<FeedRecord> {
        let print = self.first_trade.take()?;
        Some(self.trade(&print, size))
    }

    #[cfg(test)]
    pub fn sides(&self) -> (&BTreeMap<i64, u64>, &BTreeMap<i64, u64>) {
        (&self.bids, &self.asks)
    }
}

/// A price in cents as a book key: `"189.50"`.
pub fn price_key(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
