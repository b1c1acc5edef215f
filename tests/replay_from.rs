//! `--from`: a replay starts at a record number (`#N`, counting records,
//! not blank or rejected lines) or at a time (RFC 3339 or Unix ms, against
//! each record's `ts`); the records before it are skipped, and from there
//! on every record goes, even one whose `ts` is earlier.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use serde_json::{json, Value};
use tickcast::feed::{ReplayFrom, Speed};

/// 2026-11-27T16:00:00Z in Unix ms.
const T0_MS: u64 = 1_795_795_200_000;

fn recording() -> PathBuf {
    let ns = |ms: u64| (T0_MS + ms) * 1_000_000;
    let lines = [
        json!({"channel": "f.a", "data": {"early": 1, "n": 1}, "ts": ns(0)}).to_string(),
        String::new(),
        "{not json".to_owned(),
        json!({"channel": "f.a", "data": {"n": 2}, "ts": ns(1000)}).to_string(),
        json!({"channel": "f.a", "data": {"n": 3, "late": true}, "ts": ns(2000)}).to_string(),
        json!({"channel": "f.a", "data": {"n": 4}, "ts": ns(1500)}).to_string(),
        json!({"channel": "f.b", "data": {"x": 1}}).to_string(),
    ];
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // One file per replay: the tests run at once.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("replay-from-{}-{n}.ndjson", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Replays the recording from `from` at `--speed max`; returns `f.a`'s
/// seq and state once the last record (`f.b`) is in, and the records sent.
async fn replay_from(from: &str) -> (u64, Value, u64) {
    let from: ReplayFrom = from.parse().expect("a valid --from");
    let spec = format!("replay:{}", recording().display());
    let server = start_server(&[&spec], |s| {
        s.replay.speed = Speed::Max;
        s.replay.from = Some(from);
    })
    .await;
    wait_for_channel(&server, "f.b").await;
    let a = server.engine.snapshot("f.a").await.unwrap().expect("f.a");
    let sent = server.feeds[0].accepted();
    assert_eq!(
        server.feeds[0].rejected_total(),
        1,
        "the bad line is still rejected"
    );
    server.shutdown().await;
    (a.seq, Value::Object(a.data), sent)
}

#[tokio::test]
async fn from_a_record_number_skips_the_records_before_it() {
    // Record #2 is the fourth line: the blank and the bad line do not count.
    let (seq, data, sent) = replay_from("#2").await;
    assert_eq!(sent, 4);
    assert_eq!(seq, 3, "records 2, 3 and 4 applied");
    assert_eq!(data, json!({"n": 4, "late": true}), "record 1 skipped");
}

#[tokio::test]
async fn from_a_time_starts_at_the_first_record_at_or_after_it() {
    for from in ["2026-11-27T17:00:01.5+01:00", "1795795201500"] {
        let (seq, data, sent) = replay_from(from).await;
        // Records 1 (ts +0 s) and 2 (+1 s) are before +1.5 s; record 3
        // (+2 s) starts; record 4 (+1.5 s, going back) and the untimed
        // f.b record still go.
        assert_eq!(sent, 3, "--from {from}");
        assert_eq!(seq, 2, "--from {from}");
        assert_eq!(data, json!({"n": 4, "late": true}), "--from {from}");
    }
}

#[tokio::test]
async fn from_a_point_past_the_end_sends_nothing() {
    let from: ReplayFrom = "#99".parse().unwrap();
    let spec = format!("replay:{}", recording().display());
    let server = start_server(&[&spec], |s| {
        s.replay.speed = Speed::Max;
        s.replay.from = Some(from);
    })
    .await;
    let stats = server.feeds[0].clone();
    wait_for(
        || {
            let stats = stats.clone();
            async move { (stats.status() == tickcast::feed::FeedStatus::Finished).then_some(()) }
        },
        "the replay to finish",
    )
    .await;
    assert_eq!(stats.accepted(), 0);
    assert!(server.engine.snapshot("f.a").await.unwrap().is_none());
    server.shutdown().await;
}
