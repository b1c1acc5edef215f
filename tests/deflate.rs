//! permessage-deflate (RFC 7692) over real sockets: what the handshake
//! agrees to, a compressed client seeing exactly what an uncompressed one
//! sees, the size threshold, and compressed client messages (a bomb too).
//!
//! tokio-tungstenite does not speak permessage-deflate, so the compressed
//! client here is a raw socket with flate2 doing what a browser's inflater
//! does; the uncompressed client is tokio-tungstenite (`common::Client`).

mod common;
mod rawws;

use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

use common::*;
use rawws::{RawWs, ServerFrame, OP_CLOSE, OP_TEXT};

/// The tail a sync flush ends with, dropped on the wire (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server answers a browser's offer with, by default.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A client over a raw socket that may offer permessage-deflate.
struct DeflateClient {
    raw: RawWs,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    agreed: Option<String>,
}

impl DeflateClient {
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> Self {
        let raw = RawWs::connect_offering(addr, offer).await;
        let agreed = raw.extensions.clone();
        Self { raw, agreed }
    }

    /// The next frame; `None` at the end of the stream.
    async fn frame(&mut self) -> Option<ServerFrame> {
        let frame = self.raw.next_frame().await?;
        assert!(frame.fin, "the server sends whole messages");
        Some(frame)
    }

    /// The next text message, inflated if it came compressed, with whether
    /// it did; control frames are skipped.
    async fn message(&mut self) -> (String, bool) {
        loop {
            let frame = self.frame().await.expect("a message before the end");
            if frame.opcode != OP_TEXT {
                assert!(!frame.rsv1, "RSV1 on a control frame");
                assert_ne!(frame.opcode, OP_CLOSE, "closed: {frame:?}");
                continue;
            }
            assert!(
                !frame.rsv1 || self.agreed.is_some(),
                "RSV1 without the extension"
            );
            let text = if frame.rsv1 {
                inflate(&frame.payload)
            } else {
                frame.payload
            };
            return (String::from_utf8(text).expect("UTF-8"), frame.rsv1);
        }
    }

    async fn send(&mut self, first: u8, payload: &[u8]) {
        self.raw.send_frame(first, payload).await;
    }

    /// Skips to the close frame; its code.
    async fn close_code(&mut self) -> u16 {
        self.raw.expect_close().await.0
    }
}

/// A compressed message as a browser inflates it, on its own (the server
/// agreed to no context takeover).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    let mut inflater = Decompress::new(false);
    inflater
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate data");
    assert_eq!(
        inflater.total_in(),
        input.len() as u64,
        "all of it inflated"
    );
    out
}

/// The first 300 records of the recorded Coinbase feed (two books, quotes,
/// trades), then `quotes.end` to say they are all in.
async fn replay_coinbase(feed: SocketAddr) {
    let recorded =
        include_str!("../feeds/coinbase-advanced-trade_2026-08-09_BTC-USD-ETH-USD.ndjson");
    let mut producer = Producer::connect(feed).await;
    for line in recorded.lines().take(300) {
        producer.send_line(line).await;
    }
    producer.publish("quotes.end", json!({"done": true})).await;
}

/// A message compressed as a client sends it (RSV1 and this payload).
fn deflate(message: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    c.compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

#[tokio::test]
async fn the_handshake_agrees_to_what_the_server_can_honour_and_declines_the_rest() {
    let server = start_server(&[], |_| {}).await;
    let cases: &[(Option<&str>, Option<&str>)] = &[
        (None, None),
        // Chromium's offer; Firefox's.
        (
            Some("permessage-deflate; client_max_window_bits"),
            Some(ACCEPTED),
        ),
        (Some("permessage-deflate"), Some(ACCEPTED)),
        // A server window the client asks for is honoured and said.
        (
            Some("permessage-deflate; server_max_window_bits=10"),
            Some(
                "permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover; server_max_window_bits=10",
            ),
        ),
        (
            Some("permessage-deflate; server_max_window_bits=15"),
            Some(
                "permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover; server_max_window_bits=15",
            ),
        ),
        // Out of RFC 7692's range, unknown, repeated, or malformed: declined.
        (Some("permessage-deflate; server_max_window_bits=7"), None),
        (Some("permessage-deflate; client_max_window_bits=16"), None),
        (Some("permessage-deflate; client_max_window_bits=x"), None),
        (Some("permessage-deflate; mystery_param"), None),
        (
            Some("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            None,
        ),
        (Some("x-webkit-deflate-frame"), None),
        // The first acceptable offer wins.
        (
            Some("permessage-deflate; mystery_param, permessage-deflate"),
            Some(ACCEPTED),
        ),
    ];
    for (offer, want) in cases {
        let mut client = DeflateClient::connect(server.addr, *offer).await;
        assert_eq!(client.agreed.as_deref(), *want, "offer {offer:?}");
        // Declined or not, the connection works (uncompressed if declined).
        client
            .send(0x80 | OP_TEXT, br#"{"op":"ping","id":1}"#)
            .await;
        let (reply, _) = client.message().await;
        assert_eq!(
            serde_json::from_str::<Value>(&reply).unwrap(),
            json!({"type":"pong","id":1})
        );
    }

    let off = start_server(&[], |s| s.limits.compression.enabled = false).await;
    let client = DeflateClient::connect(off.addr, Some("permessage-deflate")).await;
    assert_eq!(client.agreed, None, "compression.enabled = false declines");
}

/// Real recorded quotes, trades and book levels, through a `tcp:` feed to a compressed
/// and an uncompressed client: every message the compressed one inflates
/// is byte for byte what the other receives, large frames come compressed
/// and small ones (under `compression.min_bytes`) plain, even when deflate
/// would shrink them.
#[tokio::test]
async fn a_compressed_client_sees_exactly_the_uncompressed_stream() {
    const MIN_BYTES: usize = 300;
    let (server, feed) = start_with_tcp_feed(|s| s.limits.compression.min_bytes = MIN_BYTES).await;
    let mut plain = Client::connect(server.addr).await;
    let mut packed = DeflateClient::connect(server.addr, Some("permessage-deflate")).await;
    assert!(packed.agreed.is_some());
    let subscribe = r#"{"op":"subscribe","id":1,"channels":["quotes.*","trades.*","book.*"]}"#;
    plain.send_text(subscribe).await;
    packed.send(0x80 | OP_TEXT, subscribe.as_bytes()).await;
    let subscribed = plain.recv().await;
    assert_eq!(subscribed["type"], "subscribed");
    let (reply, _) = packed.message().await;
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap(), subscribed);

    let recorded =
        include_str!("../feeds/coinbase-advanced-trade_2026-08-09_BTC-USD-ETH-USD.ndjson");
    let lines: Vec<&str> = recorded.lines().take(300).collect();
    let mut producer = Producer::connect(feed).await;
    for line in &lines {
        producer.send_line(line).await;
    }
    // Under the threshold, though it would compress well; then the end.
    producer.publish("quotes.tiny", json!({"x": 1})).await;
    producer
        .publish("quotes.tiny", json!({"x": "a".repeat(100)}))
        .await;
    producer.publish("quotes.end", json!({"done": true})).await;

    let (mut compressed, mut tiny_plain) = (0, false);
    // Frames at or over the threshold: deflate shrinks real JSON this
    // size (docs/benchmarks.md), so they should all come compressed.
    let (mut eligible, mut eligible_compressed) = (0, 0);
    let mut count = 0;
    loop {
        let want = match plain.next().await {
            tokio_tungstenite::tungstenite::Message::Text(text) => text.to_string(),
            other => panic!("expected text, got {other:?}"),
        };
        let (got, rsv1) = packed.message().await;
        assert_eq!(got, want, "message {count} differs");
        count += 1;
        let payload_len = got.len();
        if rsv1 {
            compressed += 1;
            assert!(
                payload_len >= MIN_BYTES,
                "a {payload_len}-byte payload came compressed"
            );
        }
        if payload_len >= MIN_BYTES {
            eligible += 1;
            eligible_compressed += usize::from(rsv1);
        }
        if got.contains(r#""channel":"quotes.tiny","seq":2"#) {
            assert!(payload_len < MIN_BYTES && got.contains("aaaaaaaaaa"));
            assert!(!rsv1, "a small diff goes plain (RSV1 clear)");
            tiny_plain = true;
        }
        if got.contains("quotes.end") {
            break;
        }
    }
    assert!(count > lines.len() / 2, "{count} messages");
    assert!(tiny_plain, "the small diff arrived");
    assert!(compressed >= 20, "{compressed} of {count} came compressed");
    assert_eq!(eligible_compressed, eligible, "frames over the threshold");
    // /metrics: every compressed frame sent, each compressed once.
    let stats = server.engine.stats();
    assert_eq!(stats.frames_deflated, compressed as u64);
    assert_eq!(stats.frames_compressed, eligible as u64);
}

/// A snapshot is a frame like any other: a subscriber that agreed to
/// compression gets it compressed, inflating to exactly the plain
/// subscriber's snapshot, and every such subscriber gets the same bytes
/// (that they are compressed once per seq is `engine::cell`'s unit test).
#[tokio::test]
async fn snapshots_come_compressed_once_for_every_compressed_subscriber() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    replay_coinbase(feed).await;
    // One feed, applied in order: the books are whole once this is there.
    wait_for_channel(&server, "quotes.end").await;

    let subscribe = r#"{"op":"subscribe","id":1,"channels":["book.BTC-USD"]}"#;
    let mut plain = Client::connect(server.addr).await;
    plain.send_text(subscribe).await;
    assert_eq!(plain.recv().await["type"], "subscribed");
    let want = plain.recv().await;
    assert_eq!(want["type"], "snapshot");
    let plain_len = serde_json::to_string(&want).unwrap().len();
    assert!(
        plain_len > 2_000,
        "a book-sized snapshot: {plain_len} bytes"
    );

    let mut payloads = Vec::new();
    for _ in 0..2 {
        let mut packed = DeflateClient::connect(server.addr, Some("permessage-deflate")).await;
        packed.send(0x80 | OP_TEXT, subscribe.as_bytes()).await;
        let (reply, _) = packed.message().await;
        assert!(reply.contains(r#""type":"subscribed""#), "{reply}");
        let frame = loop {
            let frame = packed.frame().await.expect("the snapshot");
            if frame.opcode == OP_TEXT {
                break frame;
            }
        };
        assert!(frame.rsv1, "the snapshot came plain");
        let got: Value = serde_json::from_slice(&inflate(&frame.payload)).unwrap();
        assert_eq!(got, want, "the inflated snapshot differs");
        assert!(
            frame.payload.len() * 2 < plain_len,
            "{} compressed bytes for a {plain_len}-byte snapshot",
            frame.payload.len()
        );
        payloads.push(frame.payload);
    }
    assert_eq!(
        payloads[0], payloads[1],
        "both got the same compressed bytes"
    );
}

/// Compressed client messages are understood; one that inflates past
/// `limits.max_message_bytes` is closed with 1009 without the server
/// inflating more than that, and the server goes on serving.
#[tokio::test]
async fn compressed_requests_work_and_a_bomb_is_closed_with_1009() {
    let server = start_server(&[], |_| {}).await;
    let mut client = DeflateClient::connect(server.addr, Some("permessage-deflate")).await;
    client
        .send(0x80 | 0x40 | OP_TEXT, &deflate(br#"{"op":"ping","id":7}"#))
        .await;
    let (reply, _) = client.message().await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"type":"pong","id":7})
    );
    // Compressed and fragmented: RSV1 on the first frame only.
    let message = deflate(br#"{"op":"ping","id":8}"#);
    let (first, rest) = message.split_at(3);
    client.send(0x40 | OP_TEXT, first).await;
    client.send(0x80, rest).await;
    let (reply, _) = client.message().await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"type":"pong","id":8})
    );

    // 16 MiB of spaces compress to about 16 KB: under the 64 KiB frame
    // limit, far over it inflated.
    let bomb = deflate(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    client.send(0x80 | 0x40 | OP_TEXT, &bomb).await;
    assert_eq!(client.close_code().await, 1009);

    // Corrupt data: 1007. RSV1 without the extension: 1002.
    let mut corrupt = DeflateClient::connect(server.addr, Some("permessage-deflate")).await;
    corrupt
        .send(0x80 | 0x40 | OP_TEXT, &[0xff, 0xff, 0xff, 0x00, 0x12])
        .await;
    assert_eq!(corrupt.close_code().await, 1007);
    let mut unagreed = DeflateClient::connect(server.addr, None).await;
    unagreed
        .send(0x80 | 0x40 | OP_TEXT, &deflate(br#"{"op":"ping"}"#))
        .await;
    assert_eq!(unagreed.close_code().await, 1002);

    // The server goes on serving.
    let mut after = Client::connect(server.addr).await;
    after.send(json!({"op":"ping","id":9})).await;
    assert_eq!(after.recv().await, json!({"type":"pong","id":9}));
}

/// A client that asks for a 512-byte server window gets it honoured on a
/// real feed: frames that fit come compressed, longer ones plain, and all
/// of them are the right messages (checked against an uncompressed client).
#[tokio::test]
async fn a_smaller_window_asked_for_is_honoured() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut plain = Client::connect(server.addr).await;
    let offer = "permessage-deflate; server_max_window_bits=9";
    let mut packed = DeflateClient::connect(server.addr, Some(offer)).await;
    assert!(packed
        .agreed
        .as_deref()
        .is_some_and(|a| a.ends_with("server_max_window_bits=9")));
    let subscribe = r#"{"op":"subscribe","id":1,"channels":["book.*","quotes.*"]}"#;
    plain.send_text(subscribe).await;
    packed.send(0x80 | OP_TEXT, subscribe.as_bytes()).await;
    plain.recv().await;
    packed.message().await;

    replay_coinbase(feed).await;
    let (mut small_compressed, mut large_plain) = (0, 0);
    loop {
        let want = match plain.next().await {
            tokio_tungstenite::tungstenite::Message::Text(text) => text.to_string(),
            other => panic!("expected text, got {other:?}"),
        };
        let (got, rsv1) = packed.message().await;
        assert_eq!(got, want);
        if got.len() > 512 {
            assert!(
                !rsv1,
                "a {}-byte message past the 512-byte window came compressed",
                got.len()
            );
            large_plain += usize::from(got.contains(r#""type":"update""#));
        } else if rsv1 {
            small_compressed += 1;
        }
        if got.contains("quotes.end") {
            break;
        }
    }
    assert!(
        small_compressed > 10 && large_plain > 0,
        "{small_compressed} / {large_plain}"
    );
}
