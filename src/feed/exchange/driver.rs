//! The async side of an exchange feed: one WebSocket at a time, REST
//! snapshots beside it, and the loop that keeps it connected.
//!
//! - Connect (with `limits.upstream_connect_timeout_ms`), then the logic's
//!   `on_connect` says what to send and fetch (the subscription).
//! - Each text frame goes to the logic; its actions are carried out in
//!   order. Pings are answered by tungstenite as the stream is read.
//! - Nothing received for `limits.upstream_silence_timeout_ms` (a silent
//!   exchange, or one that stalls mid-frame), an error, a close, or a frame
//!   over `limits.max_upstream_message_bytes`: the connection is dropped,
//!   the status goes `down` with the reason, and after a backoff delay
//!   (full jitter, `upstream_backoff_base_ms` doubling to
//!   `upstream_backoff_max_ms`) it is made again and resubscribed.
//! - Snapshots are fetched on their own tasks (one in flight per symbol), so
//!   a slow REST answer never stops the stream being read.

use std::collections::HashSet;
use std::io;

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::binance::Binance;
use super::coinbase::Coinbase;
use super::coinbase_advanced::CoinbaseAdvanced;
use super::rest::{self, GetError};
use super::status::{Status, STATUS_INTERVAL};
use super::{ws, Action, CoinbaseApi, Exchange, ExchangeLogic, Upstream};
use crate::feed::FeedOutput;
use crate::record::{RejectReason, Rejection};

/// Runs an exchange feed until `shutdown`.
pub async fn run(
    upstream: Upstream,
    out: FeedOutput,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let spec = &upstream.spec;
    let mut logic: Box<dyn ExchangeLogic> = match spec.exchange {
        Exchange::Binance => Box::new(Binance::new(
            spec.symbols.clone(),
            upstream.depth,
            spec.trades,
        )),
        Exchange::Coinbase if spec.api == CoinbaseApi::Advanced => {
            Box::new(CoinbaseAdvanced::new(spec.symbols.clone(), upstream.depth))
        }
        Exchange::Coinbase => Box::new(Coinbase::new(spec.symbols.clone(), upstream.depth)),
    };
    let mut conn = Connection {
        upstream: &upstream,
        out: &out,
        status: Status::new(spec.status_name(), spec.exchange.as_str()),
        backoff: Backoff::new(upstream.limits.backoff_base, upstream.limits.backoff_max),
        frames: 0,
    };
    let feed = out.stats().name.clone();
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            why = conn.session(logic.as_mut()) => why,
        };
        tracing::warn!(%feed, "upstream down: {why}; reconnecting after a backoff");
        conn.status.down(&why);
        conn.publish_status(logic.as_ref()).await;
        let delay = conn.backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        out.stats().count_reconnect();
    }
}

type Fetched = (
    String,
    Result<Result<String, GetError>, tokio::time::error::Elapsed>,
);

struct Connection<'a> {
    upstream: &'a Upstream,
    out: &'a FeedOutput,
    status: Status,
    backoff: Backoff,
    /// Frames received on this feed, over all connections (the `line` of a
    /// rejection).
    frames: u64,
}

impl Connection<'_> {
    async fn publish_status(&self, logic: &dyn ExchangeLogic) {
        if let Action::Publish(record) = self.status.record(self.out.stats(), logic.last_sequence())
        {
            self.out.send(record).await;
        }
    }

    fn reject(&self, reason: RejectReason, detail: String) {
        self.out.reject(Rejection {
            line: self.frames,
            reason,
            detail,
        });
    }

    /// One connection, from connecting to its end; returns why it ended.
    async fn session(&mut self, logic: &mut dyn ExchangeLogic) -> String {
        let limits = self.upstream.limits;
        let url = logic.ws_url(&self.upstream.ws_url);
        let feed = self.out.stats().name.clone();
        let ws = match tokio::time::timeout(
            limits.connect_timeout,
            ws::connect(&url, limits.max_message_bytes),
        )
        .await
        {
            Err(_) => {
                return format!(
                    "connecting took over {} ms (limits.upstream_connect_timeout_ms)",
                    limits.connect_timeout.as_millis()
                )
            }
            Ok(Err(e)) => return e,
            Ok(Ok(ws)) => ws,
        };
        tracing::info!(%feed, %url, "upstream connected");
        let (mut sink, mut stream) = ws.split();
        self.status.up("connected");
        self.publish_status(logic).await;
        let mut actions = Vec::new();
        logic.on_connect(&mut actions);
        let mut fetches: JoinSet<Fetched> = JoinSet::new();
        let mut fetching: HashSet<String> = HashSet::new();
        // At least four status updates per silence window, so a watcher
        // sees the counters move well before the feed would be declared silent.
        let mut status_tick =
            tokio::time::interval(STATUS_INTERVAL.min(limits.silence_timeout / 4));
        status_tick.tick().await;
        // Silence is measured from the last message, not from the last turn
        // of this loop (a status tick or a snapshot must not restart it).
        let mut silent_from = Instant::now();
        let mut delivered = false;
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Publish(record) => self.out.send(record).await,
                    Action::Reject(reason, detail) => self.reject(reason, detail),
                    Action::FetchSnapshot { symbol, path } => {
                        if fetching.insert(symbol.clone()) {
                            let url = format!("{}{path}", self.upstream.rest_url);
                            let timeout = limits.connect_timeout;
                            let max = limits.max_message_bytes;
                            fetches.spawn(async move {
                                let got = tokio::time::timeout(timeout, rest::get(&url, max)).await;
                                (symbol, got)
                            });
                        }
                    }
                    Action::Send(text) => {
                        let sent = tokio::time::timeout(
                            limits.connect_timeout,
                            sink.send(Message::text(text)),
                        )
                        .await;
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return format!("sending the subscription failed: {e}"),
                            Err(_) => return "sending the subscription timed out".to_owned(),
                        }
                    }
                    Action::Resync { symbol, why } => {
                        self.out.stats().count_resync();
                        tracing::warn!(%feed, %symbol, "order book out of sequence ({why}): re-synchronising");
                        self.publish_status(logic).await;
                    }
                    Action::Reconnect(why) => return why,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(silent_from + limits.silence_timeout) => {
                    return format!(
                        "nothing received for {} ms (limits.upstream_silence_timeout_ms)",
                        limits.silence_timeout.as_millis()
                    );
                }
                // Cancel-safe: a message half read stays in the stream.
                frame = stream.next() => {
                    let message = match frame {
                        None => return "the connection ended".to_owned(),
                        Some(Err(e)) => {
                            self.frames += 1;
                            return self.read_error(e);
                        }
                        Some(Ok(message)) => message,
                    };
                    silent_from = Instant::now();
                    match message {
                        Message::Text(text) => {
                            self.frames += 1;
                            if !delivered {
                                // Data flows: the next failure starts the backoff afresh.
                                delivered = true;
                                self.backoff.reset();
                            }
                            logic.on_frame(text.as_str(), &mut actions);
                        }
                        Message::Binary(_) => {
                            self.frames += 1;
                            self.reject(RejectReason::Unmapped, "a binary frame".into());
                        }
                        Message::Close(frame) => {
                            return match frame {
                                Some(f) => format!("closed by upstream ({} {})", f.code, f.reason),
                                None => "closed by upstream".to_owned(),
                            };
                        }
                        // tungstenite queues the pong and sends it as we read on.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
                Some(done) = fetches.join_next() => {
                    let (symbol, got) = match done {
                        Ok(done) => done,
                        Err(e) => return format!("a snapshot fetch failed: {e}"),
                    };
                    fetching.remove(&symbol);
                    match got {
                        Ok(Ok(body)) => logic.on_snapshot(&symbol, &body, &mut actions),
                        Ok(Err(GetError::TooLarge(max))) => {
                            self.reject(RejectReason::TooLong, format!("{symbol} snapshot over {max} bytes"));
                            return format!("the {symbol} snapshot is over {max} bytes (limits.max_upstream_message_bytes)");
                        }
                        Ok(Err(e)) => return format!("{symbol} snapshot: {e}"),
                        Err(_) => return format!("{symbol} snapshot: no answer within limits.upstream_connect_timeout_ms"),
                    }
                }
                _ = status_tick.tick() => self.publish_status(logic).await,
            }
        }
    }

    /// Counts what a read error says about the input, and says why the
    /// connection ends.
    fn read_error(&self, e: tungstenite::Error) -> String {
        use tungstenite::error::CapacityError;
        match e {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                self.reject(
                    RejectReason::TooLong,
                    format!("a {size}-byte message (limit {max_size})"),
                );
                format!(
                    "a {size}-byte message is over limits.max_upstream_message_bytes ({max_size})"
                )
            }
            tungstenite::Error::Capacity(other) => {
                self.reject(RejectReason::TooLong, other.to_string());
                format!("upstream message too large: {other}")
            }
            tungstenite::Error::Utf8 => {
                self.reject(RejectReason::InvalidUtf8, "a text frame".to_owned());
                "a text frame was not UTF-8".to_owned()
            }
            other => format!("reading failed: {other}"),
        }
    }
}
