//! Coinbase Exchange market data (the `ws-feed` format), sans-IO.
//!
//! One connection per feed; after connecting it sends one subscribe for
//! `level2_batch` (the public level-2 channel; `level2` itself now needs
//! authentication, same messages), `ticker`, `matches` and `heartbeat` (so a
//! quiet market still sends something each second: the silence timeout
//! then means a dead connection).
//!
//! - `ticker` -> `quotes.<PRODUCT>`: `bid` (`best_bid`), `ask` (`best_ask`),
//!   `bid_size`/`ask_size` when sent, `sequence`, `exch_ts` (`time`).
//! - `match` / `last_match` -> `trades.<PRODUCT>`: `price`, `size`,
//!   `side` (the aggressor: Coinbase's `side` is the maker's, kept as
//!   `maker_side`), `id` (`trade_id`), `sequence`, `exch_ts`, and
//!   `last_match: true` for the match replayed on subscribing.
//! - `snapshot` + `l2update` -> `book.<PRODUCT>`: each snapshot publishes a
//!   clear then the full book; `l2update` changes (`buy` = bids, size 0
//!   deletes) are applied once a snapshot came. The level-2 messages carry
//!   no sequence number, so a lost message cannot be seen in them; the book
//!   is made afresh from a new snapshot on every (re)connection, and when an
//!   update cannot be applied (the product is resubscribed for a snapshot).
//!   Advanced Trade numbers its messages: see [`super::coinbase_advanced`].

use std::collections::HashMap;

use serde_json::{json, Value};

use super::book::{self, Book, Patch, Side};
use super::number::{decimal, rfc3339_utc_ns, size};
use super::{decimal_field, record, str_field, subscribed_name, u64_field, Action, ExchangeLogic};
use crate::record::{JsonMap, RejectReason};

/// The channel the books come from.
pub const LEVEL2_CHANNEL: &str = "level2_batch";

/// One product's book, in either Coinbase API.
pub(super) struct ProductBook {
    pub(super) book: Book,
    /// A snapshot has come since the last (re)subscription.
    pub(super) synced: bool,
}

/// An empty, unsynced book for each product, at most `depth` levels a side.
pub(super) fn product_books(products: &[String], depth: usize) -> HashMap<String, ProductBook> {
    products
        .iter()
        .map(|p| {
            let book = ProductBook {
                book: Book::new(depth),
                synced: false,
            };
            (p.clone(), book)
        })
        .collect()
}

pub struct Coinbase {
    products: Vec<String>,
    books: HashMap<String, ProductBook>,
    last_sequence: Option<u64>,
}

impl Coinbase {
    pub fn new(products: Vec<String>, depth: usize) -> Self {
        Self {
            books: product_books(&products, depth),
            products,
            last_sequence: None,
        }
    }

    fn product(&self, v: &Value) -> Result<String, String> {
        subscribed_name(&self.books, v, "product_id").map(str::to_owned)
    }

    fn note_sequence(&mut self, v: &Value) -> Option<u64> {
        let sequence = v.get("sequence").and_then(Value::as_u64);
        if sequence.is_some() {
            self.last_sequence = sequence;
        }
        sequence
    }

    fn ticker(&mut self, v: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        let product = self.product(v)?;
        let mut q = JsonMap::new();
        for (key, field, required) in [
            ("bid", "best_bid", true),
            ("bid_size", "best_bid_size", false),
            ("ask", "best_ask", true),
            ("ask_size", "best_ask_size", false),
        ] {
            match v.get(field).and_then(Value::as_str) {
                Some(text) => {
                    let n = decimal(text).ok_or_else(|| format!("{field:?} is not a number"))?;
                    q.insert(key.into(), n);
                }
                None if required => return Err(format!("no string {field:?}")),
                None => {}
            }
        }
        if let Some(sequence) = self.note_sequence(v) {
            q.insert("sequence".into(), sequence.into());
        }
        if let Some(ts) = v
            .get("time")
            .and_then(Value::as_str)
            .and_then(rfc3339_utc_ns)
        {
            q.insert("exch_ts".into(), ts.into());
        }
        out.push(record(format!("quotes.{product}"), q));
        Ok(())
    }

    fn trade(&mut self, v: &Value, last_match: bool, out: &mut Vec<Action>) -> Result<(), String> {
        let product = self.product(v)?;
        let maker_side = str_field(v, "side")?;
        let side = match maker_side {
            "buy" => "sell",
            "sell" => "buy",
            other => return Err(format!("side {other:?} is neither buy nor sell")),
        };
        let mut t = JsonMap::new();
        t.insert("price".into(), decimal_field(v, "price")?);
        t.insert("size".into(), decimal_field(v, "size")?);
        t.insert("side".into(), json!(side));
        t.insert("maker_side".into(), json!(maker_side));
        t.insert("id".into(), u64_field(v, "trade_id")?.into());
        if let Some(sequence) = self.note_sequence(v) {
            t.insert("sequence".into(), sequence.into());
        }
        if let Some(ts) = v
            .get("time")
            .and_then(Value::as_str)
            .and_then(rfc3339_utc_ns)
        {
            t.insert("exch_ts".into(), ts.into());
        }
        if last_match {
            t.insert("last_match".into(), json!(true));
        }
        out.push(record(format!("trades.{product}"), t));
        Ok(())
    }

    fn snapshot(&mut self, v: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        let product = self.product(v)?;
        let mut levels = Vec::new();
        for (side, key) in [(Side::Bids, "bids"), (Side::Asks, "asks")] {
            let list = v
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no array {key:?}"))?;
            for level in list {
                match level.as_array().map(Vec::as_slice) {
                    Some([Value::String(p), Value::String(q), ..]) => levels.push((side, p, q)),
                    _ => return Err(format!("a {key:?} level is not [\"price\",\"size\"]")),
                }
            }
        }
        let state = self.books.get_mut(&product).expect("checked product");
        state.book.clear();
        state.synced = false;
        let mut scratch = Patch::default();
        for (side, price, qty) in levels {
            let qty = size(qty).ok_or_else(|| format!("size {qty:?} is not a number"))?;
            if !state.book.set(side, price, qty, &mut scratch) {
                return Err(format!("price {price:?} is not a number"));
            }
        }
        state.synced = true;
        out.push(record(format!("book.{product}"), book::clear_data()));
        out.push(record(format!("book.{product}"), state.book.full_data()));
        Ok(())
    }

    fn l2update(&mut self, v: &Value, out: &mut Vec<Action>) -> Result<(), String> {
        let product = self.product(v)?;
        let changes = v
            .get("changes")
            .and_then(Value::as_array)
            .ok_or("no array \"changes\"")?;
        let state = self.books.get_mut(&product).expect("checked product");
        if !state.synced {
            return Ok(()); // before its snapshot: the snapshot will hold it
        }
        let mut patch = Patch::default();
        let mut failed = None;
        for change in changes {
            let applied = match change.as_array().map(Vec::as_slice) {
                Some([Value::String(side), Value::String(p), Value::String(q), ..]) => {
                    let side = match side.as_str() {
                        "buy" => Some(Side::Bids),
                        "sell" => Some(Side::Asks),
                        _ => None,
                    };
                    match (side, size(q)) {
                        (Some(side), Some(qty)) => state.book.set(side, p, qty, &mut patch),
                        _ => false,
                    }
                }
                _ => false,
            };
            if !applied {
                failed = Some(change.to_string());
                break;
            }
        }
        if let Some(change) = failed {
            // Part of it may be applied: get a fresh snapshot for this product.
            state.synced = false;
            out.push(Action::Reject(
                RejectReason::Unmapped,
                format!("{product} l2update: change {change} cannot be applied"),
            ));
            out.push(Action::Resync {
                symbol: product.clone(),
                why: "an l2update could not be applied".into(),
            });
            for kind in ["unsubscribe", "subscribe"] {
                out.push(Action::Send(subscribe_message(
                    kind,
                    std::slice::from_ref(&product),
                    &[LEVEL2_CHANNEL],
                )));
            }
            return Ok(());
        }
        if !patch.is_empty() {
            out.push(record(format!("book.{product}"), patch.into_data()));
        }
        Ok(())
    }
}

fn subscribe_message(kind: &str, products: &[String], channels: &[&str]) -> String {
    json!({"type": kind, "product_ids": products, "channels": channels}).to_string()
}

impl ExchangeLogic for Coinbase {
    fn ws_url(&self, base: &str) -> String {
        base.to_owned()
    }

    fn on_connect(&mut self, out: &mut Vec<Action>) {
        for state in self.books.values_mut() {
            state.synced = false;
        }
        let channels = [LEVEL2_CHANNEL, "ticker", "matches", "heartbeat"];
        out.push(Action::Send(subscribe_message(
            "subscribe",
            &self.products,
            &channels,
        )));
    }

    fn on_frame(&mut self, text: &str, out: &mut Vec<Action>) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                out.push(Action::Reject(RejectReason::InvalidJson, e.to_string()));
                return;
            }
        };
        let result = match value.get("type").and_then(Value::as_str) {
            Some("l2update") => self.l2update(&value, out),
            Some("snapshot") => self.snapshot(&value, out),
            Some("ticker") => self.ticker(&value, out),
            Some("match") => self.trade(&value, false, out),
            Some("last_match") => self.trade(&value, true, out),
            Some("heartbeat") => {
                self.note_sequence(&value);
                Ok(())
            }
            Some("subscriptions") => Ok(()),
            Some("error") => Err(format!(
                "upstream error: {} {}",
                value.get("message").and_then(Value::as_str).unwrap_or(""),
                value.get("reason").and_then(Value::as_str).unwrap_or("")
            )),
            Some(other) => Err(format!("message type {other:?} is not mapped")),
            None => Err("no \"type\"".to_owned()),
        };
        if let Err(e) = result {
            out.push(Action::Reject(RejectReason::Unmapped, e));
        }
    }

    fn on_snapshot(&mut self, _symbol: &str, _body: &str, _out: &mut Vec<Action>) {
        // Coinbase sends its snapshots on the WebSocket.
    }

    fn last_sequence(&self) -> Option<u64> {
        self.last_sequence
    }
}

#[cfg(test)]
mod tests;
