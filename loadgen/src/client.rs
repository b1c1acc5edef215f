//! One simulated subscriber: connect, subscribe, read until told to stop, close cleanly.
//!
//! Each client is one tokio task that owns both halves of its socket. The frame read is never
//! cancelled part-way (fastwebsockets' `read_frame` is not cancel-safe): when the stop signal
//! arrives while a read is pending, the client sends its close frame on the write half and
//! keeps awaiting the *same* read future until the server's close answer (or the close
//! timeout). Pings and closes are answered here, since the reader's automatic replies are off.
//!
//! Every update goes through the gap detector in `chain.rs`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, timeout_at};

use crate::chain::{Chains, Link};
use crate::scan::{scan, Kind, Msg};
use crate::stats::{Clock, Counters, LatencyFrom, Recorder, Stamps, Window};
use crate::ws::{self, ConnectError, Target};

/// What all clients share: where to connect, what to send, where to record.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    pub clock: Clock,
    pub from: LatencyFrom,
    pub window: Window,
    pub recorder: Recorder,
    pub counters: Counters,
    pub fields: Vec<String>,
    pub max_hz: Option<f64>,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub max_reconnects: u32,
    /// Set when the run is closing: a connection lost now is not reconnected.
    pub ending: AtomicBool,
    /// Per client id: it got `subscribed`. Read when the run ends, also for
    /// a client cut off while still reading: its deliveries are received,
    /// so they are expected too.
    pub subscribed: Box<[AtomicBool]>,
    pub notes: Mutex<Notes>,
}

/// Samples and rare figures gathered under one lock (touched per connection, never per message).
#[derive(Debug)]
pub struct Notes {
    /// TCP connect + upgrade, in ns.
    pub connect_ns: Histogram<u64>,
    /// Upgrade done to `subscribed` received, in ns.
    pub subscribe_ns: Histogram<u64>,
    pub connect_errors: std::collections::BTreeMap<&'static str, u64>,
    /// The first few connect and server error messages, verbatim.
    pub error_samples: Vec<String>,
    pub gap_examples: Vec<GapExample>,
    pub server_header: Option<String>,
}

impl Default for Notes {
    fn default() -> Self {
        Notes {
            connect_ns: crate::stats::new_histogram(),
            subscribe_ns: crate::stats::new_histogram(),
            connect_errors: Default::default(),
            error_samples: Vec::new(),
            gap_examples: Vec::new(),
            server_header: None,
        }
    }
}

const MAX_SAMPLES: usize = 20;

impl Notes {
    pub(crate) fn sample(&mut self, text: String) {
        if self.error_samples.len() < MAX_SAMPLES {
            self.error_samples.push(text);
        }
    }
}

/// One unannounced gap, as seen by one client.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GapExample {
    pub client: usize,
    pub channel: String,
    pub held_seq: u64,
    pub prev: u64,
    pub seq: u64,
}

/// How one connection ended.
enum End {
    /// The run ended and the close handshake was done (or timed out).
    Stopped,
    /// The server closed (code) or the connection broke (message) before the run ended.
    Lost(String),
}

/// Resolves once, when the run ends; afterwards it stays resolved.
pub struct Stop(Option<oneshot::Receiver<()>>);

impl Stop {
    pub fn new(rx: oneshot::Receiver<()>) -> Stop {
        Stop(Some(rx))
    }

    pub(crate) async fn wait(&mut self) {
        if let Some(rx) = &mut self.0 {
            let _ = rx.await;
            self.0 = None;
        }
    }

    fn fired(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(rx) => match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => false,
                _ => {
                    self.0 = None;
                    true
                }
            },
        }
    }
}

/// Client `id`: subscribes to `channels`, connecting from `source` if given.
pub async fn run(
    shared: Arc<Shared>,
    id: usize,
    channels: Vec<String>,
    source: Option<IpAddr>,
    mut stop: Stop,
) {
    let mut me = Client {
        shared,
        id,
        chains: Chains::default(),
        subscribed: false,
        settled: false,
        epoch: None,
    };
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let conn = tokio::select! {
            r = timeout(me.shared.connect_timeout, ws::connect(&me.shared.target, source)) => {
                r.unwrap_or(Err(ConnectError::Timeout))
            }
            _ = stop.wait() => break,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                me.note_connect_error(&e, attempt);
                if attempt == 0 || attempt >= me.shared.max_reconnects {
                    break;
                }
                attempt += 1;
                if me.backoff(attempt, &mut stop).await {
                    break;
                }
                continue;
            }
        };
        me.note_connected(started.elapsed(), conn.server.clone(), attempt);
        let end = me.session(conn, &channels, attempt > 0, &mut stop).await;
        match end {
            End::Stopped => break,
            End::Lost(why) => {
                Counters::bump(&me.shared.counters.disconnects);
                me.shared
                    .notes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sample(format!("client {} lost its connection: {why}", me.id));
                if me.shared.ending.load(Relaxed) || attempt >= me.shared.max_reconnects {
                    break;
                }
                attempt += 1;
                Counters::bump(&me.shared.counters.reconnects);
                if me.backoff(attempt, &mut stop).await {
                    break;
                }
            }
        }
    }
    me.settle();
    Counters::bump(&me.shared.counters.finished);
}

/// The `subscribe` request (id 1) for `channels`, with the run's fields and max_hz.
pub(crate) fn subscribe_request(shared: &Shared, channels: &[String]) -> serde_json::Value {
    let mut msg = serde_json::json!({"op": "subscribe", "id": 1, "channels": channels});
    if !shared.fields.is_empty() {
        msg["fields"] = serde_json::json!(shared.fields);
    }
    if let Some(hz) = shared.max_hz {
        msg["max_hz"] = serde_json::json!(hz);
    }
    msg
}

/// Counts a client in `Counters::settled`, once.
fn settle(settled: &mut bool, counters: &Counters) {
    if !*settled {
        *settled = true;
        Counters::bump(&counters.settled);
    }
}

struct Client {
    shared: Arc<Shared>,
    id: usize,
    chains: Chains,
    subscribed: bool,
    /// Counted in `Counters::settled` (subscribed, refused, or given up).
    settled: bool,
    epoch: Option<String>,
}

impl Client {
    fn settle(&mut self) {
        settle(&mut self.settled, &self.shared.counters);
    }

    fn note_connect_error(&self, e: &ConnectError, attempt: u32) {
        let mut notes = self.shared.notes.lock().unwrap_or_else(|e| e.into_inner());
        *notes.connect_errors.entry(e.kind()).or_default() += 1;
        notes.sample(format!(
            "client {} connecting to {}: {e}",
            self.id, self.shared.target.url
        ));
        if attempt == 0 {
            Counters::bump(&self.shared.counters.connect_failed);
        }
    }

    fn note_connected(&self, took: Duration, server: Option<String>, attempt: u32) {
        let mut notes = self.shared.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.connect_ns.saturating_record(took.as_nanos() as u64);
        if notes.server_header.is_none() {
            notes.server_header = server;
        }
        if attempt == 0 {
            Counters::bump(&self.shared.counters.connected);
        }
    }

    /// Waits before reconnect `attempt`; `true` if the run ended meanwhile.
    async fn backoff(&self, attempt: u32, stop: &mut Stop) -> bool {
        let pause = Duration::from_millis(100 * u64::from(attempt.min(10)));
        tokio::select! {
            _ = sleep(pause) => stop.fired(),
            _ = stop.wait() => true,
        }
    }

    fn subscribe_message(&self, channels: &[String], resume: bool) -> String {
        let mut msg = subscribe_request(&self.shared, channels);
        if resume {
            let since: serde_json::Map<String, serde_json::Value> = self
                .chains
                .since()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            msg["since"] = serde_json::Value::Object(since);
            if let Some(epoch) = &self.epoch {
                msg["epoch"] = serde_json::json!(epoch);
            }
        }
        msg.to_string()
    }

    async fn session(
        &mut self,
        conn: ws::Conn,
        channels: &[String],
        resume: bool,
        stop: &mut Stop,
    ) -> End {
        let ws::Conn {
            mut read,
            mut write,
            ..
        } = conn;
        let upgraded = Instant::now();
        let sub = self.subscribe_message(channels, resume);
        if let Err(e) = write
            .write_frame(Frame::text(Payload::Owned(sub.into_bytes())))
            .await
        {
            return End::Lost(format!("sending the subscription: {e}"));
        }
        let mut closing: Option<tokio::time::Instant> = None;
        let mut partial: Vec<u8> = Vec::new();
        let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
        loop {
            let read_fut = read.read_frame(&mut no_obligations);
            tokio::pin!(read_fut);
            let result = match closing {
                Some(deadline) => timeout_at(deadline, read_fut).await,
                None => tokio::select! {
                    biased;
                    r = &mut read_fut => Ok(r),
                    _ = stop.wait() => {
                        let deadline = tokio::time::Instant::now() + self.shared.close_timeout;
                        closing = Some(deadline);
                        if write.write_frame(Frame::close(1000, b"run over")).await.is_err() {
                            return End::Stopped;
                        }
                        timeout_at(deadline, read_fut).await
                    }
                },
            };
            let frame = match result {
                Err(_elapsed) => {
                    Counters::bump(&self.shared.counters.close_timeouts);
                    return End::Stopped;
                }
                Ok(Err(e)) if closing.is_some() => {
                    // The server dropped the socket instead of answering the close: done anyway.
                    let _ = e;
                    return End::Stopped;
                }
                Ok(Err(e)) => return End::Lost(format!("read failed: {e}")),
                Ok(Ok(frame)) => frame,
            };
            match frame.opcode {
                OpCode::Text if frame.fin => self.on_message(&frame.payload, upgraded),
                OpCode::Text => partial = frame.payload.to_vec(),
                OpCode::Continuation => {
                    partial.extend_from_slice(&frame.payload);
                    if frame.fin {
                        self.on_message(&partial, upgraded);
                        partial = Vec::new();
                    }
                }
                OpCode::Ping => {
                    if closing.is_none() {
                        let _ = write.write_frame(Frame::pong(frame.payload)).await;
                    }
                }
                OpCode::Close => {
                    if closing.is_some() {
                        Counters::bump(&self.shared.counters.closed_clean);
                        return End::Stopped;
                    }
                    let code = match &frame.payload[..] {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    if code == 1013 {
                        Counters::bump(&self.shared.counters.slow_consumer_closes);
                    }
                    let _ = write.write_frame(Frame::close(code.max(1000), b"")).await;
                    let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or(&[]));
                    return End::Lost(format!("server closed with code {code} {reason}"));
                }
                OpCode::Binary | OpCode::Pong => {}
            }
        }
    }

    fn on_message(&mut self, payload: &[u8], upgraded: Instant) {
        let sh = &*self.shared;
        let recv_ns = sh.clock.now_ns();
        let msg = match scan(payload) {
            Ok(msg) => msg,
            Err(e) => return self.malformed(payload, &e.to_string()),
        };
        match msg.kind {
            Kind::Update => self.on_update(&msg, recv_ns, payload.len()),
            Kind::Snapshot => match (msg.channel, msg.seq) {
                (Some(ch), Some(seq)) => {
                    self.chains.on_snapshot(ch, seq);
                    Counters::bump(&sh.counters.snapshots);
                    if msg.resync {
                        Counters::bump(&sh.counters.resyncs);
                    }
                    if let Some(epoch) = msg.epoch {
                        if self.epoch.as_deref() != Some(epoch) {
                            self.epoch = Some(epoch.to_string());
                        }
                    }
                }
                _ => self.malformed(payload, "snapshot without channel or seq"),
            },
            Kind::Subscribed if !self.subscribed => {
                self.subscribed = true;
                if let Some(flag) = sh.subscribed.get(self.id) {
                    flag.store(true, Relaxed);
                }
                settle(&mut self.settled, &sh.counters);
                Counters::bump(&sh.counters.subscribed);
                let mut notes = sh.notes.lock().unwrap_or_else(|e| e.into_inner());
                notes
                    .subscribe_ns
                    .saturating_record(upgraded.elapsed().as_nanos() as u64);
            }
            Kind::Error => {
                Counters::bump(&sh.counters.server_errors);
                if !self.subscribed && msg.id == Some(1) {
                    Counters::bump(&sh.counters.subscribe_failed);
                    settle(&mut self.settled, &sh.counters);
                }
                let text = String::from_utf8_lossy(payload);
                let mut notes = sh.notes.lock().unwrap_or_else(|e| e.into_inner());
                notes.sample(format!("client {} got a server error: {text}", self.id));
            }
            Kind::Subscribed | Kind::Unsubscribed | Kind::Pong | Kind::Other => {}
        }
    }

    fn on_update(&mut self, msg: &Msg<'_>, recv_ns: u64, len: usize) {
        let sh = &*self.shared;
        let (Some(channel), Some(seq), Some(prev)) = (msg.channel, msg.seq, msg.prev) else {
            return self.malformed(b"", "update without channel, seq or prev");
        };
        match self.chains.on_update(channel, seq, prev) {
            Link::Chained => {}
            Link::Started => Counters::bump(&sh.counters.chains_from_update),
            Link::Gap { held } => {
                Counters::bump(&sh.counters.gaps);
                let mut notes = sh.notes.lock().unwrap_or_else(|e| e.into_inner());
                if notes.gap_examples.len() < MAX_SAMPLES {
                    notes.gap_examples.push(GapExample {
                        client: self.id,
                        channel: channel.to_string(),
                        held_seq: held,
                        prev,
                        seq,
                    });
                }
            }
        }
        let stamps = Stamps {
            sent_ns: msg.sent_ns,
            act_ns: msg.act_ns,
            ts: msg.ts,
        };
        sh.recorder
            .with_local(|t| t.record(sh.from, &sh.window, recv_ns, len, stamps));
    }

    fn malformed(&self, payload: &[u8], why: &str) {
        Counters::bump(&self.shared.counters.malformed);
        let head = String::from_utf8_lossy(&payload[..payload.len().min(200)]);
        let mut notes = self.shared.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.sample(format!(
            "client {}: unreadable message ({why}): {head}",
            self.id
        ));
    }
}
