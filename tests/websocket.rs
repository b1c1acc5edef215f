//! The WebSocket protocol end to end: real server, real sockets, an
//! independent client.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subscribe_gets_snapshot_then_an_unbroken_chain_of_updates() {
    snapshot_then_chain(false).await;
}

#[tokio::test]
async fn direct_writes_keep_the_chain_and_the_order() {
    snapshot_then_chain(true).await;
}

async fn snapshot_then_chain(direct_writes: bool) {
    let (server, feed) = start_with_tcp_feed(|s| s.direct_writes = direct_writes).await;
    let mut producer = Producer::connect(feed).await;
    producer
        .publish("quotes.AAA", json!({"bid": 1.0, "ask": 1.1}))
        .await;
    wait_for_channel(&server, "quotes.AAA").await;

    let mut client = Client::connect(server.addr).await;
    client.subscribe(7, &["quotes.AAA"]).await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["data"], json!({"bid": 1.0, "ask": 1.1}));
    assert!(snapshot["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    let mut follower = Follower::default();
    follower.apply(&snapshot);
    for i in 0..200 {
        let patch = if i % 10 == 9 {
            json!({"ask": null, "n": i})
        } else {
            json!({"bid": 1.0 + i as f64, "ask": 2.0})
        };
        producer.publish("quotes.AAA", patch).await;
    }
    while follower.updates < 200 {
        let message = client.recv().await;
        assert_eq!(message["type"], "update", "{message}");
        assert!(
            message["ts"].as_u64().unwrap() > 1_600_000_000_000_000_000,
            "ts is Unix ns"
        );
        follower.apply(&message);
    }
    let server_state = server.engine.snapshot("quotes.AAA").await.unwrap().unwrap();
    let (seq, state) = &follower.channels["quotes.AAA"];
    assert_eq!(*seq, 201);
    assert_eq!(server_state.seq, 201);
    assert_eq!(*state, Value::Object(server_state.data));
    server.shutdown().await;
}

#[tokio::test]
async fn patterns_cover_existing_and_later_channels() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.A", json!({"bid": 1})).await;
    producer.publish("quotes.B", json!({"bid": 2})).await;
    producer
        .publish("scores.epl.ARS-CHE", json!({"home_score": 0}))
        .await;
    producer.publish("quotes.deep.C", json!({"bid": 3})).await;
    let engine = server.engine.clone();
    wait_for(
        || {
            let e = engine.clone();
            async move { (e.channel_list().await.unwrap().len() == 4).then_some(()) }
        },
        "4 channels",
    )
    .await;

    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["quotes.*", "scores.>"]).await;
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let m = client.recv().await;
        assert_eq!(m["type"], "snapshot", "{m}");
        snapshots.push(m["channel"].as_str().unwrap().to_owned());
    }
    snapshots.sort();
    assert_eq!(
        snapshots,
        ["quotes.A", "quotes.B", "scores.epl.ARS-CHE"],
        "quotes.* must not match quotes.deep.C"
    );

    // A channel created after the subscribe starts with its own snapshot.
    producer.publish("quotes.NEW", json!({"bid": 9})).await;
    producer.publish("quotes.NEW", json!({"bid": 10})).await;
    producer.publish("quotes.deep.C", json!({"bid": 4})).await;
    producer
        .publish("scores.nba.LAL-BOS", json!({"home_score": 2}))
        .await;
    let first = client.recv().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["channel"].as_str(),
            first["seq"].as_u64()
        ),
        (Some("snapshot"), Some("quotes.NEW"), Some(1))
    );
    assert_eq!(first["data"], json!({"bid": 9}));
    let second = client.recv().await;
    assert_eq!(
        (
            second["type"].as_str(),
            second["seq"].as_u64(),
            second["prev"].as_u64()
        ),
        (Some("update"), Some(2), Some(1))
    );
    let third = client.recv().await;
    assert_eq!(
        (third["type"].as_str(), third["channel"].as_str()),
        (Some("snapshot"), Some("scores.nba.LAL-BOS"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_stops_updates() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["quotes.A", "marker.M"]).await;
    producer.publish("quotes.A", json!({"bid": 1})).await;
    assert_eq!(client.recv().await["channel"], "quotes.A");

    client
        .send(json!({"op":"unsubscribe","id":2,"channels":["quotes.A"]}))
        .await;
    assert_eq!(
        client.recv().await,
        json!({"type":"unsubscribed","id":2,"channels":["quotes.A"]})
    );
    producer.publish("quotes.A", json!({"bid": 2})).await;
    producer.publish("marker.M", json!({"x": 1})).await;
    // The feed keeps order, so the marker arriving first proves quotes.A was not sent.
    let next = client.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["channel"].as_str()),
        (Some("snapshot"), Some("marker.M"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_pattern_keeps_a_channel_that_an_exact_unsubscribe_names() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["quotes.*", "quotes.A"]).await;
    producer.publish("quotes.A", json!({"bid": 1})).await;
    assert_eq!(client.recv().await["type"], "snapshot");
    client
        .send(json!({"op":"unsubscribe","id":2,"channels":["quotes.A"]}))
        .await;
    assert_eq!(client.recv().await["type"], "unsubscribed");
    producer.publish("quotes.A", json!({"bid": 2})).await;
    let next = client.recv().await;
    assert_eq!(
        (
            next["type"].as_str(),
            next["seq"].as_u64(),
            next["prev"].as_u64()
        ),
        (Some("update"), Some(2), Some(1))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn ping_gets_pong_with_its_id() {
    let server = start_server(&[], |_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.send(json!({"op":"ping","id":3})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":3}));
    client.send(json!({"op":"ping"})).await;
    assert_eq!(client.recv().await, json!({"type":"pong"}));
    // A WebSocket-level ping is answered with a pong carrying its payload.
    client
        .ws
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(DEADLINE, async {
        loop {
            use futures_util::StreamExt;
            if let Some(Ok(Message::Pong(p))) = client.ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"hi");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_session_lives_on() {
    let server = start_server(&[], |_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.send_text("{not json").await;
    let e = client.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert!(e["message"].as_str().unwrap().contains("JSON"));

    client.send(json!({"op":"dance","id":4})).await;
    let e = client.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("bad_request"), Some(4))
    );

    client
        .send(json!({"op":"subscribe","id":5,"channels":[]}))
        .await;
    assert_eq!(
        client.recv().await["message"],
        "channels must be a non-empty array"
    );

    client
        .send(json!({"op":"subscribe","id":6,"channels":["bad..name"]}))
        .await;
    assert_eq!(client.recv().await["id"], 6);

    client
        .ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(client.recv().await["code"], "bad_request");

    client.send(json!({"op":"ping","id":7})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":7}));
    server.shutdown().await;
}

#[tokio::test]
async fn subscription_limit_is_enforced_with_an_error() {
    let server = start_server(&[], |s| s.limits.max_subscriptions_per_connection = 2).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["a.x", "a.y"]).await;
    client
        .send(json!({"op":"subscribe","id":2,"channels":["a.z"]}))
        .await;
    let e = client.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("limit"), Some(2))
    );
    client.send(json!({"op":"ping","id":3})).await;
    assert_eq!(client.recv().await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_is_closed_with_1009() {
    let server = start_server(&[], |s| s.limits.max_message_bytes = 1024).await;
    let mut client = Client::connect(server.addr).await;
    client
        .send_text(&format!(
            "{{\"op\":\"ping\",\"pad\":\"{}\"}}",
            "x".repeat(900)
        ))
        .await;
    assert_eq!(
        client.recv().await["type"],
        "pong",
        "under the limit is fine"
    );
    client.send_text(&"x".repeat(2000)).await;
    assert_eq!(client.expect_close().await, CloseCode::Size);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let server = start_server(&[], |_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.send(json!({"op":"ping","id":1})).await;
    assert_eq!(client.recv().await["type"], "pong");
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(client.expect_close().await, CloseCode::Away);
    drop(client);
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http_endpoints_report_channels_and_health() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    producer
        .publish("quotes.A", json!({"bid": 1, "ask": 2}))
        .await;
    producer.publish("quotes.A", json!({"ask": null})).await;
    let engine = server.engine.clone();
    wait_for(
        || {
            let e = engine.clone();
            async move { e.snapshot("quotes.A").await.unwrap().filter(|s| s.seq == 2) }
        },
        "two updates",
    )
    .await;

    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    let (status, body) = http_get(server.addr, "/channels").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"channels":[{"name":"quotes.A","seq":2}]})
    );
    let (status, body) = http_get(server.addr, "/channels/quotes.A").await;
    assert_eq!(status, 200);
    let snapshot: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (snapshot["seq"].as_u64(), &snapshot["data"]),
        (Some(2), &json!({"bid": 1}))
    );
    assert_eq!(http_get(server.addr, "/channels/nope").await.0, 404);
    let (status, page) = http_get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/app.js"), "the page loads its script");
    // ... which talks to the server through the client library.
    let (status, client) = http_get(server.addr, "/tickcast.js").await;
    assert_eq!(status, 200);
    assert!(
        client.contains("new this.WebSocket("),
        "the client opens a WebSocket"
    );
    server.shutdown().await;
}
