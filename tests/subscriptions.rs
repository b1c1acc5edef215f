//! Subscription options against a live server over real sockets: `fields`,
//! `max_hz`, `since` + `epoch` (including across a restart), and stream
//! namespaces (no `max_hz`, 1013 for a slow subscriber, resume with every
//! seq).

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tickcast::engine::{Mode, NamespacePolicy, Namespaces};
use tickcast::RunningServer;
use tokio_tungstenite::tungstenite::Message;

/// Waits until the server holds `channel` at `seq`.
async fn wait_seq(server: &RunningServer, channel: &str, seq: u64) -> Value {
    let engine = server.engine.clone();
    let snapshot = wait_for(
        || {
            let engine = engine.clone();
            let channel = channel.to_owned();
            async move {
                engine
                    .snapshot(&channel)
                    .await
                    .unwrap()
                    .filter(|s| s.seq >= seq)
            }
        },
        &format!("{channel} at seq {seq}"),
    )
    .await;
    assert_eq!(snapshot.seq, seq, "{channel} went past {seq}");
    Value::Object(snapshot.data)
}

/// Sends a subscribe with `extra` members and checks the `subscribed` reply.
async fn subscribe_with(client: &mut Client, id: i64, channels: &[&str], extra: Value) {
    let mut message = json!({"op": "subscribe", "id": id, "channels": channels});
    for (k, v) in extra.as_object().unwrap() {
        message[k] = v.clone();
    }
    client.send(message).await;
    let reply = client.recv().await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "id": id, "channels": channels})
    );
}

fn kind_seq_prev(m: &Value) -> (&str, u64, Option<u64>) {
    (
        m["type"].as_str().unwrap(),
        m["seq"].as_u64().unwrap(),
        m["prev"].as_u64(),
    )
}

fn stream_namespace(history: usize) -> Namespaces {
    Namespaces::default().with(
        "trades",
        NamespacePolicy {
            mode: Mode::Stream,
            history,
        },
    )
}

#[tokio::test]
async fn fields_filter_snapshots_and_diffs_and_prev_still_chains() {
    // One engine shard, so the three subscribers share one shard's encoding.
    let (server, feed) = start_with_tcp_feed(|s| s.engine_shards = 1).await;
    let mut producer = Producer::connect(feed).await;
    producer
        .publish("quotes.A", json!({"bid": 1, "ask": 2, "volume": 10}))
        .await;
    wait_seq(&server, "quotes.A", 1).await;

    let fields = json!({"fields": ["bid", "ask"]});
    let mut clients = Vec::new();
    for id in 0..3 {
        let mut client = Client::connect(server.addr).await;
        subscribe_with(&mut client, id, &["quotes.A", "marker.M"], fields.clone()).await;
        let snapshot = client.recv().await;
        assert_eq!(kind_seq_prev(&snapshot), ("snapshot", 1, None));
        assert_eq!(
            snapshot["data"],
            json!({"bid": 1, "ask": 2}),
            "only the fields"
        );
        clients.push(client);
    }

    let encoded_before = server.engine.stats().frames_encoded;
    producer.publish("quotes.A", json!({"volume": 11})).await; // seq 2: no field
    producer
        .publish("quotes.A", json!({"bid": 3, "volume": 12}))
        .await; // seq 3
    for client in &mut clients {
        let update = client.recv().await;
        assert_eq!(
            kind_seq_prev(&update),
            ("update", 3, Some(1)),
            "seq 2 skipped, prev chains"
        );
        assert_eq!(update["data"], json!({"bid": 3}));
    }
    // Three subscribers with the same filter share one encoded frame.
    let encoded = server.engine.stats().frames_encoded - encoded_before;
    assert_eq!(encoded, 1, "one encoding for one distinct (filter, prev)");

    // An update touching none of the fields is not sent: the marker, published
    // after it on the same feed, arrives first.
    producer.publish("quotes.A", json!({"volume": 13})).await; // seq 4
    producer.publish("marker.M", json!({"x": 1})).await;
    producer.publish("quotes.A", json!({"ask": null})).await; // seq 5
    for client in &mut clients {
        let marker = client.recv().await;
        assert_eq!(
            (marker["type"].as_str(), marker["channel"].as_str()),
            (Some("snapshot"), Some("marker.M"))
        );
        let update = client.recv().await;
        assert_eq!(kind_seq_prev(&update), ("update", 5, Some(3)));
        assert_eq!(
            update["data"],
            json!({"ask": null}),
            "a deleted field is sent as null"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn max_hz_merges_a_burst_into_few_updates_that_end_at_the_servers_state() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    producer
        .publish("quotes.B", json!({"bid": 0, "ask": 1}))
        .await;
    wait_seq(&server, "quotes.B", 1).await;

    let mut client = Client::connect(server.addr).await;
    subscribe_with(&mut client, 1, &["quotes.B"], json!({"max_hz": 10})).await;
    let mut follower = Follower::default();
    follower.apply(&client.recv().await);

    for i in 1..=100 {
        let patch = match i % 10 {
            3 => json!({"ask": null, "n": i}),
            7 => json!({"book": {"lvl1": i, "lvl2": null}}),
            _ => json!({"bid": i, "ask": i + 1}),
        };
        producer.publish("quotes.B", patch).await;
    }
    let state = wait_seq(&server, "quotes.B", 101).await;
    // The Follower checks the prev chain on every update it applies.
    while follower.channels["quotes.B"].0 < 101 {
        follower.apply(&client.recv().await);
    }
    assert_eq!(
        follower.channels["quotes.B"].1, state,
        "the merged diffs end at the server's state"
    );
    assert!(
        follower.updates < 50,
        "100 updates at 10 Hz arrive as a few merged diffs, not {}",
        follower.updates
    );
    assert!(server.engine.stats().coalesced_diffs > 50);
    server.shutdown().await;
}

#[tokio::test]
async fn since_replays_exactly_the_missed_updates_in_order() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.C", json!({"bid": 1})).await;
    wait_seq(&server, "quotes.C", 1).await;

    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["quotes.C"]).await;
    let snapshot = client.recv().await;
    let epoch = snapshot["epoch"].as_str().unwrap().to_owned();
    producer.publish("quotes.C", json!({"bid": 2})).await;
    assert_eq!(kind_seq_prev(&client.recv().await), ("update", 2, Some(1)));
    drop(client);

    let missed: Vec<Value> = (3..=7)
        .map(|i| json!({"bid": i, "note": if i % 2 == 0 { Value::Null } else { json!("odd") }}))
        .collect();
    for patch in &missed {
        producer.publish("quotes.C", patch.clone()).await;
    }
    wait_seq(&server, "quotes.C", 7).await;

    let mut client = Client::connect(server.addr).await;
    let resume = json!({"since": {"quotes.C": 2}, "epoch": epoch});
    subscribe_with(&mut client, 2, &["quotes.C"], resume).await;
    for (i, patch) in missed.iter().enumerate() {
        let update = client.recv().await;
        let seq = 3 + i as u64;
        assert_eq!(kind_seq_prev(&update), ("update", seq, Some(seq - 1)));
        assert_eq!(&update["data"], patch);
    }
    // Then the live chain goes on from the replay, with nothing in between.
    producer.publish("quotes.C", json!({"bid": 8})).await;
    assert_eq!(kind_seq_prev(&client.recv().await), ("update", 8, Some(7)));
    server.shutdown().await;
}

#[tokio::test]
async fn since_too_old_ahead_or_from_another_epoch_gets_a_resync_snapshot() {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.namespaces = Namespaces::default().with(
            "quotes",
            NamespacePolicy {
                mode: Mode::Merge,
                history: 4,
            },
        )
    })
    .await;
    let mut producer = Producer::connect(feed).await;
    for i in 1..=10 {
        producer.publish("quotes.D", json!({"bid": i})).await;
    }
    let state = wait_seq(&server, "quotes.D", 10).await;
    let epoch = server.engine.epoch().to_owned();
    let mut client = Client::connect(server.addr).await;

    let resyncs = [
        json!({"since": {"quotes.D": 2}, "epoch": epoch}), // history holds 7..=10 only
        json!({"since": {"quotes.D": 12}, "epoch": epoch}), // ahead of the channel
        json!({"since": {"quotes.D": 8}, "epoch": "another-run"}),
        json!({"since": {"quotes.D": 8}}), // no epoch at all
    ];
    for (id, resume) in resyncs.into_iter().enumerate() {
        subscribe_with(&mut client, id as i64, &["quotes.D"], resume.clone()).await;
        let snapshot = client.recv().await;
        assert_eq!(kind_seq_prev(&snapshot), ("snapshot", 10, None), "{resume}");
        assert_eq!(snapshot["resync"], true, "{resume}");
        assert_eq!(snapshot["data"], state);
    }
    // Within history it replays; at the current seq nothing is owed.
    subscribe_with(
        &mut client,
        8,
        &["quotes.D"],
        json!({"since": {"quotes.D": 6}, "epoch": epoch}),
    )
    .await;
    for seq in 7..=10 {
        assert_eq!(
            kind_seq_prev(&client.recv().await),
            ("update", seq, Some(seq - 1))
        );
    }
    subscribe_with(
        &mut client,
        9,
        &["quotes.D"],
        json!({"since": {"quotes.D": 10}, "epoch": epoch}),
    )
    .await;
    producer.publish("quotes.D", json!({"bid": 11})).await;
    assert_eq!(
        kind_seq_prev(&client.recv().await),
        ("update", 11, Some(10))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_server_answers_an_old_resume_with_a_resync() {
    let (first, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    for i in 1..=3 {
        producer.publish("quotes.E", json!({"bid": i})).await;
    }
    wait_seq(&first, "quotes.E", 3).await;
    let mut client = Client::connect(first.addr).await;
    client.subscribe(1, &["quotes.E"]).await;
    let held = client.recv().await;
    let old_epoch = held["epoch"].as_str().unwrap().to_owned();
    drop(client);
    first.shutdown().await;

    // A new process: seqs start over, so seq 3 here is not seq 3 there.
    let (second, feed) = start_with_tcp_feed(|_| {}).await;
    let mut producer = Producer::connect(feed).await;
    for i in 1..=5 {
        producer.publish("quotes.E", json!({"ask": i * 10})).await;
    }
    let state = wait_seq(&second, "quotes.E", 5).await;
    let mut client = Client::connect(second.addr).await;
    let resume = json!({"since": {"quotes.E": 3}, "epoch": old_epoch});
    subscribe_with(&mut client, 2, &["quotes.E"], resume).await;
    let snapshot = client.recv().await;
    assert_eq!(kind_seq_prev(&snapshot), ("snapshot", 5, None));
    assert_eq!(snapshot["resync"], true);
    assert_ne!(snapshot["epoch"], json!(old_epoch));
    assert_eq!(snapshot["data"], state);
    second.shutdown().await;
}

#[tokio::test]
async fn stream_namespaces_refuse_max_hz_and_deliver_every_update() {
    let (server, feed) = start_with_tcp_feed(|s| s.namespaces = stream_namespace(1024)).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("trades.X", json!({"px": 1})).await;
    producer.publish("quotes.X", json!({"bid": 1})).await;
    wait_seq(&server, "quotes.X", 1).await;
    let mut client = Client::connect(server.addr).await;
    for (id, channels) in [
        (1, json!(["trades.X"])),
        (2, json!(["quotes.X", "trades.*"])),
    ] {
        client
            .send(json!({"op": "subscribe", "id": id, "channels": channels, "max_hz": 5}))
            .await;
        let error = client.recv().await;
        assert_eq!(
            (error["code"].as_str(), error["id"].as_i64()),
            (Some("unsupported"), Some(id)),
            "{error}"
        );
    }
    // A pattern spanning namespaces is accepted: max_hz applies to the
    // merge channels it covers, never to stream ones.
    subscribe_with(&mut client, 3, &["*.X"], json!({"max_hz": 1})).await;
    let mut follower = Follower::default();
    for _ in 0..2 {
        follower.apply(&client.recv().await);
    }
    for i in 0..30 {
        producer
            .publish("trades.X", json!({"px": i, "qty": 1}))
            .await;
    }
    while follower.channels["trades.X"].0 < 31 {
        let message = client.recv().await;
        assert_eq!(message["channel"], "trades.X", "{message}");
        let (_, seq, prev) = kind_seq_prev(&message);
        assert_eq!(Some(seq - 1), prev, "every trade, none merged");
        follower.apply(&message);
    }
    server.shutdown().await;
}

/// A WebSocket client over a socket with a tiny receive buffer, so that a
/// client that stops reading backs the server up quickly.
async fn slow_client(addr: std::net::SocketAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    Client { ws }
}

#[tokio::test]
async fn a_slow_stream_subscriber_is_closed_with_1013_and_resumes_every_seq() {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.outbox_bytes = 64 * 1024;
        s.namespaces = stream_namespace(100_000);
    })
    .await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("trades.T", json!({"px": 0})).await;
    wait_seq(&server, "trades.T", 1).await;

    let mut client = slow_client(server.addr).await;
    client.subscribe(1, &["trades.T"]).await;
    let snapshot = client.recv().await;
    let epoch = snapshot["epoch"].as_str().unwrap().to_owned();
    let mut seen = vec![snapshot["seq"].as_u64().unwrap()];
    let mut follower = Follower::default();
    follower.apply(&snapshot);

    // Stop reading and publish until the server gives up on the client.
    let pad = "x".repeat(1000);
    let closes = || server.engine.stats().slow_consumer_closes;
    let mut published = 1u64;
    while closes() == 0 {
        assert!(published < 200_000, "the slow client was never closed");
        for _ in 0..100 {
            published += 1;
            producer
                .publish("trades.T", json!({"px": published, "pad": pad}))
                .await;
        }
        wait_seq(&server, "trades.T", published).await;
    }
    // A few more that it can only get by resuming.
    for _ in 0..10 {
        published += 1;
        producer.publish("trades.T", json!({"px": published})).await;
    }
    wait_seq(&server, "trades.T", published).await;

    // Now read: what was queued arrives in order, then the 1013 close.
    let code = tokio::time::timeout(DEADLINE * 3, async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    seen.push(message["seq"].as_u64().unwrap());
                    follower.apply(&message);
                }
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the slow client is closed within the deadline");
    assert_eq!(code, Some(1013), "closed as a slow consumer");

    // Resume from the last seq applied: every missed trade, in order.
    let held = follower.channels["trades.T"].0;
    assert!(held < published, "the client did miss trades");
    let mut client = Client::connect(server.addr).await;
    let resume = json!({"since": {"trades.T": held}, "epoch": epoch});
    subscribe_with(&mut client, 2, &["trades.T"], resume).await;
    while follower.channels["trades.T"].0 < published {
        let message = client.recv().await;
        assert_eq!(
            message["type"], "update",
            "a replay, not a resync: {message}"
        );
        seen.push(message["seq"].as_u64().unwrap());
        follower.apply(&message);
    }
    let expected: Vec<u64> = (1..=published).collect();
    assert_eq!(
        seen, expected,
        "every seq exactly once, in order, across the close"
    );
    server.shutdown().await;
}
