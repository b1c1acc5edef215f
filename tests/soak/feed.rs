//! The soak's own producer on the `tcp:` feed, and the oracle for what it
//! produces.
//!
//! Record `k` (1-based) of a channel is a pure function of `k`, and the one
//! producer connection sends each channel's records in order, so the server
//! applies record `k` as seq `k`: a client can check the state it built at
//! every seq it reaches, not only at the end. A lost, doubled or misapplied
//! update is caught where it happens, whatever the seq jumps that `fields`,
//! `max_hz` or coalescing cause.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `merge` channels `soak.k0` .. `soak.k15`.
pub const MERGE_CHANNELS: usize = 16;
/// `stream` channels `trades.t0` .. `trades.t3`.
pub const STREAM_CHANNELS: usize = 4;
/// Size of the filler in each stream event: large enough that a stalled
/// reader reaches its outbound bound within seconds.
const PAD: usize = 600;

pub fn merge_channel(i: usize) -> String {
    format!("soak.k{i}")
}

pub fn stream_channel(i: usize) -> String {
    format!("trades.t{i}")
}

pub fn all_channels() -> Vec<String> {
    (0..MERGE_CHANNELS)
        .map(merge_channel)
        .chain((0..STREAM_CHANNELS).map(stream_channel))
        .collect()
}

/// Whether `channel` is fed by this producer (and so has an oracle). Only
/// its numbered names: the synthetic feed has `trades.*` channels of its
/// own (`trades.AAPL`).
pub fn is_ours(channel: &str) -> bool {
    let numbered = |prefix: &str| {
        channel
            .strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    numbered("soak.k") || numbered("trades.t")
}

pub fn is_stream(channel: &str) -> bool {
    channel.starts_with("trades.")
}

/// Record `k`'s merge patch for `channel`.
pub fn patch(channel: &str, k: u64) -> Value {
    if is_stream(channel) {
        return json!({"n": k, "px": k * 2, "pad": "x".repeat(PAD)});
    }
    let mut p = json!({"n": k, "g": if k.is_multiple_of(5) { Value::Null } else { json!(k) }});
    p[format!("f{}", k % 4)] = json!(k);
    if k.is_multiple_of(3) {
        p["o"] = json!({"a": k});
    }
    p
}

/// The channel's state after records 1..=`seq`.
pub fn state(channel: &str, seq: u64) -> Value {
    if seq == 0 {
        return json!({});
    }
    if is_stream(channel) {
        return patch(channel, seq);
    }
    let mut s = Map::new();
    s.insert("n".into(), json!(seq));
    if !seq.is_multiple_of(5) {
        s.insert("g".into(), json!(seq));
    }
    for j in 0..4u64 {
        // The latest k <= seq with k % 4 == j.
        let back = (seq % 4 + 4 - j) % 4;
        if seq >= back && seq - back >= 1 {
            s.insert(format!("f{j}"), json!(seq - back));
        }
    }
    if seq >= 3 {
        s.insert("o".into(), json!({"a": seq - seq % 3}));
    }
    Value::Object(s)
}

/// `state` keeps only the top-level members in `fields` (all when None).
pub fn restrict(state: &Value, fields: Option<&[String]>) -> Value {
    match (state, fields) {
        (Value::Object(map), Some(fields)) => Value::Object(
            map.iter()
                .filter(|(k, _)| fields.iter().any(|f| f == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => state.clone(),
    }
}

/// Lines the producer slips in between good records: each must be rejected
/// on its own, with everything around it still applied.
fn bad_line(i: u64) -> Vec<u8> {
    match i % 9 {
        0 => b"{\"channel\":\"soak.k0\",\"data\":".to_vec(),
        1 => b"not json at all".to_vec(),
        2 => b"{\"data\":{\"n\":1}}".to_vec(),
        3 => b"{\"channel\":\"soak..bad\",\"data\":{\"n\":1}}".to_vec(),
        4 => b"{\"channel\":\"soak.*\",\"data\":{\"n\":1}}".to_vec(),
        5 => b"{\"channel\":\"soak.k1\",\"data\":[1,2]}".to_vec(),
        6 => b"{\"channel\":\"soak.k2\",\"data\":{\"n\":1},\"ts\":-5}".to_vec(),
        7 => vec![0xff, 0xfe, b'{', 0, 0, b'}'],
        _ => {
            // Deeper than anything real, well within every size limit.
            let depth = 100;
            let mut line = b"{\"channel\":\"soak.k3\",\"data\":{\"x\":".to_vec();
            line.extend(std::iter::repeat_n(b'[', depth));
            line.extend(std::iter::repeat_n(b']', depth));
            line.extend(b"},\"ts\":\"no\"}");
            line
        }
    }
}

/// What the producer sent: the last record number per channel.
pub type Sent = HashMap<String, u64>;

pub struct Producer {
    addr: SocketAddr,
    stream: TcpStream,
    pub sent: Sent,
    bad: u64,
}

impl Producer {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("producer connects");
        Self {
            addr,
            stream,
            sent: all_channels().into_iter().map(|c| (c, 0)).collect(),
            bad: 0,
        }
    }

    async fn write(&mut self, line: &[u8]) {
        self.stream.write_all(line).await.expect("producer writes");
        self.stream.write_all(b"\n").await.expect("producer writes");
    }

    /// Sends the next record of `channel`.
    pub async fn next(&mut self, channel: &str) {
        let k = self.sent[channel] + 1;
        self.sent.insert(channel.to_owned(), k);
        let line = json!({"channel": channel, "data": patch(channel, k)}).to_string();
        self.write(line.as_bytes()).await;
    }

    /// `rounds` records on every channel, back to back (fills histories).
    pub async fn burst(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for channel in all_channels() {
                self.next(&channel).await;
            }
        }
    }

    /// Connects again if the server hung up on an idle producer (a feed may
    /// time idle producers out): nothing was sent since, so nothing is lost.
    async fn reconnect_if_closed(&mut self) {
        let mut probe = [0u8; 1];
        let closed = match self.stream.try_read(&mut probe) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        if closed {
            self.stream = TcpStream::connect(self.addr)
                .await
                .expect("producer connects again");
        }
    }

    /// One record every `every`, round robin over the channels, and one bad
    /// line per `bad_every` records, until `stop`.
    pub async fn run(&mut self, every: Duration, bad_every: u64, stop: CancellationToken) {
        self.reconnect_if_closed().await;
        let channels = all_channels();
        let mut tick = tokio::time::interval(every);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.next(&channels[n as usize % channels.len()]).await;
            n += 1;
            if n.is_multiple_of(bad_every) {
                let line = bad_line(self.bad);
                self.bad += 1;
                self.write(&line).await;
            }
        }
        self.stream.flush().await.expect("producer flushes");
    }

    pub fn bad_lines(&self) -> u64 {
        self.bad
    }
}

#[test]
fn the_oracle_matches_applying_the_patches() {
    let mut applied = json!({});
    for channel in ["soak.k0", "trades.t0"] {
        for k in 1..=50 {
            crate::common::merge(&mut applied, &patch(channel, k));
            assert_eq!(applied, state(channel, k), "{channel} at {k}");
        }
        applied = json!({});
    }
}
