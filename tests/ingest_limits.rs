//! Feed ingest limits (issue 9): producer connections per tcp feed, the
//! producer idle timeout, rate-limited rejection logs, the channel count,
//! channel state size and history memory. Each limit is set through its
//! `[limits]` key and checked through what an operator or client sees.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tickcast::feed::{FeedLimits, FeedOutput, FeedStats, FeedStatus, RingItem, Speed};
use tickcast::record::FeedRecord;
use tickcast::ring::Ring;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Everything the server sends on `stream` until it closes it.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection before the deadline")
        .expect("read");
    String::from_utf8(got).expect("utf-8")
}

/// The value of the one /metrics sample whose name and labels are `series`.
async fn metric(server: &tickcast::RunningServer, series: &str) -> u64 {
    let (_, body) = http_get(server.addr, "/metrics").await;
    let line = body
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics"));
    line[series.len() + 1..].parse().expect("a count")
}

async fn stats_json(server: &tickcast::RunningServer) -> Value {
    let (_, body) = http_get(server.addr, "/stats").await;
    serde_json::from_str(&body).expect("JSON")
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(|| std::future::ready(condition().then_some(())), what).await;
}

/// The case, with the default `max_producers_per_feed` (64): 64
/// silent producers used to hold every later one in the listen backlog for
/// as long as they stayed. Now the 65th is told why in one JSON line and
/// closed at once, and the served ones still publish.
#[tokio::test]
async fn a_producer_past_the_limit_gets_an_error_line_and_is_closed() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let stats = server.feeds[0].clone();
    let mut served = Vec::new();
    for _ in 0..64 {
        served.push(Producer::connect(feed).await);
    }
    wait_until("64 producers served", || stats.producers() == 64).await;

    let mut extra = TcpStream::connect(feed).await.expect("connect");
    let said = read_until_closed(&mut extra).await;
    assert_eq!(said.lines().count(), 1, "{said:?}");
    let error: Value = serde_json::from_str(said.trim_end()).expect("one JSON line");
    assert_eq!(
        error["error"],
        "too many producers on this feed (limits.max_producers_per_feed = 64)"
    );
    assert_eq!(stats.producers_refused(), 1);
    let series = format!(
        "tickcast_feed_producers_refused_total{{feed=\"{}\"}}",
        stats.name
    );
    assert_eq!(metric(&server, &series).await, 1);
    assert_eq!(
        stats_json(&server).await["feeds"][0]["producers_refused"],
        1
    );

    served[0].publish("p.a", json!({"n": 1})).await;
    served[63].publish("p.b", json!({"n": 1})).await;
    assert_eq!(wait_for_channel(&server, "p.a").await.seq, 1);
    assert_eq!(wait_for_channel(&server, "p.b").await.seq, 1);
    server.shutdown().await;
}

/// A producer that sends nothing, and one that stops half-way through a
/// line, are closed after `producer_idle_timeout_ms`, counted, and their
/// slots serve the next producers.
#[tokio::test]
async fn silent_and_half_line_producers_are_closed_after_the_idle_timeout() {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.max_producers_per_feed = 2;
        s.limits.producer_idle_timeout_ms = 200;
    })
    .await;
    let stats = server.feeds[0].clone();
    let mut silent = TcpStream::connect(feed).await.expect("connect");
    let mut half = TcpStream::connect(feed).await.expect("connect");
    half.write_all(b"{\"channel\":\"i.half\",\"da")
        .await
        .expect("write");
    let said = read_until_closed(&mut silent).await;
    assert!(said.contains("limits.producer_idle_timeout_ms"), "{said}");
    read_until_closed(&mut half).await;
    wait_until("both counted", || stats.producers_idle_closed() == 2).await;
    let series = format!(
        "tickcast_feed_producers_idle_closed_total{{feed=\"{}\"}}",
        stats.name
    );
    assert_eq!(metric(&server, &series).await, 2);

    let mut next = Producer::connect(feed).await;
    next.publish("i.next", json!({"n": 1})).await;
    assert_eq!(wait_for_channel(&server, "i.next").await.seq, 1);
    assert!(server.engine.snapshot("i.half").await.unwrap().is_none());
    server.shutdown().await;
}

/// A log sink for one test: everything the fmt layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// 10,000 bad lines (NUL, ESC, CR, bytes that are not UTF-8, a 20 KB line)
/// give a handful of short log lines without a control byte, and exact
/// counts. They used to give one raw log line each.
#[tokio::test]
async fn ten_thousand_bad_lines_log_a_few_short_clean_lines() {
    const PER_INTERVAL: u32 = 10;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let ring: Ring<RingItem> = Ring::with_capacity(64);
    let mut consumer = ring.consumer();
    let stats = Arc::new(FeedStats::new("bad-feed".into()));
    let limits = FeedLimits {
        reject_log_per_interval: PER_INTERVAL,
        reject_log_interval: Duration::from_secs(3600),
        ..FeedLimits::default()
    };
    let out = FeedOutput::new(ring.producer(), stats.clone()).with_limits(limits);
    let huge = format!("[\"{}\u{1b}[2J", "\0".repeat(20_000));
    let bad: [&[u8]; 5] = [
        b"\0\0\x1b[31mred\rcarriage\x07\n",
        b"{\"channel\":\"a\xff\xfe\",\"data\":{}}\n",
        b"{\"channel\":\"esc\\u001b[2J\",\"data\":{}}\n",
        b"{\"channel\":\"ok.a\",\"data\":[\"\\u0000\"]}\r\n",
        huge.as_bytes(),
    ];
    let mut input = Vec::new();
    for i in 0..10_000 {
        input.extend_from_slice(bad[i % bad.len()]);
        if i % bad.len() == 4 {
            input.push(b'\n');
        }
    }
    input.extend_from_slice(b"{\"channel\":\"ok.last\",\"data\":{\"n\":1}}\n");
    let no_pacing = |_: &FeedRecord| std::future::ready(());
    let counts = out
        .ingest_lines(&input[..], &CancellationToken::new(), no_pacing)
        .await
        .expect("read");
    assert_eq!((counts.rejected, counts.accepted), (10_000, 1));
    assert_eq!(stats.rejected_total(), 10_000);
    assert_eq!(
        consumer
            .recv()
            .await
            .unwrap()
            .take()
            .unwrap()
            .channel
            .as_str(),
        "ok.last"
    );
    assert_eq!(
        stats.rejections_not_logged(),
        10_000 - u64::from(PER_INTERVAL)
    );

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).expect("the log is UTF-8");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        (PER_INTERVAL as usize..=PER_INTERVAL as usize + 2).contains(&lines.len()),
        "{} log lines:\n{log}",
        lines.len()
    );
    assert!(
        !log.bytes().any(|b| (b < 0x20 && b != b'\n') || b == 0x7f),
        "control bytes in the log:\n{log:?}"
    );
    for line in &lines {
        assert!(line.len() < 1_000, "a long log line: {line}");
    }
    assert!(log.contains("\\u{1b}[31mred\\u{d}carriage"), "{log}");
}

/// `max_channels`: records that would create a channel past it are dropped
/// and counted (/metrics and /stats) while existing channels go on.
#[tokio::test]
async fn records_for_channels_past_max_channels_are_dropped_and_counted() {
    let (server, feed) = start_with_tcp_feed(|s| s.limits.max_channels = 3).await;
    let mut producer = Producer::connect(feed).await;
    for c in 1..=5 {
        producer.publish(&format!("c.{c}"), json!({"n": 1})).await;
    }
    producer.publish("c.1", json!({"n": 2})).await;
    let engine = server.engine.clone();
    wait_for(
        || {
            let engine = engine.clone();
            async move { engine.snapshot("c.1").await.unwrap().filter(|s| s.seq == 2) }
        },
        "c.1 updated past the limit",
    )
    .await;
    for c in [4, 5] {
        let name = format!("c.{c}");
        assert!(server.engine.snapshot(&name).await.unwrap().is_none());
    }
    assert_eq!(server.engine.stats().channels, 3);
    let series = "tickcast_records_dropped_total{reason=\"max_channels\"}";
    assert_eq!(metric(&server, series).await, 2);
    assert_eq!(
        stats_json(&server).await["records_dropped"]["max_channels"],
        2
    );
    server.shutdown().await;
}

/// `max_state_bytes`: a record that would make a state too big is dropped
/// and counted; the channel keeps its state and seq, so a subscriber sees
/// the next update chain on with no gap; a too-big first record creates no
/// channel.
#[tokio::test]
async fn a_record_that_would_make_a_state_too_big_is_dropped_without_a_gap() {
    let (server, feed) = start_with_tcp_feed(|s| s.limits.max_state_bytes = 1_000).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["s.>"]).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("s.a", json!({"small": 1})).await;
    let snapshot = client.recv().await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["seq"].as_u64()),
        (Some("snapshot"), Some(1))
    );

    let big = "x".repeat(2_000);
    producer.publish("s.a", json!({ "big": big })).await;
    producer.publish("s.b", json!({ "big": big })).await;
    producer.publish("s.a", json!({"small": 2})).await;
    let update = client.recv().await;
    assert_eq!(update["type"], "update");
    assert_eq!(
        (update["seq"].as_u64(), update["prev"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(update["data"], json!({"small": 2}));

    let state = server.engine.snapshot("s.a").await.unwrap().expect("s.a");
    assert_eq!(
        (state.seq, Value::Object(state.data)),
        (2, json!({"small": 2}))
    );
    assert!(server.engine.snapshot("s.b").await.unwrap().is_none());
    assert_eq!(server.engine.stats().records_dropped_state_size, 2);
    let series = "tickcast_records_dropped_total{reason=\"max_state_bytes\"}";
    assert_eq!(metric(&server, series).await, 2);
    server.shutdown().await;
}

/// `max_total_state_bytes`: a producer spreading its data over many
/// channels is stopped by the total, not only by the channel count. Once the
/// states together are full, a record that grows one is dropped (its
/// channel keeps its state and seq, so a subscriber sees no gap), a record
/// that shrinks one still goes through, and the room it frees can be used.
#[tokio::test]
async fn all_states_together_stay_within_the_total_budget() {
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.max_state_bytes = 3_000;
        s.limits.max_total_state_bytes = 5_000;
    })
    .await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["t.a"]).await;
    let mut producer = Producer::connect(feed).await;
    let kilobyte = "x".repeat(1_000);
    // Each state is {"v":"x..."}: about 1,008 bytes; four fit, the fifth
    // and sixth do not.
    for c in ["a", "b", "c", "d", "e", "f"] {
        producer
            .publish(&format!("t.{c}"), json!({ "v": kilobyte }))
            .await;
    }
    // Growing a full budget is refused; shrinking t.a frees room for t.e.
    producer.publish("t.a", json!({ "w": kilobyte })).await;
    producer.publish("t.a", json!({ "v": null })).await;
    producer.publish("t.e", json!({ "v": "fits now" })).await;

    let engine = server.engine.clone();
    wait_for(
        || {
            let engine = engine.clone();
            async move { engine.snapshot("t.e").await.unwrap() }
        },
        "t.e created once t.a shrank",
    )
    .await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot["seq"], 1);
    let update = client.recv().await;
    assert_eq!(
        (update["seq"].as_u64(), update["prev"].as_u64()),
        (Some(2), Some(1)),
        "the refused growth used no seq: {update}"
    );
    assert_eq!(update["data"], json!({ "v": null }));
    assert!(server.engine.snapshot("t.f").await.unwrap().is_none());
    let a = server.engine.snapshot("t.a").await.unwrap().expect("t.a");
    assert_eq!((a.seq, Value::Object(a.data)), (2, json!({})));

    let series = "tickcast_records_dropped_total{reason=\"max_total_state_bytes\"}";
    // t.e and t.f at first, then t.a's growth.
    assert_eq!(metric(&server, series).await, 3);
    let stats = stats_json(&server).await;
    assert_eq!(stats["records_dropped"]["max_total_state_bytes"], 3);
    let used = stats["state_bytes"].as_u64().expect("state_bytes");
    assert!((3_000..=5_000).contains(&used), "state_bytes {used}");
    server.shutdown().await;
}

/// The default `max_state_bytes` lets the real Coinbase recording through,
/// order books of 915 KB and 441 KB included.
#[tokio::test]
async fn the_default_state_bound_passes_the_real_order_books() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/feeds/coinbase-advanced-trade_2026-08-09_BTC-USD-ETH-USD.ndjson"
    );
    let server = start_server(&[&format!("replay:{path}")], |s| {
        s.replay.speed = Speed::Max;
    })
    .await;
    let feed = server.feeds[0].clone();
    wait_until("the replay finished", || {
        feed.status() == FeedStatus::Finished
    })
    .await;
    let engine = server.engine.clone();
    wait_until("every record applied", || {
        engine.stats().updates_applied == feed.accepted()
    })
    .await;
    assert_eq!(feed.accepted(), 1016);
    assert_eq!(server.engine.stats().records_dropped_state_size, 0);
    let book = server
        .engine
        .snapshot("book.BTC-USD")
        .await
        .unwrap()
        .expect("book");
    assert!(serde_json::to_vec(&book.data).unwrap().len() > 900_000);
    server.shutdown().await;
}

/// `max_history_bytes`: 1,000 channels flooded far past the budget hold at
/// most the budget (engine counter), each keeps its latest
/// updates for resume, and a resume that needs a trimmed entry is answered
/// with a resync snapshot.
#[tokio::test]
async fn history_of_many_flooded_channels_stays_within_the_budget() {
    const CHANNELS: usize = 1_000;
    const ROUNDS: u64 = 12;
    const BUDGET: usize = 1 << 20;
    let (server, feed) = start_with_tcp_feed(|s| {
        s.limits.max_history_bytes = BUDGET;
        s.engine_shards = 2;
    })
    .await;
    let pad = "p".repeat(100);
    let mut text = String::new();
    for round in 1..=ROUNDS {
        for c in 0..CHANNELS {
            let line = json!({"channel": format!("h.{c}"), "data": {"n": round, "pad": pad}});
            text += &format!("{line}\n");
        }
    }
    // Unbounded, this would hold every update: 12,000 entries, ~3.3 MB.
    let mut producer = TcpStream::connect(feed).await.expect("connect");
    producer.write_all(text.as_bytes()).await.expect("write");
    let engine = server.engine.clone();
    wait_until("every update applied", || {
        engine.stats().updates_applied == ROUNDS * CHANNELS as u64
    })
    .await;
    let stats = server.engine.stats();
    assert!(stats.history_bytes <= BUDGET as u64, "{stats:?}");
    assert!(
        stats.history_bytes > BUDGET as u64 * 9 / 10,
        "the budget was filled: {stats:?}"
    );
    assert!(stats.history_trimmed > 0, "{stats:?}");
    assert_eq!(
        metric(&server, "tickcast_history_bytes").await,
        stats.history_bytes
    );

    let epoch = server.engine.epoch().to_owned();
    let mut client = Client::connect(server.addr).await;
    client
        .send(json!({"op": "subscribe", "id": 1, "channels": ["h.7"],
                     "since": {"h.7": 1}, "epoch": epoch}))
        .await;
    assert_eq!(client.recv().await["type"], "subscribed");
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["resync"], true, "{snapshot}");
    assert_eq!(snapshot["seq"], ROUNDS);

    // The latest updates are still held: a recent resume is replayed.
    let mut client = Client::connect(server.addr).await;
    client
        .send(json!({"op": "subscribe", "id": 2, "channels": ["h.8"],
                     "since": {"h.8": ROUNDS - 1}, "epoch": epoch}))
        .await;
    assert_eq!(client.recv().await["type"], "subscribed");
    let update = client.recv().await;
    assert_eq!(update["type"], "update", "{update}");
    assert_eq!(update["seq"], ROUNDS);
    server.shutdown().await;
}
