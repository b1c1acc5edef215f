//! Rate limits over real sockets: messages per second on one connection
//! (`rate_limited`, then close 1008), WebSocket sessions per client address
//! at once (503), new sessions per second per address and in total (503
//! with Retry-After), a full address table (503), and a trusted proxy's
//! header believed from that proxy only.
//!
//! Every server here sets `connection_limits_exempt = []`: by default
//! loopback, where the tests connect from, is exempt.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tickcast::config::Settings;
use tickcast::http::client_ip::TrustedProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// An HTTP answer to a WebSocket upgrade request, and the connection (kept
/// open: after a 101 it is the session).
struct Answer {
    status: u16,
    head: String,
    body: String,
    _stream: TcpStream,
}

impl Answer {
    fn retry_after(&self) -> Option<u64> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse().ok())?
        })
    }
}

/// Asks for a WebSocket, as a proxy would if `forwarded_for` is given.
async fn upgrade(addr: SocketAddr, forwarded_for: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let forwarded = forwarded_for
        .map(|ip| format!("X-Forwarded-For: {ip}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{forwarded}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("an answer within the deadline")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("the body within the deadline")
            .unwrap();
        assert!(n > 0, "closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Answer {
        status,
        head,
        body,
        _stream: stream,
    }
}

/// No exemption for loopback, `tweak` for the rest.
async fn start(tweak: impl FnOnce(&mut Settings)) -> tickcast::RunningServer {
    start_server(&[], |s| {
        s.limits.connection_limits_exempt = Vec::new();
        tweak(s);
    })
    .await
}

fn behind_proxy(s: &mut Settings, proxies: &[&str]) {
    s.trusted_proxy = TrustedProxy {
        header: Some("x-forwarded-for".parse().unwrap()),
        proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
    };
}

#[tokio::test]
async fn messages_over_the_rate_are_refused_then_the_connection_is_closed() {
    let server = start(|s| {
        s.limits.messages_per_sec = 1;
        s.limits.message_burst = 3;
        s.limits.rate_limited_before_close = 3;
    })
    .await;
    let mut client = Client::connect(server.addr).await;
    // The burst is acted on; the next message, a subscribe, is refused
    // and not acted on (it would be answered `subscribed`).
    for id in 1..=3 {
        client.send(json!({"op":"ping","id":id})).await;
    }
    client
        .send(json!({"op":"subscribe","id":4,"channels":["r.x"]}))
        .await;
    for id in 1..=3 {
        assert_eq!(client.recv().await, json!({"type":"pong","id":id}));
    }
    let refused = client.recv().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("limits.messages_per_sec"),
        "{refused}"
    );
    // Refused messages count too: three more past the allowance close it.
    for id in 5..=12 {
        // The server may have closed already: later sends can fail.
        let text = json!({"op":"ping","id":id}).to_string();
        if client.ws.send(Message::text(text)).await.is_err() {
            break;
        }
    }
    let reason = loop {
        match client.next().await {
            Message::Close(Some(frame)) => break frame,
            Message::Close(None) => panic!("close without a code"),
            // Refusals (or, on a machine slow enough for the allowance to
            // refill meanwhile, pongs), then the close.
            Message::Text(text) => {
                assert!(
                    text.contains("rate_limited") || text.contains("pong"),
                    "{text}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(reason.code), 1008);
    assert!(reason.reason.contains("rate limit"), "{}", reason.reason);
    let counters = server.state.metrics.snapshot();
    assert!(counters.messages_rate_limited >= 1);
    assert_eq!(counters.rate_limit_closed, 1);
    // Another connection has its own allowance.
    let mut other = Client::connect(server.addr).await;
    other.send(json!({"op":"ping","id":1})).await;
    assert_eq!(other.recv().await, json!({"type":"pong","id":1}));
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_per_address_are_capped_with_503() {
    let server = start(|s| s.limits.max_connections_per_ip = 2).await;
    let first = upgrade(server.addr, None).await;
    let second = upgrade(server.addr, None).await;
    assert_eq!((first.status, second.status), (101, 101));
    let third = upgrade(server.addr, None).await;
    assert_eq!(third.status, 503, "{}", third.head);
    assert!(
        third.body.contains("limits.max_connections_per_ip"),
        "{}",
        third.body
    );
    assert_eq!(server.state.metrics.snapshot().refused_per_ip, 1);
    // Health checks and the like are not sessions: still served.
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    // A session that ends gives its place back.
    drop(first);
    let addr = server.addr;
    wait_for(
        || async move { (upgrade(addr, None).await.status == 101).then_some(()) },
        "a place freed by a closed session",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn new_sessions_per_address_are_rate_limited_with_retry_after() {
    let server = start(|s| s.limits.new_connections_per_ip_per_sec = 1).await;
    assert_eq!(upgrade(server.addr, None).await.status, 101);
    // One a second: of two more right away, at least one is refused (both
    // pass only if each took a whole second).
    let answers = [
        upgrade(server.addr, None).await,
        upgrade(server.addr, None).await,
    ];
    let refused = answers
        .iter()
        .find(|a| a.status == 503)
        .expect("a second session within the second is refused");
    let retry = refused.retry_after().expect("a Retry-After header");
    assert!((1..=5).contains(&retry), "Retry-After: {retry}");
    assert!(
        refused
            .body
            .contains("limits.new_connections_per_ip_per_sec"),
        "{}",
        refused.body
    );
    // It is a rate, not a ban: a later attempt gets in.
    let addr = server.addr;
    wait_for(
        || async move { (upgrade(addr, None).await.status == 101).then_some(()) },
        "a session once the rate allows",
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn new_sessions_in_total_are_rate_limited_across_addresses() {
    let server = start(|s| {
        behind_proxy(s, &["127.0.0.1"]);
        s.limits.new_connections_per_sec = 1;
    })
    .await;
    assert_eq!(upgrade(server.addr, Some("198.51.100.1")).await.status, 101);
    let answers = [
        upgrade(server.addr, Some("198.51.100.2")).await,
        upgrade(server.addr, Some("198.51.100.3")).await,
    ];
    let refused = answers
        .iter()
        .find(|a| a.status == 503)
        .expect("other addresses are refused by the total rate");
    assert!(refused.retry_after().is_some_and(|s| (1..=5).contains(&s)));
    assert!(
        refused.body.contains("limits.new_connections_per_sec"),
        "{}",
        refused.body
    );
    assert!(server.state.metrics.snapshot().refused_total_rate >= 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_header_counts_clients_apart() {
    let server = start(|s| {
        behind_proxy(s, &["127.0.0.1"]);
        s.limits.max_connections_per_ip = 1;
    })
    .await;
    let a = upgrade(server.addr, Some("198.51.100.1")).await;
    let b = upgrade(server.addr, Some("1.2.3.4, 198.51.100.2")).await;
    assert_eq!(
        (a.status, b.status),
        (101, 101),
        "two clients behind the proxy"
    );
    // The same client again, whatever it wrote to the left of the list.
    let a_again = upgrade(server.addr, Some("203.0.113.9, 198.51.100.1")).await;
    assert_eq!(a_again.status, 503, "{}", a_again.head);
    server.shutdown().await;
}

#[tokio::test]
async fn a_forwarding_header_from_an_untrusted_peer_is_ignored() {
    // The header is configured, but believed only from 192.0.2.1: the test
    // connects from 127.0.0.1, like any client that writes the header itself.
    let server = start(|s| {
        behind_proxy(s, &["192.0.2.1"]);
        s.limits.max_connections_per_ip = 1;
    })
    .await;
    let a = upgrade(server.addr, Some("198.51.100.1")).await;
    assert_eq!(a.status, 101);
    let spoofed = upgrade(server.addr, Some("198.51.100.2")).await;
    assert_eq!(
        spoofed.status, 503,
        "a made-up address does not get past the per-address limit: {}",
        spoofed.head
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_address_table_refuses_new_addresses_only() {
    let server = start(|s| {
        behind_proxy(s, &["127.0.0.1"]);
        s.limits.max_tracked_ips = 2;
    })
    .await;
    let _a = upgrade(server.addr, Some("198.51.100.1")).await;
    let _b = upgrade(server.addr, Some("198.51.100.2")).await;
    // Both addresses hold a session: nothing can be swept out.
    let c = upgrade(server.addr, Some("198.51.100.3")).await;
    assert_eq!(c.status, 503, "{}", c.head);
    assert!(c.body.contains("limits.max_tracked_ips"), "{}", c.body);
    assert!(c.retry_after().is_some());
    // Addresses already known are served.
    assert_eq!(upgrade(server.addr, Some("198.51.100.1")).await.status, 101);
    assert_eq!(server.state.metrics.snapshot().refused_ip_table_full, 1);
    server.shutdown().await;
}
