//! `--record FILE`: every record the engine accepts is written in the
//! replay feed's format, so replaying the file at `--speed max` into a new
//! server gives the same channel states and seqs (plain and gzip); what
//! is buffered is written on SIGTERM; a recording that cannot be written
//! does not slow the feed, it counts what it leaves out.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tickcast::feed::record::RecordOptions;
use tickcast::feed::Speed;
use tickcast::RunningServer;
use tokio::net::TcpStream;

/// Channels the tests publish to, and how many records each ends with.
const CHANNELS: [(&str, u64); 3] = [("quotes.A", 4), ("quotes.B", 3), ("book.A", 3)];

fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("record-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn recording(path: &Path, flush_ms: u64) -> RecordOptions {
    RecordOptions {
        path: path.to_owned(),
        flush_interval: Duration::from_millis(flush_ms),
        queue: 1024,
    }
}

/// Publishes records that set, change and delete fields (merge patches
/// with `null`), interleaved over three channels, with a bad line and a
/// `ts` of the producer's own in between.
async fn publish_mix(feed: SocketAddr) {
    let mut producer = Producer::connect(feed).await;
    producer
        .publish(
            "quotes.A",
            json!({"bid": 1.5, "ask": 1.7, "venue": {"id": "X", "lot": 100}}),
        )
        .await;
    producer
        .publish("quotes.B", json!({"bid": 10, "note": "open"}))
        .await;
    producer.send_line("{not json").await;
    producer
        .publish("quotes.A", json!({"venue": {"lot": null}, "ask": null}))
        .await;
    producer
        .publish(
            "book.A",
            json!({"bids": {"1.50": 3, "1.49": 7}, "asks": {"1.70": 2}}),
        )
        .await;
    producer
        .send_line(
            r#"{"channel":"quotes.B","data":{"note":null,"bid":10.25},"ts":1700000000000000000}"#,
        )
        .await;
    producer
        .publish("book.A", json!({"bids": {"1.49": null, "1.48": 1e-3}}))
        .await;
    producer
        .publish("quotes.A", json!({"bid": 1.55, "x": [1, {"y": null}]}))
        .await;
    producer.publish("book.A", json!({"asks": null})).await;
    producer.publish("quotes.B", json!({})).await;
    producer.publish("quotes.A", json!({"venue": null})).await;
}

/// `GET /channels/NAME` as JSON, without the epoch (each server has its own).
async fn channel(addr: SocketAddr, name: &str) -> Option<Value> {
    let (status, body) = http_get(addr, &format!("/channels/{name}")).await;
    if status != 200 {
        return None;
    }
    let mut snapshot: Value = serde_json::from_str(&body).expect("snapshot is JSON");
    snapshot.as_object_mut()?.remove("epoch");
    Some(snapshot)
}

/// Waits until every channel of [`CHANNELS`] is at its final seq; returns
/// their snapshots.
async fn settled(server: &RunningServer) -> Vec<Value> {
    let mut snapshots = Vec::new();
    for (name, seq) in CHANNELS {
        let addr = server.addr;
        let snapshot = wait_for(
            || async move {
                channel(addr, name)
                    .await
                    .filter(|s| s["seq"].as_u64() == Some(seq))
            },
            &format!("{name} at seq {seq}"),
        )
        .await;
        snapshots.push(snapshot);
    }
    snapshots
}

/// Records a server's feed into `path`, stops it, replays the file into a
/// second server at `--speed max` and compares every channel.
async fn round_trip(path: &Path) {
    let (recorder, feed) = start_with_tcp_feed(|s| s.record = Some(recording(path, 50))).await;
    publish_mix(feed).await;
    let recorded = settled(&recorder).await;
    // Arrays are replaced whole (RFC 7396): a null inside one stays.
    assert_eq!(
        recorded[0]["data"],
        json!({"bid": 1.55, "x": [1, {"y": null}]})
    );
    recorder.shutdown().await;

    let spec = format!("replay:{}", path.display());
    let replayer = start_server(&[&spec], |s| s.replay.speed = Speed::Max).await;
    let replayed = settled(&replayer).await;
    assert_eq!(
        replayed, recorded,
        "replayed channels differ from the recorded ones"
    );
    let stats = replayer.feeds[0].clone();
    assert_eq!(
        stats.rejected_total(),
        0,
        "the recording has a line replay rejects"
    );
    assert_eq!(stats.accepted(), 10, "only accepted records are recorded");
    replayer.shutdown().await;
}

#[tokio::test]
async fn replaying_a_recording_rebuilds_the_same_channels() {
    let path = temp_path("plain.ndjson");
    round_trip(&path).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        first["ts"].as_u64().is_some(),
        "each line has its ingest ts: {first}"
    );
    assert!(
        text.contains(r#""event_ts":1700000000000000000"#),
        "a producer's own ts is kept as event_ts"
    );
}

#[tokio::test]
async fn the_recording_is_flushed_on_its_interval_while_serving() {
    // What a crash would lose: only what came in since the last flush.
    let path = temp_path("interval.ndjson");
    let (server, feed) = start_with_tcp_feed(|s| s.record = Some(recording(&path, 20))).await;
    let mut producer = Producer::connect(feed).await;
    for n in 1..=5 {
        producer.publish("i.a", json!({"n": n})).await;
    }
    let path = &path;
    wait_for(
        || async move {
            let text = std::fs::read_to_string(path).ok()?;
            (text.lines().count() == 5).then_some(())
        },
        "the five records on disk while the server runs",
    )
    .await;
    assert_eq!(server.engine.stage_stats().snapshot().records_recorded, 5);
    server.shutdown().await;
}

#[tokio::test]
async fn a_gz_recording_round_trips_too() {
    let path = temp_path("zipped.ndjson.gz");
    round_trip(&path).await;
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a .gz recording is gzip");
}

#[tokio::test]
async fn an_unwritable_recording_drops_records_without_slowing_the_feed() {
    // Every write to /dev/full fails: the writer stops at its first flush.
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let (server, feed) = start_with_tcp_feed(|s| s.record = Some(recording(full, 10))).await;
    let mut producer = Producer::connect(feed).await;
    let stats = server.engine.stage_stats();
    // Publish until the first drop is counted (the writer fails at its
    // first flush), within the deadline.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut n = 0u64;
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    while stats.snapshot().record_dropped == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dropped record counted"
        );
        n += 1;
        producer.publish("r.a", json!({"n": n})).await;
        // Paced, so the writer's first flush comes within a few records.
        pace.tick().await;
    }
    // The engine applied every record all the same.
    let last = n;
    let snapshot = wait_for_channel_seq(&server, "r.a", last).await;
    assert_eq!(snapshot["data"], json!({"n": last}));
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("tickcast_record_dropped_total"),
        "the drop counter is on /metrics"
    );
    server.shutdown().await;
}

async fn wait_for_channel_seq(server: &RunningServer, name: &str, seq: u64) -> Value {
    let addr = server.addr;
    wait_for(
        || async move {
            channel(addr, name)
                .await
                .filter(|s| s["seq"].as_u64() == Some(seq))
        },
        &format!("{name} at seq {seq}"),
    )
    .await
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_flushes_the_recording() {
    let path = temp_path("sigterm.ndjson");
    let config = temp_path("sigterm.toml");
    // No interval flush could happen during the test: only shutdown's.
    std::fs::write(&config, "record_flush_ms = 600000\n").unwrap();
    let (addr, feed) = (free_port(), free_port());
    let mut child = tickcast_binary(addr)
        .args(["--feed", &format!("tcp:{feed}")])
        .args(["--record".as_ref(), path.as_os_str()])
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn()
        .expect("the tickcast binary starts");
    let mut producer = wait_for(
        || async move { TcpStream::connect(feed).await.ok() },
        "the tcp feed to listen",
    )
    .await;
    const RECORDS: u64 = 20;
    {
        use tokio::io::AsyncWriteExt;
        for n in 1..=RECORDS {
            let line = format!("{}\n", json!({"channel": "s.a", "data": {"n": n}}));
            producer.write_all(line.as_bytes()).await.unwrap();
        }
    }
    wait_for(
        || async move {
            channel(addr, "s.a")
                .await
                .filter(|s| s["seq"].as_u64() == Some(RECORDS))
        },
        "every record applied",
    )
    .await;
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("tickcast exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "tickcast exited with {exit}");
    let text = std::fs::read_to_string(&path).unwrap();
    let ns: Vec<u64> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ns,
        (1..=RECORDS).collect::<Vec<_>>(),
        "every record, in order"
    );
}
