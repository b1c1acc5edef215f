//! Restarts clients survive: the real `tickcast` binary, sent SIGTERM (or
//! Ctrl-C's SIGINT), stops taking connections, sends every client what was
//! queued for it and then close 1001 with a reconnect delay of its own, and
//! exits with status 0 within `limits.shutdown_timeout_ms`, even while a
//! client reads nothing.
#![cfg(unix)]

mod common;
mod rawws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use rawws::{RawWs, OP_CLOSE, OP_TEXT};
use serde_json::{json, Value};
use tickcast::shutdown::{reconnect_hint, REASON_PREFIX};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

/// Delays are drawn from 0 to this; wide, so that five clients drawing the
/// same one would be a sign of no randomness at all.
const SPREAD_MS: u64 = 60_000;
/// Updates queued for a client that has stopped reading, about 1 KB each.
const QUEUED: u64 = 300;

struct Server {
    child: Child,
    addr: SocketAddr,
    feed: SocketAddr,
}

/// `tickcast serve` with a `tcp:` feed, one engine shard (so a client that
/// has an update proves it was queued for every client) and the given
/// shutdown timeout; returns once it answers `/healthz`.
async fn start(name: &str, shutdown_timeout_ms: u64) -> Server {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let config = dir.join(format!("restart-{name}-{}.toml", std::process::id()));
    let text = format!(
        "[limits]\nshutdown_timeout_ms = {shutdown_timeout_ms}\n\
         shutdown_reconnect_spread_ms = {SPREAD_MS}\n"
    );
    std::fs::write(&config, text).expect("write the config");
    let (addr, feed) = (free_port(), free_port());
    let child = tickcast_binary(addr)
        .args(["--feed", &format!("tcp:{feed}"), "--engine-shards", "1"])
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn()
        .expect("the tickcast binary starts");
    wait_healthy(addr).await;
    Server { child, addr, feed }
}

/// A producer on the server's feed, once the feed (started after the
/// listener) takes connections.
async fn producer(server: &Server) -> Producer {
    let feed = server.feed;
    let stream = wait_for(
        || async move { TcpStream::connect(feed).await.ok() },
        "the tcp feed to take connections",
    )
    .await;
    Producer(stream)
}

impl Server {
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Waits for the exit; returns its status and how long it took.
    async fn exit_within(&mut self, bound: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(bound, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("tickcast still running {bound:?} after the signal"))
            .expect("wait for tickcast")
    }
}

/// Publishes `n` (with a 1 KB pad) on `r.a` through the feed.
async fn publish_until(producer: &mut Producer, from: u64, to: u64) {
    let pad = "p".repeat(1000);
    for n in from..=to {
        producer.publish("r.a", json!({"n": n, "pad": pad})).await;
    }
}

/// A raw client with a tiny receive buffer that reads its `subscribed`
/// reply and nothing more: what it is sent from then on backs up in the
/// server.
async fn stalled_client(addr: SocketAddr) -> RawWs {
    let mut ws = RawWs::connect_narrow(addr).await;
    ws.send_text(&json!({"op":"subscribe","id":1,"channels":["r.a"]}).to_string())
        .await;
    let reply = ws.next_frame().await.expect("subscribed");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    ws
}

/// Reads a close frame's code and reconnect delay, checking the format.
fn hint_of(code: u16, reason: &str) -> Duration {
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.starts_with(REASON_PREFIX), "{reason:?}");
    let delay = reconnect_hint(reason).expect("a parseable delay");
    assert!(delay <= Duration::from_millis(SPREAD_MS), "{delay:?}");
    delay
}

#[tokio::test]
async fn sigterm_closes_every_client_with_its_own_hint_after_what_was_queued() {
    let mut server = start("term", 10_000).await;
    let mut producer = producer(&server).await;
    producer.publish("r.a", json!({"n": 0})).await;
    let addr = server.addr;
    wait_for(
        || async move { (http_get(addr, "/channels/r.a").await.0 == 200).then_some(()) },
        "channel r.a",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connect(server.addr).await;
        client.subscribe(1, &["r.a"]).await;
        assert_eq!(client.recv().await["type"], "snapshot");
        clients.push(client);
    }
    let mut stalled = stalled_client(server.addr).await;
    publish_until(&mut producer, 1, QUEUED).await;
    // Every reader has the last update, so it is queued for the stalled
    // client too: one shard fans each update out to all of them at once.
    for client in &mut clients {
        loop {
            let message = client.recv().await;
            if message["data"]["n"] == QUEUED {
                break;
            }
        }
    }

    server.signal("TERM");
    let mut hints = Vec::new();
    for client in &mut clients {
        let frame = loop {
            match client.next().await {
                Message::Close(Some(frame)) => break frame,
                Message::Close(None) => panic!("a close without a code"),
                Message::Text(text) => panic!("nothing more was published: {text}"),
                _ => {}
            }
        };
        hints.push(hint_of(u16::from(frame.code), &frame.reason));
    }
    // The listener closed before any client was told to go.
    let refused = TcpStream::connect(server.addr).await;
    assert!(
        refused.is_err(),
        "a new connection after the signal is refused"
    );
    hints.sort();
    hints.dedup();
    assert!(
        hints.len() > 1,
        "clients are told different delays, not one for all: {hints:?}"
    );

    // The stalled client now reads: everything queued, then the close.
    let mut last_n = 0;
    let (code, reason) = loop {
        let frame = stalled.next_frame().await.expect("frames, then a close");
        match frame.opcode {
            OP_TEXT => {
                let message: Value = serde_json::from_slice(&frame.payload).unwrap();
                if let Some(n) = message["data"]["n"].as_u64() {
                    last_n = n;
                }
            }
            OP_CLOSE => break frame.close(),
            _ => {}
        }
    };
    assert_eq!(
        last_n, QUEUED,
        "every queued update arrives before the close"
    );
    hint_of(code, &reason);

    let status = server.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn ctrl_c_exits_within_the_timeout_while_a_client_reads_nothing() {
    const TIMEOUT_MS: u64 = 500;
    let mut server = start("int", TIMEOUT_MS).await;
    let mut producer = producer(&server).await;
    producer.publish("r.a", json!({"n": 0})).await;
    let mut reader = Client::connect(server.addr).await;
    reader.subscribe(1, &["r.a"]).await;
    let _stalled = stalled_client(server.addr).await;
    // Far more than the stalled client's socket takes: its writer is stuck
    // (and would be for limits.write_timeout_ms, 10 s by default).
    publish_until(&mut producer, 1, 2 * QUEUED).await;
    loop {
        let message = reader.recv().await;
        if message["data"]["n"] == 2 * QUEUED {
            break;
        }
    }

    let signalled = Instant::now();
    server.signal("INT");
    let code = reader.expect_close().await;
    assert_eq!(u16::from(code), 1001);
    // Bounded by the timeout, plus room for a loaded machine; short of the
    // write timeout (10 s) the stalled client would otherwise hold it for,
    // and of the fixed 5 s grace there was before limits.shutdown_timeout_ms.
    let status = server
        .exit_within(Duration::from_millis(TIMEOUT_MS + 3_000))
        .await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_millis(TIMEOUT_MS + 3_000),
        "exited {:?} after the signal",
        signalled.elapsed()
    );
}
