//! `limits.write_timeout_ms` measures no progress, not the time to write a
//! batch: a client that reads slowly but steadily from merge channels
//! changing faster than it reads stays connected (coalesced) and ends with
//! the server's exact state; a client that reads nothing at all is dropped
//! within the timeout, and counted.

mod common;
mod rawws;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use rawws::{RawWs, OP_CLOSE, OP_TEXT};
use serde_json::{json, Value};
use tickcast::RunningServer;

const WRITE_TIMEOUT_MS: u64 = 1_000;
/// Large next to what a slow reader takes in a write timeout: one batch
/// takes several timeouts to go out at its pace.
const OUTBOX_BYTES: usize = 256 * 1024;
const CHANNELS: usize = 10;
/// Each update carries about 1 KB; ten channels every 10 ms is 1 MB/s.
const BLOB: usize = 1_000;
const FEED_FOR: Duration = Duration::from_secs(8);

fn channel(i: usize) -> String {
    format!("slow.c{i}")
}

async fn start(idle_timeout_ms: u64) -> (RunningServer, Producer) {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.write_timeout_ms = WRITE_TIMEOUT_MS;
        s.limits.outbox_bytes = OUTBOX_BYTES;
        s.limits.idle_timeout_ms = idle_timeout_ms;
    })
    .await;
    let mut producer = Producer::connect(feed).await;
    for i in 0..CHANNELS {
        producer.publish(&channel(i), json!({"n": 0})).await;
    }
    for i in 0..CHANNELS {
        wait_for_channel(&server, &channel(i)).await;
    }
    (server, producer)
}

/// Feeds every channel once per 10 ms tick for `FEED_FOR` (about 1 MB/s).
fn feed(mut producer: Producer) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < FEED_FOR {
            ticks.tick().await;
            n += 1;
            for i in 0..CHANNELS {
                let blob = format!("{n:0>BLOB$}");
                // Fields come and go, so held diffs carry deletions too.
                let odd = if n % 2 == 1 { json!(n) } else { Value::Null };
                producer
                    .publish(&channel(i), json!({"n": n, "blob": blob, "odd": odd}))
                    .await;
            }
        }
        n
    })
}

/// A raw client subscribed to every channel; returns it after the reply.
async fn subscriber(addr: SocketAddr) -> RawWs {
    let mut ws = RawWs::connect_narrow(addr).await;
    let names: Vec<String> = (0..CHANNELS).map(channel).collect();
    ws.send_text(&json!({"op":"subscribe","id":1,"channels":names}).to_string())
        .await;
    let reply = ws.next_frame().await.expect("subscribed");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    ws
}

/// Applies every whole frame read so far; panics on a close.
fn apply_frames(ws: &mut RawWs, follower: &mut Follower) {
    while let Some(frame) = ws.take_frame() {
        match frame.opcode {
            OP_TEXT => {
                let message: Value = serde_json::from_slice(&frame.payload).unwrap();
                follower.apply(&message);
            }
            OP_CLOSE => panic!("the slow reader was closed: {:?}", frame.close()),
            _ => {}
        }
    }
}

async fn server_state(server: &RunningServer) -> BTreeMap<String, (u64, Value)> {
    let mut state = BTreeMap::new();
    for i in 0..CHANNELS {
        let snapshot = server.engine.snapshot(&channel(i)).await.unwrap().unwrap();
        state.insert(channel(i), (snapshot.seq, Value::Object(snapshot.data)));
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_is_never_dropped_and_ends_exact() {
    // It sends nothing after subscribing, and does not answer pings: its
    // reading (the server's full socket taking bytes) must count as being
    // there, or it would be closed as idle after 2 s.
    let (server, producer) = start(2_000).await;
    let mut ws = subscriber(server.addr).await;
    let mut follower = Follower::default();
    let feeding = feed(producer);

    // About 60 KB/s: 3,000 bytes every 50 ms, while the feed runs at 1 MB/s
    // for eight write timeouts.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut read = 0usize;
    while !feeding.is_finished() {
        pace.tick().await;
        let n = tokio::time::timeout(DEADLINE, ws.read_some(3_000))
            .await
            .expect("the server keeps sending");
        if n == 0 {
            let (_, stats) = http_get(server.addr, "/stats").await;
            panic!("the slow reader was dropped after {read} bytes; /stats: {stats}");
        }
        read += n;
        apply_frames(&mut ws, &mut follower);
    }
    let updates = feeding.await.unwrap();
    assert!(
        (read as u64) < updates * CHANNELS as u64 * BLOB as u64 / 4,
        "the client did read much slower than the feed: {read} bytes"
    );

    // The feed has stopped: reading at full speed now, the client reaches
    // the server's exact state, following every prev.
    let running = &server;
    let wanted = wait_for(
        || async move {
            let applied = running.engine.stats().updates_applied;
            let state = server_state(running).await;
            (applied == (1 + updates) * CHANNELS as u64).then_some(state)
        },
        "the feed applied",
    )
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while follower.channels != wanted {
        let n = tokio::time::timeout_at(deadline, ws.read_some(64 * 1024))
            .await
            .expect("the client catches up with the server's state");
        assert!(n > 0, "dropped while catching up");
        apply_frames(&mut ws, &mut follower);
    }
    assert!(server.engine.stats().slow_consumer_holds > 0, "it did lag");
    let (_, body) = http_get(server.addr, "/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["write_stalls_closed"], 0, "{body}");
    assert_eq!(stats["idle_closed"], 0, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_takes_nothing_is_dropped_and_counted() {
    let (server, producer) = start(60_000).await;
    let _ws = subscriber(server.addr).await;
    let subscribed = Instant::now();
    let feeding = feed(producer);
    // It reads nothing more; its socket fills within a fraction of a second
    // at 1 MB/s, then nothing moves for the write timeout.
    let addr = server.addr;
    let stat = |name: &'static str| async move {
        let (_, body) = http_get(addr, "/stats").await;
        let stats: Value = serde_json::from_str(&body).unwrap();
        stats[name].as_u64().unwrap()
    };
    wait_for(
        || async move { (stat("write_stalls_closed").await == 1).then_some(()) },
        "the stalled client dropped",
    )
    .await;
    let took = subscribed.elapsed();
    assert!(
        took < Duration::from_millis(WRITE_TIMEOUT_MS) + Duration::from_secs(4),
        "dropped after {took:?}"
    );
    wait_for(
        || async move { (stat("connections").await == 0).then_some(()) },
        "its session ended",
    )
    .await;
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("\ntickcast_write_stalls_closed_total 1\n"),
        "{metrics}"
    );
    feeding.abort();
    server.shutdown().await;
}
