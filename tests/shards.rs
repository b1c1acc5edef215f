//! Fanout shards: sessions are spread over several shard tasks, all fed by
//! one state stage that keeps each channel once. Whatever shard a client
//! lands on, and whenever it joins, it must see the server's seqs and end
//! with the server's state, its `prev` chain unbroken.

mod common;

use common::*;
use serde_json::{json, Value};
use tickcast::RunningServer;

const UPDATES: u64 = 300;

#[tokio::test]
async fn every_shard_delivers_the_same_seqs_and_states() {
    every_client_ends_with_the_servers_state(3, 6).await;
}

/// Far more shards than cores (this machine has 2), and no fixed gate
/// limit in the rings: a server with 64 shards starts, and clients on 64
/// different shards all end with the server's exact seqs and states.
#[tokio::test]
async fn sixty_four_shards_on_a_small_machine() {
    every_client_ends_with_the_servers_state(64, 64).await;
}

/// `clients` clients (session ids are handed out in turn, so they land on
/// `min(clients, shards)` shards) follow two channels, one of which
/// appears mid-stream.
async fn every_client_ends_with_the_servers_state(shards: usize, clients: usize) {
    let (server, feed) = start_with_tcp_feed(|s| s.engine_shards = shards).await;
    assert_eq!(server.engine.shards(), shards);
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.A", json!({"bid": 0})).await;
    wait_for_channel(&server, "quotes.A").await;

    let mut followers = Vec::new();
    for id in 0..clients {
        let mut client = Client::connect(server.addr).await;
        client.subscribe(id as i64, &["quotes.>"]).await;
        let mut follower = Follower::default();
        follower.apply(&client.recv().await);
        followers.push((client, follower));
    }
    // quotes.B appears mid-stream: every client gets it from seq 1.
    for n in 1..=UPDATES {
        let channel = if n > UPDATES / 2 && n.is_multiple_of(2) {
            "quotes.B"
        } else {
            "quotes.A"
        };
        let patch = if n.is_multiple_of(7) {
            json!({"ask": null, "n": n})
        } else {
            json!({"bid": n, "ask": n + 1})
        };
        producer.publish(channel, patch).await;
    }
    let a = wait_for_final(&server, "quotes.A", UPDATES + 1).await;
    let b = wait_for_final(&server, "quotes.B", UPDATES + 1).await;
    assert_eq!(a.seq + b.seq, UPDATES + 1, "each record applied once");

    for (client, follower) in &mut followers {
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
        stats.sessions, clients as u64,
        "sessions summed over shards"
    );
    assert_eq!(stats.channels, 2, "channels counted once, not per shard");
    assert_eq!(stats.updates_applied, UPDATES + 1);
    server.shutdown().await;
}

/// The subscribe race: each client subscribes, as the only subscriber of
/// its channel, while a feed floods that channel (on four shards); one
/// more waits on a pattern for a channel that appears mid-flood. The state
/// stage hands an update off only if its channel has subscribers at that
/// moment, so a subscriber that counted itself after reading the state it
/// starts from would miss the updates applied in between: its final state
/// would differ from the server's (every update leaves its own mark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_during_a_flood_miss_nothing() {
    const FLOOD: u64 = 16_000;
    const JOINERS: u64 = 8;
    const CHUNK: u64 = FLOOD / (JOINERS + 1);
    // Record n goes to late.X (created half-way) or to one of the joiners'
    // channels, in turn.
    let channel_of = |n: u64| {
        if n > FLOOD / 2 && n.is_multiple_of(5) {
            "late.X".to_owned()
        } else {
            format!("race.c{}", n % JOINERS)
        }
    };
    let final_seq = |name: &str| (1..=FLOOD).filter(|&n| channel_of(n) == name).count() as u64;

    let (server, feed) = start_with_tcp_feed(|s| s.engine_shards = 4).await;
    let mut producer = Producer::connect(feed).await;
    let mut early = Client::connect(server.addr).await;
    early.subscribe(100, &["late.>"]).await;

    // The producer tells the test each time it has written a chunk, and
    // goes on writing: each joiner subscribes while the next chunk flows.
    let (written, mut chunks) = tokio::sync::mpsc::channel::<u64>(JOINERS as usize + 1);
    let flood = tokio::spawn(async move {
        // Written a few hundred lines at a time, so the state stage is busy
        // applying records back to back while the joiners subscribe.
        let mut batch = Vec::new();
        for n in 1..=FLOOD {
            // Every update leaves its own mark in the state (a member of
            // its own, or the removal of an older one), so a missed update
            // shows in the final state even if the chain looks unbroken.
            let patch = if n.is_multiple_of(11) {
                json!({"n": n, format!("u{}", n.saturating_sub(5 * JOINERS)): null})
            } else {
                json!({"n": n, format!("u{n}"): n})
            };
            batch.push(json!({"channel": channel_of(n), "data": patch}).to_string());
            if n.is_multiple_of(200) || n == FLOOD {
                producer.send_line(&batch.join("\n")).await;
                batch.clear();
            }
            if n.is_multiple_of(CHUNK) {
                let _ = written.try_send(n / CHUNK - 1);
            }
        }
        producer
    });
    let mut joiners = Vec::new();
    while let Some(joiner) = chunks.recv().await {
        if joiner >= JOINERS {
            continue;
        }
        let addr = server.addr;
        let name = format!("race.c{joiner}");
        let last = final_seq(&name);
        joiners.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.subscribe(joiner as i64, &[name.as_str()]).await;
            let mut follower = Follower::default();
            while follower.channels.get(&name).map(|c| c.0) != Some(last) {
                follower.apply(&client.recv().await);
            }
            (name, follower)
        }));
    }
    let _producer = flood.await.unwrap();
    assert_eq!(joiners.len() as u64, JOINERS);
    let mut late = Follower::default();
    while late.channels.get("late.X").map(|c| c.0) != Some(final_seq("late.X")) {
        late.apply(&early.recv().await);
    }
    let x = wait_for_final(&server, "late.X", FLOOD).await;
    assert_eq!(late.channels["late.X"].1, Value::Object(x.data));
    for joiner in joiners {
        let (name, follower) = joiner.await.expect("the chain never broke");
        let server_state = wait_for_final(&server, &name, FLOOD).await;
        assert_eq!(server_state.seq, final_seq(&name));
        assert_eq!(
            follower.channels[&name].1,
            Value::Object(server_state.data),
            "{name}"
        );
    }
    server.shutdown().await;
}

/// The channel's final snapshot, once all `records` have been applied.
async fn wait_for_final(
    server: &RunningServer,
    name: &str,
    records: u64,
) -> tickcast::engine::ChannelSnapshot {
    let engine = server.engine.clone();
    wait_for(
        || {
            let engine = engine.clone();
            let name = name.to_owned();
            async move {
                // Read from the channel directory: once the state stage has
                // applied every record, this is the final state.
                if engine.stats().updates_applied != records {
                    return None;
                }
                engine.snapshot(&name).await.ok()?
            }
        },
        name,
    )
    .await
}
