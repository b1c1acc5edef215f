//! A client that stops reading: on `merge` channels it is switched to one
//! pending diff per channel and catches up exactly when it reads again; on
//! `stream` channels it is closed with 1013. Either way the clients that do
//! read get every update.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use tickcast::engine::{Mode, NamespacePolicy};

use tickcast::engine::StatsSnapshot;
use tickcast::RunningServer;
use tokio::net::TcpSocket;

const UPDATES: u64 = 400;

/// A WebSocket client whose socket has a tiny receive buffer and a
/// network-sized MSS, so that when it stops reading the server's side backs
/// up quickly. (With loopback's 64 KiB segments, Linux sizes the server's
/// send buffer for megabytes before a write would block.)
async fn narrow_client(addr: SocketAddr) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_tcp_mss(1460).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket connects");
    Client { ws }
}

/// Waits until the engine counter `field` satisfies `ok`.
async fn wait_for_stat(
    server: &RunningServer,
    field: fn(&StatsSnapshot) -> u64,
    ok: fn(u64) -> bool,
    what: &str,
) {
    let engine = server.engine.clone();
    wait_for(
        || {
            let stats = engine.stats();
            async move { ok(field(&stats)).then_some(()) }
        },
        what,
    )
    .await;
}

/// Publishes `UPDATES` large updates (each ~16 KB) to `channel`.
async fn flood(producer: &mut Producer, channel: &str) {
    for n in 1..=UPDATES {
        let blob = format!("{n:0>16000}");
        producer
            .publish(channel, json!({"n": n, "blob": blob, "odd": if n % 2 == 1 { json!(n) } else { Value::Null }}))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_merge_subscriber_coalesces_and_ends_exact() {
    let (server, feed) = start_with_tcp_feed(|s| s.limits.outbox_bytes = 64 * 1024).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("big.c", json!({"n": 0})).await;
    wait_for_channel(&server, "big.c").await;

    let mut reader = Client::connect(server.addr).await;
    reader.subscribe(1, &["big.c"]).await;
    let mut stalled = narrow_client(server.addr).await;
    stalled.subscribe(1, &["big.c"]).await;
    let mut follower = Follower::default();
    follower.apply(&stalled.recv().await);

    // The stalled client reads nothing while the flood goes out. The reading
    // client keeps up as well as it can (with a 64 KiB bound and 16 KB
    // updates it may lag now and then, and be coalesced too): following
    // `prev`, it must end with exactly the server's state.
    let reading = tokio::spawn(async move {
        let mut follower = Follower::default();
        follower.apply(&reader.recv().await);
        while follower.channels["big.c"].0 < UPDATES + 1 {
            follower.apply(&reader.recv().await);
        }
        follower
    });
    flood(&mut producer, "big.c").await;
    tokio::time::timeout(DEADLINE * 3, reading)
        .await
        .expect("reader done")
        .unwrap();
    wait_for_stat(
        &server,
        |s| s.slow_consumer_holds,
        |n| n > 0,
        "the server held diffs for the stalled client",
    )
    .await;
    assert_eq!(
        server.engine.stats().slow_consumer_closes,
        0,
        "merge: no close"
    );

    // Now it reads again: following prev, it reaches the server's exact state.
    let mut received = 0;
    while follower.channels["big.c"].0 < UPDATES + 1 {
        let m = stalled.recv().await;
        follower.apply(&m);
        received += 1;
    }
    let server_state = server.engine.snapshot("big.c").await.unwrap().unwrap();
    assert_eq!(
        follower.channels["big.c"],
        (server_state.seq, Value::Object(server_state.data))
    );
    assert!(
        received < UPDATES,
        "coalesced: {received} messages for {UPDATES} updates"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_subscriber_is_closed_with_1013() {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.outbox_bytes = 64 * 1024;
        s.namespaces = std::mem::take(&mut s.namespaces).with(
            "events",
            NamespacePolicy {
                mode: Mode::Stream,
                ..NamespacePolicy::default()
            },
        );
    })
    .await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("events.m", json!({"n": 0})).await;
    wait_for_channel(&server, "events.m").await;
    let mut stalled = narrow_client(server.addr).await;
    stalled.subscribe(1, &["events.m"]).await;
    assert_eq!(stalled.recv().await["type"], "snapshot");
    flood(&mut producer, "events.m").await;
    wait_for_stat(
        &server,
        |s| s.slow_consumer_closes,
        |n| n == 1,
        "the stalled stream subscriber closed",
    )
    .await;
    // Reading again, it finds an unbroken run of updates and then 1013.
    let mut last = 1;
    let code = loop {
        match stalled.next().await {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                let m: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    m["prev"].as_u64(),
                    Some(last),
                    "stream: no skipped seq before the close"
                );
                last = m["seq"].as_u64().unwrap();
            }
            tokio_tungstenite::tungstenite::Message::Close(frame) => break frame.unwrap().code,
            _ => {}
        }
    };
    assert_eq!(u16::from(code), 1013);
    server.shutdown().await;
}

/// However long a merge subscriber stalls, what the server holds for it
/// stays within the outbox bound plus one held diff no bigger than about
/// twice the channel's state: it does not grow with the number of updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_bounded_memory_however_long_it_stalls() {
    const OUTBOX: u64 = 64 * 1024;
    // The state is about 16 KB (a 16,000-character blob); a held diff may
    // reach twice that plus 1 KiB before it turns into a snapshot.
    const HELD_LIMIT: u64 = 2 * 16_100 + 1024;
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.outbox_bytes = OUTBOX as usize;
        // A peer that accepts nothing for write_timeout_ms (10 s by default)
        // is dropped; here it must stay for the whole test.
        s.limits.write_timeout_ms = 600_000;
    })
    .await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("big.c", json!({"n": 0})).await;
    wait_for_channel(&server, "big.c").await;
    let mut stalled = narrow_client(server.addr).await;
    stalled.subscribe(1, &["big.c"]).await;
    assert_eq!(stalled.recv().await["type"], "snapshot");

    // Four floods of 16 KB updates (about 25 MB in all, hundreds of times
    // the bound) while the client reads nothing; look after each.
    for round in 1..=4u64 {
        flood(&mut producer, "big.c").await;
        let engine = server.engine.clone();
        let backlog = wait_for(
            || {
                let engine = engine.clone();
                async move {
                    let applied = engine.stats().updates_applied == 1 + round * UPDATES;
                    let backlog = engine.backlog().await.ok()?;
                    applied.then_some(backlog)
                }
            },
            "the flood applied",
        )
        .await;
        // One channel: at most one held diff (none at moments when the
        // kernel took more bytes and the held diff went out).
        assert!(backlog.held_diffs <= 1, "round {round}: {backlog:?}");
        assert!(
            backlog.largest_queued_bytes <= OUTBOX,
            "round {round}: {} bytes queued, over the {OUTBOX}-byte bound",
            backlog.largest_queued_bytes
        );
        assert!(
            backlog.held_diff_bytes <= HELD_LIMIT,
            "round {round}: held diff of {} bytes",
            backlog.held_diff_bytes
        );
    }
    assert!(
        server.engine.stats().slow_consumer_holds > 0,
        "the client did fall behind"
    );
    assert_eq!(
        server.engine.stats().slow_consumer_closes,
        0,
        "merge: no close"
    );
    // /stats shows the same figures to operators.
    let (_, body) = http_get(server.addr, "/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert!(
        stats["backlog"]["held_diffs"].as_u64().unwrap() <= 1,
        "{body}"
    );
    assert!(stats["backlog"]["largest_queued_bytes"].as_u64().unwrap() <= OUTBOX);
    server.shutdown().await;
}
