//! `/stats` and `/metrics` report what actually happened on the data path.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn stats_and_metrics_count_every_stage_of_delivered_updates() {
    // Two engine shards, and the three sessions land on both of them: the
    // state stage applies every record once, each update is encoded once
    // for the whole process, and each shard fans it out to its sessions.
    const SHARDS: u64 = 2;
    let (server, feed) = start_with_tcp_feed(|s| s.engine_shards = SHARDS as usize).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(server.addr).await;
        client.subscribe(1, &["m.>"]).await;
        clients.push(client);
    }
    let mut producer = Producer::connect(feed).await;
    producer.publish("m.a", json!({"n": 0})).await;
    for client in &mut clients {
        assert_eq!(client.recv().await["type"], "snapshot");
    }
    for i in 1..=50 {
        producer.publish("m.a", json!({"n": i})).await;
    }
    producer.send_line("not json").await;
    for client in &mut clients {
        for _ in 0..50 {
            assert_eq!(client.recv().await["type"], "update");
        }
    }

    // Every update frame is counted once per subscriber once written; the
    // writer records after the socket accepts, so wait for the count.
    let addr = server.addr;
    let stats: Value = wait_for(
        || async move {
            let (_, body) = http_get(addr, "/stats").await;
            let stats: Value = serde_json::from_str(&body).unwrap();
            (stats["latency"]["end_to_end"]["count"] == 150).then_some(stats)
        },
        "150 timed deliveries",
    )
    .await;
    assert_eq!(stats["connections"], 3);
    assert_eq!(stats["updates_in"], 51);
    assert_eq!(
        stats["frames_encoded"], 50,
        "one encoding per update, shared by every subscriber on every shard"
    );
    assert_eq!(stats["latency"]["feed_to_ring"]["count"], 51);
    // Taken off the feed ring once, by the state stage.
    assert_eq!(stats["latency"]["ring_to_engine"]["count"], 51);
    // Each update fanned out by each shard with subscribers (the first
    // record created the channel: its subscribers got a snapshot).
    assert_eq!(stats["latency"]["engine_to_queued"]["count"], 50 * SHARDS);
    assert_eq!(stats["latency"]["queued_to_written"]["count"], 150);
    let e2e = &stats["latency"]["end_to_end"];
    let (p50, p99, max) = (
        e2e["p50_us"].as_f64().unwrap(),
        e2e["p99_us"].as_f64().unwrap(),
        e2e["max_us"].as_f64().unwrap(),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max,
        "ordered quantiles: {e2e}"
    );
    assert_eq!(stats["feeds"][0]["rejected"]["invalid_json"], 1);
    assert_eq!(stats["feeds"][0]["accepted"], 51);

    let (status, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("tickcast_stage_latency_seconds_count{stage=\"end_to_end\"} 150"),
        "{text}"
    );
    assert!(text
        .contains("tickcast_stage_latency_seconds_bucket{stage=\"end_to_end\",le=\"+Inf\"} 150"));
    assert!(text.contains("tickcast_connections 3"));
    assert!(text.contains("result=\"rejected\",reason=\"invalid_json\"} 1"));
    assert!(text.contains("tickcast_feed_up{feed=\"tcp:127.0.0.1:0\",status=\"running\"} 1"));
    // Every sample line parses as `name{labels} number`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
    server.shutdown().await;
}

/// Every figure of the table is on both pages: a `# TYPE` line of the right
/// type and a sample on `/metrics`, a number under its key on `/stats`; and
/// `/metrics` has no family the table does not know. A counter written to
/// one page and not the other fails here.
#[tokio::test]
async fn every_counter_is_on_both_metrics_and_stats() {
    use std::collections::HashMap;
    use tickcast::http::observe::{metric_table, FEED_METRICS, OTHER_FAMILIES};

    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["c.>"]).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("c.a", json!({"n": 1})).await;
    assert_eq!(client.recv().await["type"], "snapshot");

    let (status, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    let types: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').expect("# TYPE name type"))
        .collect();
    let (_, body) = http_get(server.addr, "/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();

    let mut known = Vec::new();
    for m in metric_table() {
        assert_eq!(types.get(m.name), Some(&m.kind.as_str()), "{}", m.name);
        let series = if m.labels.is_empty() {
            format!("\n{} ", m.name)
        } else {
            format!("\n{}{{{}}} ", m.name, m.labels)
        };
        assert!(text.contains(&series), "no sample {series:?} in /metrics");
        let pointer = format!("/{}", m.json.replace('.', "/"));
        assert!(
            stats.pointer(&pointer).is_some_and(Value::is_u64),
            "/stats has no number at {}: {body}",
            m.json
        );
        known.push(m.name);
    }
    let feed_stats = &stats["feeds"][0];
    for f in &FEED_METRICS {
        let m = &f.metric;
        assert_eq!(types.get(m.name), Some(&m.kind.as_str()), "{}", m.name);
        assert!(text.contains(&format!("\n{}{{feed=", m.name)), "{}", m.name);
        assert!(
            feed_stats[m.json].is_u64(),
            "feeds[0] has no {}: {body}",
            m.json
        );
        known.push(m.name);
    }
    known.extend(OTHER_FAMILIES);
    for name in types.keys() {
        assert!(known.contains(name), "{name} is on /metrics only");
    }
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["engine_sessions"], 1);
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["channels"], 1);
    assert!(text.contains("\ntickcast_slow_consumer_closes_total 0\n"));
    server.shutdown().await;
}
