//! A connection's own limits, over real sockets: close frames are checked
//! as RFC 6455 says, a frame started and not finished is closed after
//! `limits.frame_timeout_ms`, a quiet connection is pinged and closed after
//! `limits.idle_timeout_ms` unless it answers, and HTTP request headers
//! (the WebSocket handshake) must arrive within `limits.handshake_timeout_ms`.

mod common;
mod rawws;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use rawws::{RawWs, OP_CLOSE, OP_PING};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// One counter from `/stats`.
async fn stat(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(addr, "/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats has no {name}: {body}"))
}

/// Sends a close frame with `payload` and returns the server's answer.
async fn close_answer(addr: std::net::SocketAddr, payload: &[u8]) -> (u16, Vec<u8>) {
    let mut ws = RawWs::connect(addr).await;
    ws.send_frame(0x80 | OP_CLOSE, payload).await;
    let frame = ws.next_frame().await.expect("an answer to the close");
    assert_eq!(frame.opcode, OP_CLOSE, "{frame:?}");
    ws.expect_end().await;
    let (code, _) = frame.close();
    (code, frame.payload)
}

#[tokio::test]
async fn invalid_close_codes_fail_the_connection_with_1002() {
    let server = start_server(&[], |_| {}).await;
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let (answer, _) = close_answer(server.addr, &payload).await;
        assert_eq!(answer, 1002, "a client close with code {code}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_fails_with_1007() {
    let server = start_server(&[], |_| {}).await;
    let (answer, _) = close_answer(server.addr, &[0x03, 0xE8, b'o', 0xFF, 0xFE, b'k']).await;
    assert_eq!(answer, 1007);
    server.shutdown().await;
}

#[tokio::test]
async fn valid_closes_are_echoed() {
    let server = start_server(&[], |_| {}).await;
    for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let (answer, echoed) = close_answer(server.addr, &payload).await;
        assert_eq!((answer, echoed), (code, payload), "code {code}");
    }
    // An empty close is echoed empty.
    let mut ws = RawWs::connect(server.addr).await;
    ws.send_frame(0x80 | OP_CLOSE, b"").await;
    let frame = ws.next_frame().await.unwrap();
    assert_eq!((frame.opcode, frame.payload.len()), (OP_CLOSE, 0));
    server.shutdown().await;
}

/// How long a timeout may fire late in these tests: the sweeper looks a
/// few times per timeout, and the machine is shared.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_frame_started_and_not_finished_is_closed() {
    const FRAME_MS: u64 = 500;
    let server = start_server(&[], |s| s.limits.frame_timeout_ms = FRAME_MS).await;

    // A header announcing 100 bytes, then 10 of them.
    let mut ws = RawWs::connect(server.addr).await;
    let frame = rawws::masked(0x80 | rawws::OP_TEXT, &[b' '; 100]);
    let started = Instant::now();
    ws.send_raw(&frame[..2 + 4 + 10]).await;
    let (code, reason) = ws.expect_close().await;
    let took = started.elapsed();
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("frame_timeout_ms"), "{reason}");
    ws.expect_end().await;
    assert!(
        took >= Duration::from_millis(FRAME_MS),
        "closed after {took:?}"
    );
    assert!(
        took < Duration::from_millis(FRAME_MS) + MARGIN,
        "closed after {took:?}"
    );

    // A fragmented message whose first fragment is whole, and no more.
    let mut ws = RawWs::connect(server.addr).await;
    let started = Instant::now();
    ws.send_frame(rawws::OP_TEXT, br#"{"op":"#).await;
    let (code, _) = ws.expect_close().await;
    assert_eq!(code, 1008);
    assert!(started.elapsed() < Duration::from_millis(FRAME_MS) + MARGIN);
    ws.expect_end().await;

    assert_eq!(stat(server.addr, "frame_timeouts_closed").await, 2);
    server.shutdown().await;
}

/// A frame that arrives byte by byte, each byte well within the timeout,
/// and whole after it, is still too slow: the clock runs from its first byte.
#[tokio::test]
async fn a_frame_trickled_in_is_closed_too() {
    let server = start_server(&[], |s| s.limits.frame_timeout_ms = 500).await;
    let mut ws = RawWs::connect(server.addr).await;
    let frame = rawws::masked(0x80 | rawws::OP_TEXT, br#"{"op":"ping","id":1}"#);
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut sent = 0;
    // Byte by byte until the server closes (it must, long before the end).
    let code = loop {
        tokio::select! {
            _ = every.tick(), if sent < frame.len() => {
                if ws.stream.write_all(&frame[sent..sent + 1]).await.is_err() {
                    break None;
                }
                sent += 1;
            }
            n = ws.read_some(1024) => {
                if n == 0 {
                    break None;
                }
                if let Some(f) = ws.take_frame() {
                    break Some(f.close().0);
                }
            }
        }
    };
    assert_eq!(code, Some(1008));
    assert!(sent < frame.len(), "closed before the frame was whole");
    server.shutdown().await;
}

#[tokio::test]
async fn a_quiet_client_that_answers_pings_stays_connected() {
    const IDLE_MS: u64 = 600;
    let server = start_server(&[], |s| s.limits.idle_timeout_ms = IDLE_MS).await;
    let mut client = Client::connect(server.addr).await;
    // Reading (tungstenite answers each ping on its next read) for four
    // idle timeouts; it sends nothing of its own.
    let watch_until = tokio::time::Instant::now() + Duration::from_millis(4 * IDLE_MS);
    let mut pings = 0;
    while let Ok(message) = tokio::time::timeout_at(watch_until, client.ws.next()).await {
        match message.expect("open").expect("no error") {
            Message::Ping(_) => pings += 1,
            other => panic!("only pings expected, got {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged at half the idle timeout: {pings} pings");
    client.send(json!({"op":"ping","id":7})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":7}));
    assert_eq!(stat(server.addr, "idle_closed").await, 0);
    assert!(stat(server.addr, "idle_pings").await >= 3);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_ignores_pings_is_closed_as_idle() {
    const IDLE_MS: u64 = 600;
    let server = start_server(&[], |s| s.limits.idle_timeout_ms = IDLE_MS).await;
    let started = Instant::now();
    let mut ws = RawWs::connect(server.addr).await;
    let ping = ws.next_frame().await.expect("a ping");
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert!(started.elapsed() >= Duration::from_millis(IDLE_MS / 2));
    let (code, reason) = ws.expect_close().await;
    let took = started.elapsed();
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    ws.expect_end().await;
    assert!(took >= Duration::from_millis(IDLE_MS), "{took:?}");
    assert!(took < Duration::from_millis(IDLE_MS) + MARGIN, "{took:?}");
    assert_eq!(stat(server.addr, "idle_closed").await, 1);
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("\ntickcast_idle_closed_total 1\n"),
        "{metrics}"
    );
    server.shutdown().await;
}

/// Reads until the server ends the connection; fails after the deadline.
async fn wait_for_end(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut sink))
            .await
            .expect("the server ends the connection within the deadline");
        if matches!(read, Ok(0) | Err(_)) {
            return;
        }
    }
}

#[tokio::test]
async fn request_headers_sent_a_byte_at_a_time_are_cut_off() {
    const HANDSHAKE_MS: u64 = 500;
    let server = start_server(&[], |s| s.limits.handshake_timeout_ms = HANDSHAKE_MS).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // A byte every 50 ms: the headers would take about 7 s.
    let mut every = tokio::time::interval(Duration::from_millis(50));
    let mut sink = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            _ = every.tick(), if sent < request.len() => {
                if stream.write_all(&request.as_bytes()[sent..sent + 1]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            read = stream.read(&mut sink) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
        assert!(started.elapsed() < DEADLINE, "still connected");
    }
    let took = started.elapsed();
    assert!(
        sent < request.len(),
        "cut off before the headers were whole"
    );
    assert!(
        took < Duration::from_millis(HANDSHAKE_MS) + MARGIN,
        "{took:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn half_sent_and_unsent_requests_are_all_dropped() {
    const HANDSHAKE_MS: u64 = 500;
    let server = start_server(&[], |s| s.limits.handshake_timeout_ms = HANDSHAKE_MS).await;
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    // A kept-alive connection after one whole request is dropped too.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    held.push(kept);
    for stream in &mut held {
        wait_for_end(stream).await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(HANDSHAKE_MS) + MARGIN,
        "{took:?}"
    );
    // And the server still answers.
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.shutdown().await;
}
