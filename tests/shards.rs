//! Engine shards: sessions are spread over several engine tasks, each with
//! its own copy of the channel states. Whatever shard a client lands on, it
//! must see the same seqs and end with the same state as the server.

mod common;

use common::*;
use serde_json::{json, Value};

const SHARDS: usize = 3;
/// Two clients per shard (session ids are handed out in turn).
const CLIENTS: usize = 2 * SHARDS;
const UPDATES: u64 = 300;

#[tokio::test]
async fn every_shard_delivers_the_same_seqs_and_states() {
    let (server, feed) = start_with_tcp_feed(|s| s.engine_shards = SHARDS).await;
    assert_eq!(server.engine.shards(), SHARDS);
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.A", json!({"bid": 0})).await;
    wait_for_channel(&server, "quotes.A").await;

    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let mut client = Client::connect(server.addr).await;
        client.subscribe(id as i64, &["quotes.>"]).await;
        let mut follower = Follower::default();
        follower.apply(&client.recv().await);
        clients.push((client, follower));
    }
    // quotes.B appears mid-stream: every shard must create it with seq 1.
    for n in 1..=UPDATES {
        let channel = if n > UPDATES / 2 && n % 2 == 0 {
            "quotes.B"
        } else {
            "quotes.A"
        };
        let patch = if n % 7 == 0 {
            json!({"ask": null, "n": n})
        } else {
            json!({"bid": n, "ask": n + 1})
        };
        producer.publish(channel, patch).await;
    }
    let a = wait_for_seq(&server, "quotes.A").await;
    let b = wait_for_seq(&server, "quotes.B").await;
    assert_eq!(a.seq + b.seq, UPDATES + 1, "each record applied once");

    for (client, follower) in &mut clients {
        while follower.channels.get("quotes.A").map(|c| c.0) != Some(a.seq)
            || follower.channels.get("quotes.B").map(|c| c.0) != Some(b.seq)
        {
            follower.apply(&client.recv().await);
        }
        assert_eq!(
            follower.channels["quotes.A"].1,
            Value::Object(a.data.clone())
        );
        assert_eq!(
            follower.channels["quotes.B"].1,
            Value::Object(b.data.clone())
        );
    }
    let stats = server.engine.stats();
    assert_eq!(
        stats.sessions, CLIENTS as u64,
        "sessions summed over shards"
    );
    assert_eq!(stats.channels, 2, "channels counted once, not per shard");
    assert_eq!(stats.updates_applied, UPDATES + 1);
    server.shutdown().await;
}

/// The channel's final snapshot, once every record has been applied.
async fn wait_for_seq(
    server: &tickcast::RunningServer,
    name: &str,
) -> tickcast::engine::ChannelSnapshot {
    let engine = server.engine.clone();
    wait_for(
        || {
            let engine = engine.clone();
            let name = name.to_owned();
            async move {
                // Once the answering shard has applied every record, its
                // snapshot (queued behind them) is the final state.
                if engine.stats().updates_applied != UPDATES + 1 {
                    return None;
                }
                engine.snapshot(&name).await.ok()?
            }
        },
        name,
    )
    .await
}
