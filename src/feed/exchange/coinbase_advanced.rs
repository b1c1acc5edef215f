//! Coinbase Advanced Trade market data (`coinbase:...?api=advanced`),
//! sans-IO. The public channels of `wss://advanced-trade-ws.coinbase.com`:
//! one subscribe message each for `level2`, `ticker`, `market_trades` and
//! `heartbeats`.
//!
//! - `ticker` tickers -> `quotes.<PRODUCT>`: `bid`, `bid_size`
//!   (`best_bid_quantity`), `ask`, `ask_size`, `sequence_num`, `exch_ts`
//!   (the message's `timestamp`).
//! - `market_trades` updates -> `trades.<PRODUCT>`: `price`, `size`, `side`
//!   (the aggressor; Coinbase's `side` is the maker's, kept as
//!   `maker_side`), `id` (`trade_id`, a string), `sequence_num`, `exch_ts`
//!   (the trade's `time`). The snapshot of past trades sent on subscribing
//!   is not replayed as records.
//! - `l2_data` -> `book.<PRODUCT>`: a snapshot publishes a clear then the
//!   full book; updates (`bid` / `offer`, `new_quantity` 0 deletes) follow.
//!
//! Every message carries `sequence_num`, counting up by one per message on
//! the connection. A skipped number means a message was lost: every book is
//! marked out of step (its updates are no longer applied) and `level2` is
//! resubscribed, whose snapshots then publish a clear and the full books.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::book::{self, Patch, Side};
use super::coinbase::{product_books, ProductBook};
use super::number::{rfc3339_utc_ns, size};
use super::{decimal_field, record, str_field, subscribed_name, u64_field, Action, ExchangeLogic};
use crate::record::{JsonMap, RejectReason};

const CHANNELS: [&str; 4] = ["level2", "ticker", "market_trades", "heartbeats"];

pub struct CoinbaseAdvanced {
    products: Vec<String>,
    books: HashMap<String, ProductBook>,
    /// The `sequence_num` the next message must carry.
    expected: Option<u64>,
    last_sequence: Option<u64>,
}

fn subscribe(kind: &str, products: &[String], channel: &str) -> Action {
    Action::Send(json!({"type": kind, "product_ids": products, "channel": channel}).to_string())
}

impl CoinbaseAdvanced {
    pub fn new(products: Vec<String>, depth: usize) -> Self {
        Self {
            books: product_books(&products, depth),
            products,
            expected: None,
            last_sequence: None,
        }
    }

    fn product<'a>(&self, v: &'a Value) -> Result<&'a str, String> {
        subscribed_name(&self.books, v, "product_id")
    }

    /// Checks the connection's message count; a gap re-syncs every book.
    fn sequence(&mut self, sequence: u64, out: &mut Vec<Action>) {
        if let Some(expected) = self.expected {
            if sequence != expected {
                for state in self.books.values_mut() {
                    state.synced = false;
                }
                out.push(Action::Resync {
                    symbol: self.products.join(","),
                    why: format!("sequence_num {sequence} where {expected} was due"),
                });
                out.push(subscribe("unsubscribe", &self.products, "level2"));
                out.push(subscribe("subscribe", &self.products, "level2"));
            }
        }
        self.expected = Some(sequence + 1);
        self.last_sequence = Some(sequence);
    }

    fn tickers(&self, v: &Value, sequence: u64, out: &mut Vec<Action>) -> Result<(), String> {
        let exch_ts = v
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(rfc3339_utc_ns);
        for event in events(v)? {
            for t in list(event, "tickers")? {
                let product = self.product(t)?;
                let mut q = JsonMap::new();
                for (key, field) in [
                    ("bid", "best_bid"),
                    ("bid_size", "best_bid_quantity"),
                    ("ask", "best_ask"),
                    ("ask_size", "best_ask_quantity"),
                ] {
                    q.insert(key.into(), decimal_field(t, field)?);
                }
                q.insert("sequence_num".into(), sequence.into());
                if let Some(ts) = exch_ts {
                    q.insert("exch_ts".into(), ts.into());
                }
                out.push(record(format!("quotes.{product}"), q));
            }
        }
        Ok(())
    }

    fn trades(&self, v: &Value, sequence: u64, out: &mut Vec<Action>) -> Result<(), String> {
        for event in events(v)? {
            if event.get("type").and_then(Value::as_str) == Some("snapshot") {
                continue; // trades from before the subscription
            }
            for t in list(event, "trades")? {
                let product = self.product(t)?;
                let maker_side = str_field(t, "side")?.to_ascii_lowercase();
                let side = match maker_side.as_str() {
                    "buy" => "sell",
                    "sell" => "buy",
                    other => return Err(format!("side {other:?} is neither BUY nor SELL")),
                };
                let mut r = JsonMap::new();
                r.insert("price".into(), decimal_field(t, "price")?);
                r.insert("size".into(), decimal_field(t, "size")?);
                r.insert("side".into(), json!(side));
                r.insert("maker_side".into(), json!(maker_side));
                r.insert("id".into(), json!(str_field(t, "trade_id")?));
                r.insert("sequence_num".into(), sequence.into());
                if let Some(ts) = t
                    .get("time")
                    .and_then(Value::as_str)
                    .and_then(rfc3339_utc_ns)
                {
                    r.insert("exch_ts".into(), ts.into());
                }
                out.push(record(format!("trades.{product}"), r));
            }
        }
        Ok(())
    }

    fn level2(&mut self, v: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        for event in events(v)? {
            let product = self.product(event)?.to_owned();
            let snapshot = match event.get("type").and_then(Value::as_str) {
                Some("snapshot") => true,
                Some("update") => false,
                other => return Err(format!("l2_data event type {other:?}")),
            };
            let updates = list(event, "updates")?;
            let state = self.books.get_mut(&product).expect("checked product");
            if snapshot {
                state.book.clear();
                state.synced = false;
            } else if !state.synced {
                continue; // out of step until the next snapshot
            }
            let mut patch = Patch::default();
            for u in updates {
                let side = match u.get("side").and_then(Value::as_str) {
                    Some("bid") => Side::Bids,
                    Some("offer") => Side::Asks,
                    other => return Err(format!("{product}: update side {other:?}")),
                };
                let price = str_field(u, "price_level")?;
                let qty = size(str_field(u, "new_quantity")?)
                    .ok_or("\"new_quantity\" is not a number")?;
                if !state.book.set(side, price, qty, &mut patch) {
                    return Err(format!("{product}: price {price:?} is not a number"));
                }
            }
            if snapshot {
                state.synced = true;
                out.push(record(format!("book.{product}"), book::clear_data()));
                out.push(record(format!("book.{product}"), state.book.full_data()));
            } else if !patch.is_empty() {
                out.push(record(format!("book.{product}"), patch.into_data()));
            }
        }
        Ok(())
    }
}

fn events(v: &Value) -> Result<&Vec<Value>, String> {
    v.get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| "no array \"events\"".to_owned())
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no array {key:?}"))
}

impl ExchangeLogic for CoinbaseAdvanced {
    fn ws_url(&self, base: &str) -> String {
        base.to_owned()
    }

    fn on_connect(&mut self, out: &mut Vec<Action>) {
        for state in self.books.values_mut() {
            state.synced = false;
        }
        // A new connection numbers its messages afresh.
        self.expected = None;
        for channel in CHANNELS {
            out.push(subscribe("subscribe", &self.products, channel));
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
        let result = (|| {
            let channel = str_field(&value, "channel")?.to_owned();
            if channel == "error" || value.get("type").and_then(Value::as_str) == Some("error") {
                return Err(format!(
                    "upstream error: {}",
                    value.get("message").and_then(Value::as_str).unwrap_or("")
                ));
            }
            let sequence = u64_field(&value, "sequence_num")?;
            self.sequence(sequence, out);
            match channel.as_str() {
                "l2_data" => self.level2(&value, out),
                "ticker" | "ticker_batch" => self.tickers(&value, sequence, out),
                "market_trades" => self.trades(&value, sequence, out),
                "heartbeats" | "subscriptions" => Ok(()),
                other => Err(format!("channel {other:?} is not mapped")),
            }
        })();
        if let Err(e) = result {
            out.push(Action::Reject(RejectReason::Unmapped, e));
        }
    }

    fn on_snapshot(&mut self, _symbol: &str, _body: &str, _out: &mut Vec<Action>) {
        // Snapshots come on the WebSocket.
    }

    fn last_sequence(&self) -> Option<u64> {
        self.last_sequence
    }
}

#[cfg(test)]
mod tests;
