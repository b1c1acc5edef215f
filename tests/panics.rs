//! A panic while serving one feed, one producer or one session ends only
//! that: the process, the other feeds and every other client go on. The
//! panics are injected on purpose through `tickcast::fault` (the
//! `fault-injection` feature, on for these tests only).

mod common;

use common::*;
use serde_json::{json, Value};
use tickcast::fault::PANIC_CHANNEL;
use tickcast::feed::FeedStatus;
use tokio::io::AsyncReadExt;

/// The feed's contained-panic count as /stats reports it.
async fn feed_panics(server: &tickcast::RunningServer, feed: usize) -> u64 {
    let (_, body) = http_get(server.addr, "/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    stats["feeds"][feed]["panics"].as_u64().unwrap()
}

#[tokio::test]
async fn a_panicking_producer_connection_ends_alone() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["ok.>"]).await;

    let mut doomed = Producer::connect(feed).await;
    doomed.publish(PANIC_CHANNEL, json!({"x": 1})).await;
    // Its connection is closed by the contained panic...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, doomed.0.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the panicking producer's connection is closed"
    );
    let panics = wait_for(
        || async {
            let n = feed_panics(&server, 0).await;
            (n > 0).then_some(n)
        },
        "the panic is counted",
    )
    .await;
    assert_eq!(panics, 1);

    // ...while the feed, the server and the subscribed client go on.
    assert_eq!(server.feeds[0].status(), FeedStatus::Running);
    let mut producer = Producer::connect(feed).await;
    producer.publish("ok.a", json!({"n": 7})).await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"], json!({"n": 7}));
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("tickcast_feed_panics_total{feed=\"tcp:127.0.0.1:0\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_panicking_feed_fails_alone_and_healthz_says_so() {
    let dir = std::env::temp_dir().join(format!("tickcast-panic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("panics.ndjson");
    std::fs::write(
        &path,
        format!(
            "{{\"channel\":\"r.a\",\"data\":{{\"n\":1}}}}\n\
             {{\"channel\":\"{PANIC_CHANNEL}\",\"data\":{{}}}}\n\
             {{\"channel\":\"r.a\",\"data\":{{\"n\":2}}}}\n"
        ),
    )
    .unwrap();
    let replay = format!("replay:{}", path.display());
    let server = start_server(&["synthetic", &replay], |s| {
        s.replay.speed = tickcast::feed::Speed::Max;
    })
    .await;
    wait_for(
        || async { (server.feeds[1].status() == FeedStatus::Failed).then_some(()) },
        "the replay feed fails",
    )
    .await;
    assert_eq!(feed_panics(&server, 1).await, 1);
    assert_eq!(feed_panics(&server, 0).await, 0);
    // The record before the panic went through, the one after did not.
    assert_eq!(wait_for_channel(&server, "r.a").await.data["n"], 1);
    let (status, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains(&replay), "{body}");
    // The synthetic feed still runs and clients are still served.
    assert_eq!(server.feeds[0].status(), FeedStatus::Running);
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["quotes.>"]).await;
    assert_eq!(client.recv().await["type"], "snapshot");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_panicking_session_ends_alone_and_is_forgotten() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut bystander = Client::connect(server.addr).await;
    bystander.subscribe(1, &["ok.>"]).await;

    let mut doomed = Client::connect(server.addr).await;
    doomed.subscribe(1, &["ok.a"]).await;
    doomed
        .send(json!({"op": "subscribe", "id": 2, "channels": [PANIC_CHANNEL]}))
        .await;
    // The doomed session is told 1011 (or just dropped) and is forgotten:
    // only the bystander's subscription is left.
    let code = doomed.expect_close().await;
    assert_eq!(u16::from(code), 1011);
    let stats = wait_for(
        || async {
            let (_, body) = http_get(server.addr, "/stats").await;
            let stats: Value = serde_json::from_str(&body).unwrap();
            (stats["connections"] == 1 && stats["subscriptions"] == 1).then_some(stats)
        },
        "the panicked session is deregistered",
    )
    .await;
    assert_eq!(stats["session_panics"], 1);

    // Everyone else is served as before.
    let mut producer = Producer::connect(feed).await;
    producer.publish("ok.a", json!({"n": 1})).await;
    let snapshot = bystander.recv().await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["seq"].as_u64()),
        (Some("snapshot"), Some(1))
    );
    let mut late = Client::connect(server.addr).await;
    late.subscribe(1, &["ok.a"]).await;
    assert_eq!(late.recv().await["data"], json!({"n": 1}));
    server.shutdown().await;
}
