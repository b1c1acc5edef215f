//! Binance spot market data, sans-IO: frame text in, [`Action`]s out.
//!
//! One combined-stream connection per feed:
//! `<ws_url>/stream?streams=<sym>@bookTicker/<sym>@trade/<sym>@depth@100ms/...`
//! (the subscription is in the URL, so reconnecting resubscribes).
//!
//! - `bookTicker` -> `quotes.<SYM>`: `bid`, `bid_size`, `ask`, `ask_size`, `u`.
//! - `trade` / `aggTrade` -> `trades.<SYM>`: `price`, `size`, `side` (the
//!   aggressor: `m` = buyer is maker, so the seller hit), `id` (aggTrade
//!   also `first_id`, `last_id`), `exch_ts` (trade time `T`, ns).
//! - `depthUpdate` -> `book.<SYM>`, synchronised by Binance's documented
//!   rule: buffer diffs, fetch the REST snapshot (`lastUpdateId` L), drop
//!   diffs with `u <= L`, the first kept one must have `U <= L+1 <= u`, then
//!   each `U` must be the previous `u + 1`. Anything else re-syncs: a fresh
//!   snapshot, published as a clear record then the full book.

use std::collections::{HashMap, VecDeque};

use serde_json::{json, Value};

use super::book::{self, Book, Patch, Side};
use super::number::{ms_to_ns, size};
use super::{
    decimal_field, record, subscribed_name, u64_field, Action, ExchangeLogic, TradeStream,
};
use crate::record::{JsonMap, RejectReason};

/// Diffs kept per symbol while its snapshot is fetched (100 s at the
/// 100 ms stream); older ones are dropped (the snapshot then straddles
/// them or is fetched again).
pub const MAX_BUFFERED_DIFFS: usize = 1000;
/// Snapshots in a row that turn out older than the buffered stream before
/// the connection is given up and made again.
pub const MAX_STALE_SNAPSHOTS: u32 = 5;
/// Binance serves at most this many levels per side in a snapshot.
const MAX_SNAPSHOT_LIMIT: usize = 5000;

#[derive(Debug, Clone, PartialEq)]
struct Diff {
    first: u64,
    last: u64,
    bids: Vec<(String, String)>,
    asks: Vec<(String, String)>,
}

#[derive(Debug)]
enum Sync {
    /// Waiting for a snapshot; diffs are buffered.
    Waiting { buffer: VecDeque<Diff>, stale: u32 },
    /// Snapshot applied at `last`; the next diff must straddle `last + 1`.
    Snapshot { last: u64 },
    /// In step: the next diff's `U` must be `last + 1`.
    Synced { last: u64 },
}

#[derive(Debug)]
struct SymbolState {
    book: Book,
    sync: Sync,
}

pub struct Binance {
    symbols: Vec<String>,
    depth: usize,
    trades: TradeStream,
    books: HashMap<String, SymbolState>,
    last_sequence: Option<u64>,
}

impl Binance {
    pub fn new(symbols: Vec<String>, depth: usize, trades: TradeStream) -> Self {
        let books = symbols
            .iter()
            .map(|s| {
                let state = SymbolState {
                    book: Book::new(depth),
                    sync: Sync::Waiting {
                        buffer: VecDeque::new(),
                        stale: 0,
                    },
                };
                (s.clone(), state)
            })
            .collect();
        Self {
            symbols,
            depth,
            trades,
            books,
            last_sequence: None,
        }
    }

    fn snapshot_request(&self, symbol: &str) -> Action {
        Action::FetchSnapshot {
            symbol: symbol.to_owned(),
            path: format!(
                "/api/v3/depth?symbol={symbol}&limit={}",
                self.depth.min(MAX_SNAPSHOT_LIMIT)
            ),
        }
    }

    fn quote(&mut self, data: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        let symbol = self.symbol(data)?;
        let u = u64_field(data, "u")?;
        let mut q = JsonMap::new();
        for (key, field) in [
            ("bid", "b"),
            ("bid_size", "B"),
            ("ask", "a"),
            ("ask_size", "A"),
        ] {
            q.insert(key.into(), decimal_field(data, field)?);
        }
        q.insert("u".into(), u.into());
        self.last_sequence = Some(u);
        out.push(record(format!("quotes.{symbol}"), q));
        Ok(())
    }

    fn trade(&mut self, data: &Value, agg: bool, out: &mut Vec<Action>) -> Result<(), String> {
        let symbol = self.symbol(data)?;
        let price = decimal_field(data, "p")?;
        let qty = decimal_field(data, "q")?;
        let maker_is_buyer = data
            .get("m")
            .and_then(Value::as_bool)
            .ok_or("no boolean \"m\"")?;
        let mut t = JsonMap::new();
        t.insert("price".into(), price);
        t.insert("size".into(), qty);
        t.insert(
            "side".into(),
            json!(if maker_is_buyer { "sell" } else { "buy" }),
        );
        if agg {
            t.insert("id".into(), u64_field(data, "a")?.into());
            t.insert("first_id".into(), u64_field(data, "f")?.into());
            t.insert("last_id".into(), u64_field(data, "l")?.into());
        } else {
            t.insert("id".into(), u64_field(data, "t")?.into());
        }
        t.insert("exch_ts".into(), ms_to_ns(u64_field(data, "T")?).into());
        out.push(record(format!("trades.{symbol}"), t));
        Ok(())
    }

    fn symbol(&self, data: &Value) -> Result<String, String> {
        subscribed_name(&self.books, data, "s").map(str::to_owned)
    }

    fn depth_update(&mut self, data: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        let symbol = self.symbol(data)?;
        let diff = Diff {
            first: u64_field(data, "U")?,
            last: u64_field(data, "u")?,
            bids: levels(data, "b")?,
            asks: levels(data, "a")?,
        };
        if diff.first > diff.last {
            return Err(format!("U {} is after u {}", diff.first, diff.last));
        }
        self.last_sequence = Some(diff.last);
        let state = self.books.get_mut(&symbol).expect("checked symbol");
        let expected = match &mut state.sync {
            Sync::Waiting { buffer, .. } => {
                if buffer.len() == MAX_BUFFERED_DIFFS {
                    buffer.pop_front();
                }
                buffer.push_back(diff);
                return Ok(());
            }
            Sync::Snapshot { last } => {
                if diff.last <= *last {
                    return Ok(()); // older than the snapshot
                }
                if diff.first > *last + 1 {
                    Err(format!(
                        "first diff after snapshot {last} starts at U {}",
                        diff.first
                    ))
                } else {
                    Ok(())
                }
            }
            Sync::Synced { last } => {
                if diff.first == *last + 1 {
                    Ok(())
                } else {
                    Err(format!("U {} does not follow u {last}", diff.first))
                }
            }
        };
        if let Err(why) = expected {
            self.resync(&symbol, why, Some(diff), out);
            return Ok(());
        }
        let mut patch = Patch::default();
        match apply(&mut state.book, &diff, &mut patch) {
            Ok(()) => {
                state.sync = Sync::Synced { last: diff.last };
                if !patch.is_empty() {
                    out.push(record(format!("book.{symbol}"), patch.into_data()));
                }
            }
            Err(e) => {
                // Part of the diff may be applied: the book is not to be trusted.
                out.push(Action::Reject(
                    RejectReason::Unmapped,
                    format!("{symbol} depthUpdate: {e}"),
                ));
                self.resync(
                    &symbol,
                    format!("a diff could not be applied ({e})"),
                    None,
                    out,
                );
            }
        }
        Ok(())
    }

    fn resync(&mut self, symbol: &str, why: String, keep: Option<Diff>, out: &mut Vec<Action>) {
        let state = self.books.get_mut(symbol).expect("checked symbol");
        state.sync = Sync::Waiting {
            buffer: keep.into_iter().collect(),
            stale: 0,
        };
        out.push(Action::Resync {
            symbol: symbol.to_owned(),
            why,
        });
        out.push(self.snapshot_request(symbol));
    }

    fn snapshot(&mut self, symbol: &str, body: &str, out: &mut Vec<Action>) -> Result<(), String> {
        let value: Value =
            serde_json::from_str(body).map_err(|e| format!("snapshot is not JSON: {e}"))?;
        let last = u64_field(&value, "lastUpdateId")?;
        let bids = levels(&value, "bids")?;
        let asks = levels(&value, "asks")?;
        let Some(state) = self.books.get_mut(symbol) else {
            return Err(format!("snapshot for {symbol:?}, which is not subscribed"));
        };
        let Sync::Waiting { buffer, stale } = &mut state.sync else {
            return Ok(()); // already synchronised by an earlier answer
        };
        while buffer.front().is_some_and(|d| d.last <= last) {
            buffer.pop_front();
        }
        if let Some(first) = buffer.front() {
            if first.first > last + 1 {
                // The stream is already past this snapshot: fetch a newer one.
                *stale += 1;
                if *stale >= MAX_STALE_SNAPSHOTS {
                    out.push(Action::Reconnect(format!(
                        "{symbol}: {MAX_STALE_SNAPSHOTS} snapshots in a row were older than the stream"
                    )));
                } else {
                    out.push(self.snapshot_request(symbol));
                }
                return Ok(());
            }
        }
        let buffered = std::mem::take(buffer);
        let state = self.books.get_mut(symbol).expect("checked symbol");
        state.book.clear();
        let mut scratch = Patch::default();
        let snapshot = Diff {
            first: last,
            last,
            bids,
            asks,
        };
        apply(&mut state.book, &snapshot, &mut scratch)?;
        let mut at = last;
        for diff in &buffered {
            if diff.first > at + 1 {
                // A hole inside the buffer itself: start over.
                let why = format!("buffered U {} does not follow u {at}", diff.first);
                self.resync(symbol, why, None, out);
                return Ok(());
            }
            apply(&mut state.book, diff, &mut scratch)?;
            at = diff.last;
        }
        state.sync = if at == last {
            Sync::Snapshot { last }
        } else {
            Sync::Synced { last: at }
        };
        out.push(record(format!("book.{symbol}"), book::clear_data()));
        out.push(record(format!("book.{symbol}"), state.book.full_data()));
        Ok(())
    }
}

/// `[["price","size"], ...]` of a diff or snapshot.
fn levels(v: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    let list = v
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no array {key:?}"))?;
    list.iter()
        .map(|level| match level.as_array().map(Vec::as_slice) {
            Some([Value::String(p), Value::String(q), ..]) => Ok((p.clone(), q.clone())),
            _ => Err(format!("a {key:?} level is not [\"price\",\"size\"]")),
        })
        .collect()
}

fn apply(book: &mut Book, diff: &Diff, patch: &mut Patch) -> Result<(), String> {
    for (side, list) in [(Side::Bids, &diff.bids), (Side::Asks, &diff.asks)] {
        for (price, qty) in list {
            let qty = size(qty).ok_or_else(|| format!("size {qty:?} is not a number"))?;
            if !book.set(side, price, qty, patch) {
                return Err(format!("price {price:?} is not a number"));
            }
        }
    }
    Ok(())
}

impl ExchangeLogic for Binance {
    fn ws_url(&self, base: &str) -> String {
        let trades = match self.trades {
            TradeStream::Trade => "trade",
            TradeStream::Agg => "aggTrade",
        };
        let streams: Vec<String> = self
            .symbols
            .iter()
            .flat_map(|s| {
                let s = s.to_ascii_lowercase();
                [
                    format!("{s}@bookTicker"),
                    format!("{s}@{trades}"),
                    format!("{s}@depth@100ms"),
                ]
            })
            .collect();
        format!("{base}/stream?streams={}", streams.join("/"))
    }

    fn on_connect(&mut self, out: &mut Vec<Action>) {
        for symbol in self.symbols.clone() {
            let state = self
                .books
                .get_mut(&symbol)
                .expect("every symbol has a book");
            state.sync = Sync::Waiting {
                buffer: VecDeque::new(),
                stale: 0,
            };
            out.push(self.snapshot_request(&symbol));
        }
    }

    fn on_frame(&mut self, text: &str, out: &mut Vec<Action>) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.push(Action::Reject(RejectReason::InvalidJson, e.to_string()));
                return;
            }
        };
        // Combined stream: {"stream":..., "data":{...}}; a raw stream: the event.
        let data = value.get("data").unwrap_or(&value);
        if value.get("result").is_some() && value.get("id").is_some() {
            return; // the answer to a (un)subscribe request
        }
        let result = match data.get("e").and_then(Value::as_str) {
            Some("depthUpdate") => self.depth_update(data, out),
            Some("trade") => self.trade(data, false, out),
            Some("aggTrade") => self.trade(data, true, out),
            Some(other) => Err(format!("event type {other:?} is not mapped")),
            None if data.get("u").is_some() && data.get("b").is_some() => self.quote(data, out),
            None => Err("neither an event nor a bookTicker".to_owned()),
        };
        if let Err(e) = result {
            out.push(Action::Reject(RejectReason::Unmapped, e));
        }
    }

    fn on_snapshot(&mut self, symbol: &str, body: &str, out: &mut Vec<Action>) {
        if let Err(e) = self.snapshot(symbol, body, out) {
            out.push(Action::Reject(
                RejectReason::Unmapped,
                format!("{symbol} snapshot: {e}"),
            ));
            out.push(Action::Reconnect(format!(
                "{symbol}: unusable depth snapshot ({e})"
            )));
        }
    }

    fn last_sequence(&self) -> Option<u64> {
        self.last_sequence
    }
}

#[cfg(test)]
mod tests;
