//! Tests of the replay feed: pacing on given instants, then whole replays
//! into a real ring (fixtures, gzip, loop, errors, real-time pacing).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::feed::{FeedStats, RingItem};
use crate::record::{FeedRecord, JsonMap};
use crate::ring::{Consumer, RecvError, Ring};

const SEC: u64 = 1_000_000_000;
/// Upper bound for anything a test waits for; never reached when it passes.
const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn pacer_says_how_far_behind_schedule_it_is() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(Speed::Factor(1.0));
    assert_eq!(pacer.due(Some(10 * SEC), t0), None);
    assert_eq!(pacer.behind(), Some(Duration::ZERO));
    // Due at t0 + 1 s, asked at t0 + 3 s: 2 s late, sent at once.
    assert_eq!(pacer.due(Some(11 * SEC), t0 + Duration::from_secs(3)), None);
    assert_eq!(pacer.behind(), Some(Duration::from_secs(2)));
    // Due at t0 + 5 s, asked at t0 + 4 s: on time again.
    let due = pacer.due(Some(15 * SEC), t0 + Duration::from_secs(4));
    assert_eq!(due, Some(t0 + Duration::from_secs(5)));
    assert_eq!(pacer.behind(), Some(Duration::ZERO));
    assert_eq!(Pacer::new(Speed::Max).behind(), None, "max has no schedule");
}

#[test]
fn pacer_maps_ts_to_due_times_from_the_start() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(Speed::Factor(2.0));
    assert_eq!(pacer.due(None, t0), None, "no ts: at once");
    assert_eq!(
        pacer.due(Some(100 * SEC), t0),
        None,
        "the first timed record goes now"
    );
    assert_eq!(
        pacer.due(Some(101 * SEC), t0),
        Some(t0 + Duration::from_millis(500))
    );
    assert_eq!(pacer.due(Some(101 * SEC), t0), None, "same ts: no wait");
    assert_eq!(pacer.due(Some(99 * SEC), t0), None, "backwards: no wait");
    // Running late does not shift later due times (no drift).
    let late = t0 + Duration::from_secs(2);
    assert_eq!(pacer.due(Some(102 * SEC), late), None);
    assert_eq!(
        pacer.due(Some(106 * SEC), late),
        Some(t0 + Duration::from_secs(3))
    );
}

#[test]
fn pacer_continues_seamlessly_into_the_next_pass() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(Speed::Factor(1.0));
    pacer.due(Some(50 * SEC), t0);
    assert_eq!(
        pacer.due(Some(52 * SEC), t0),
        Some(t0 + Duration::from_secs(2))
    );
    pacer.next_pass();
    let end = t0 + Duration::from_secs(2);
    assert_eq!(pacer.due(Some(50 * SEC), end), None, "right after the last");
    assert_eq!(
        pacer.due(Some(51 * SEC), end),
        Some(t0 + Duration::from_secs(3))
    );
}

#[test]
fn max_speed_never_waits() {
    let t0 = Instant::now();
    let mut pacer = Pacer::new(Speed::Max);
    for ts in [0, 10 * SEC, 20 * SEC] {
        assert_eq!(pacer.due(Some(ts), t0), None);
    }
}

/// A file in the temp dir, unique to this process and test.
async fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tickcast-{}-{name}", std::process::id()));
    tokio::fs::write(&path, bytes)
        .await
        .expect("write temp file");
    path
}

fn output(capacity: usize) -> (FeedOutput, Consumer<RingItem>, Arc<FeedStats>) {
    let ring = Ring::with_capacity(capacity);
    let consumer = ring.consumer();
    let stats = Arc::new(FeedStats::new("replay".into()));
    (
        FeedOutput::new(ring.producer(), stats.clone()),
        consumer,
        stats,
    )
}

/// Receives until every producer is gone.
async fn drain(mut consumer: Consumer<RingItem>) -> Vec<Arc<FeedRecord>> {
    let mut all = Vec::new();
    loop {
        match consumer.recv().await {
            Ok(item) => all.push(item.take().expect("an untaken record")),
            Err(RecvError::Closed) => return all,
            Err(RecvError::Lagged(n)) => panic!("a gating consumer lagged by {n}"),
        }
    }
}

async fn replay_all(path: &Path, opts: ReplayOptions) -> (io::Result<()>, Vec<Arc<FeedRecord>>) {
    let (out, consumer, _) = output(64);
    let run = run(path, opts, out, CancellationToken::new());
    let both = async { tokio::join!(run, drain(consumer)) };
    tokio::time::timeout(DEADLINE, both)
        .await
        .expect("replay finished")
}

fn merge(target: &mut JsonMap, patch: &JsonMap) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                if !slot.is_object() {
                    *slot = Value::Object(JsonMap::new());
                }
                if let Value::Object(t) = slot {
                    merge(t, inner);
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

#[tokio::test]
async fn the_mixed_fixture_replays_to_the_expected_states() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let opts = ReplayOptions {
        speed: Speed::Max,
        looped: false,
        ..ReplayOptions::default()
    };
    let (result, records) = replay_all(&dir.join("replay-mixed.ndjson"), opts).await;
    result.expect("replay ok");
    let mut got: HashMap<String, (u64, JsonMap)> = HashMap::new();
    for record in &records {
        let (seq, state) = got.entry(record.channel.to_string()).or_default();
        *seq += 1;
        merge(state, &record.data);
    }
    let expect = tokio::fs::read(dir.join("replay-mixed.expect.json"))
        .await
        .expect("read");
    let expect: Value = serde_json::from_slice(&expect).expect("expect file is JSON");
    let channels = expect["channels"].as_object().expect("channels object");
    assert_eq!(got.len(), channels.len());
    for (name, want) in channels {
        let (seq, state) = &got[name];
        assert_eq!(Some(*seq), want["seq"].as_u64(), "{name} seq");
        assert_eq!(
            &Value::Object(state.clone()),
            &want["state"],
            "{name} state"
        );
    }
}

const THREE: &[u8] = b"{\"channel\":\"a.x\",\"data\":{\"n\":1},\"ts\":5}\n\
    not json\n\
    {\"channel\":\"a.x\",\"data\":{\"n\":2},\"ts\":6}\n\
    {\"channel\":\"a.y\",\"data\":{\"n\":3}}\n";

fn numbers(records: &[Arc<FeedRecord>]) -> Vec<i64> {
    records
        .iter()
        .filter_map(|r| r.data["n"].as_i64())
        .collect()
}

#[tokio::test]
async fn gzip_files_are_decompressed() {
    let mut encoder = async_compression::tokio::write::GzipEncoder::new(Vec::new());
    encoder.write_all(THREE).await.expect("compress");
    encoder.shutdown().await.expect("finish gzip");
    let path = temp_file("three.ndjson.gz", &encoder.into_inner()).await;
    let opts = ReplayOptions {
        speed: Speed::Max,
        looped: false,
        ..ReplayOptions::default()
    };
    let (result, records) = replay_all(&path, opts).await;
    tokio::fs::remove_file(&path).await.ok();
    result.expect("replay ok");
    assert_eq!(numbers(&records), [1, 2, 3]);
}

#[tokio::test]
async fn looped_replay_starts_over_until_shutdown() {
    let path = temp_file("loop.ndjson", THREE).await;
    let (out, mut consumer, stats) = output(64);
    let shutdown = CancellationToken::new();
    let opts = ReplayOptions {
        speed: Speed::Factor(1.0),
        looped: true,
        ..ReplayOptions::default()
    };
    let task = tokio::spawn({
        let (path, shutdown) = (path.clone(), shutdown.clone());
        async move { run(&path, opts, out, shutdown).await }
    });
    let mut seen = Vec::new();
    let seven = async {
        while seen.len() < 7 {
            seen.push(
                consumer
                    .recv()
                    .await
                    .expect("open")
                    .take()
                    .expect("untaken"),
            ); // ts 5, 6: 1 ns apart
        }
    };
    tokio::time::timeout(DEADLINE, seven)
        .await
        .expect("three passes");
    shutdown.cancel();
    let stopped = tokio::time::timeout(DEADLINE, task).await.expect("stops");
    tokio::fs::remove_file(&path).await.ok();
    stopped.expect("no panic").expect("replay ok");
    assert_eq!(numbers(&seen), [1, 2, 3, 1, 2, 3, 1]);
    assert!(
        stats.rejected_total() >= 2,
        "the bad line counts once per pass"
    );
}

#[tokio::test]
async fn a_looped_file_without_records_does_not_spin() {
    let path = temp_file("bad.ndjson", b"nothing\n").await;
    let opts = ReplayOptions {
        speed: Speed::Max,
        looped: true,
        ..ReplayOptions::default()
    };
    let (result, records) = replay_all(&path, opts).await;
    tokio::fs::remove_file(&path).await.ok();
    result.expect("replay ok");
    assert!(records.is_empty());
}

#[tokio::test]
async fn a_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("tickcast-no-such-file.ndjson");
    let (result, _) = replay_all(&path, ReplayOptions::default()).await;
    let message = result.expect_err("missing file").to_string();
    assert!(
        message.contains("tickcast-no-such-file.ndjson"),
        "{message}"
    );
    assert!(message.contains("check the path"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn records_are_paced_by_their_ts() {
    // 0, 100, 200, 300 ms of recording at 2x: the last one is due 150 ms
    // after the first. Paused time: the clock jumps straight to each due time,
    // so the spread is exact and the test takes no real time.
    let lines: String = (0..4)
        .map(|i| {
            format!(
                "{{\"channel\":\"p.q\",\"data\":{{\"n\":{i}}},\"ts\":{}}}\n",
                i * SEC / 10
            )
        })
        .collect();
    let path = temp_file("paced.ndjson", lines.as_bytes()).await;
    let (out, mut consumer, _) = output(64);
    let opts = ReplayOptions {
        speed: Speed::Factor(2.0),
        looped: false,
        ..ReplayOptions::default()
    };
    let task = tokio::spawn({
        let path = path.clone();
        async move { run(&path, opts, out, CancellationToken::new()).await }
    });
    let arrivals = tokio::time::timeout(DEADLINE, async {
        let mut at = Vec::new();
        for _ in 0..4 {
            consumer.recv().await.expect("open");
            at.push(tokio::time::Instant::now());
        }
        at
    })
    .await
    .expect("four records");
    tokio::fs::remove_file(&path).await.ok();
    task.await.expect("no panic").expect("replay ok");
    let spread = arrivals[3] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(150),
        "paced too fast: {spread:?}"
    );
    assert!(arrivals.windows(2).all(|w| w[1] >= w[0]));
}
