//! The `feeds.<name>` status channel of an exchange feed, published through
//! the same ring as its data so clients subscribe to it like any channel:
//!
//! `{"exchange":"binance","state":"up"|"down","reason":"...","since":<ns>,
//!   "records":N,"rejects":N,"sequence":<last upstream id>|null,
//!   "reconnects":N,"resyncs":N}`
//!
//! It is published on every change of state, on every book re-sync, and
//! every [`STATUS_INTERVAL`] (or a quarter of the silence timeout, if
//! shorter) while the feed is connected. While a feed is down its data
//! channels keep their last state (nothing is cleared); a book is replaced
//! by a clear and a full snapshot once the feed is back in step.

use std::time::Duration;

use serde_json::{json, Value};

use super::{record, Action};
use crate::clock;
use crate::feed::FeedStats;
use crate::record::JsonMap;

/// How often an up feed's counters are published.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Status {
    channel: String,
    exchange: &'static str,
    up: bool,
    reason: String,
    since: u64,
}

impl Status {
    pub fn new(name: &str, exchange: &'static str) -> Self {
        Self {
            channel: format!("feeds.{name}"),
            exchange,
            up: false,
            reason: "connecting".into(),
            since: clock::unix_nanos(),
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn up(&mut self, reason: &str) {
        self.up = true;
        self.reason = reason.to_owned();
        self.since = clock::unix_nanos();
    }

    pub fn down(&mut self, reason: &str) {
        if self.up {
            self.since = clock::unix_nanos();
        }
        self.up = false;
        self.reason = reason.to_owned();
    }

    /// The status as a record to publish.
    pub fn record(&self, stats: &FeedStats, sequence: Option<u64>) -> Action {
        let mut data = JsonMap::new();
        data.insert("exchange".into(), json!(self.exchange));
        data.insert("state".into(), json!(if self.up { "up" } else { "down" }));
        data.insert("reason".into(), json!(self.reason));
        data.insert("since".into(), json!(self.since));
        // The status record being made is counted too.
        data.insert("records".into(), json!(stats.accepted() + 1));
        data.insert("rejects".into(), json!(stats.rejected_total()));
        data.insert("sequence".into(), sequence.map_or(Value::Null, Value::from));
        // The same counters as /metrics (tickcast_feed_reconnects_total, ...).
        data.insert("reconnects".into(), json!(stats.reconnects()));
        data.insert("resyncs".into(), json!(stats.resyncs()));
        record(self.channel.clone(), data)
    }
}
