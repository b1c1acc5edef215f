//! The dirty sample (tests/fixtures/dirty-sample.ndjson: a real feed with 56
//! damaged lines, blank lines, CRLF, a BOM and a 1.5 MB line) against its
//! independently written expectation (dirty-sample.expect.json): first
//! through the line parser alone, then through the replay feed into the ring.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tickcast::feed::{replay, FeedOutput, FeedStats, ReplayOptions, RingItem, Speed};
use tickcast::record::{parse_line, FeedRecord, JsonMap, LineOutcome, LineReader, RejectReason};
use tickcast::ring::{Consumer, RecvError, Ring};
use tokio_util::sync::CancellationToken;

/// Upper bound for the replay; never reached when the test passes.
const DEADLINE: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn expectation() -> Value {
    let text = tokio::fs::read(fixture("dirty-sample.expect.json"))
        .await
        .expect("read expect");
    serde_json::from_slice(&text).expect("expect file is JSON")
}

fn expected_rejections(expect: &Value) -> Vec<(u64, String)> {
    let list = expect["rejected"].as_array().expect("rejected list");
    list.iter()
        .map(|r| {
            let line = r["line"].as_u64().expect("line");
            (line, r["reason"].as_str().expect("reason").to_string())
        })
        .collect()
}

fn as_u64s(value: &Value) -> Vec<u64> {
    let list = value.as_array().expect("a list");
    list.iter().map(|v| v.as_u64().expect("a number")).collect()
}

/// RFC 7396, applied in place.
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

/// Compares per-channel update counts and final states with the expectation.
fn assert_channels(expect: &Value, got: &HashMap<String, (u64, JsonMap)>) {
    let channels = expect["channels"].as_object().expect("channels");
    assert_eq!(got.len(), channels.len(), "number of channels");
    for (name, want) in channels {
        let (updates, state) = got.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(Some(*updates), want["updates"].as_u64(), "{name} updates");
        assert_eq!(Value::Object(state.clone()), want["state"], "{name} state");
    }
}

#[tokio::test]
async fn the_line_parser_matches_the_expectation() {
    let expect = expectation().await;
    let bytes = tokio::fs::read(fixture("dirty-sample.ndjson"))
        .await
        .expect("read fixture");
    let mut reader = LineReader::new(bytes.as_slice());
    let (mut accepted, mut rejected, mut blank, mut lines) = (0u64, Vec::new(), Vec::new(), 0);
    let mut channels: HashMap<String, (u64, JsonMap)> = HashMap::new();
    while let Some((line_no, raw)) = reader.next_line().await.expect("reading a slice") {
        lines = line_no;
        match parse_line(line_no, raw, tickcast::json_depth::DEFAULT_LIMIT) {
            LineOutcome::Record(record) => {
                accepted += 1;
                let (updates, state) = channels.entry(record.channel.to_string()).or_default();
                *updates += 1;
                merge(state, &record.data);
            }
            LineOutcome::Blank => blank.push(line_no),
            LineOutcome::Rejected(r) => rejected.push((r.line, r.reason.as_str().to_string())),
        }
    }
    assert_eq!(Some(lines), expect["total_lines"].as_u64(), "total lines");
    assert_eq!(
        Some(accepted),
        expect["accepted_count"].as_u64(),
        "accepted"
    );
    assert_eq!(blank, as_u64s(&expect["blank_lines"]), "blank lines");
    assert_eq!(
        rejected,
        expected_rejections(&expect),
        "rejections (line, reason)"
    );
    assert_channels(&expect, &channels);
}

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

#[tokio::test]
async fn the_replay_feed_counts_the_same() {
    let expect = expectation().await;
    let ring = Ring::with_capacity(256);
    let consumer = ring.consumer();
    let stats = Arc::new(FeedStats::new("dirty".into()));
    let out = FeedOutput::new(ring.producer(), stats.clone());
    drop(ring);
    let opts = ReplayOptions {
        speed: Speed::Max,
        looped: false,
        ..ReplayOptions::default()
    };
    let path = fixture("dirty-sample.ndjson");
    let run = replay::run(&path, opts, out, CancellationToken::new());
    let (result, records) =
        tokio::time::timeout(DEADLINE, async { tokio::join!(run, drain(consumer)) })
            .await
            .expect("replay finished before the deadline");
    result.expect("replay ok");

    assert_eq!(Some(stats.accepted()), expect["accepted_count"].as_u64());
    assert_eq!(
        Some(records.len() as u64),
        expect["accepted_count"].as_u64()
    );
    assert_eq!(
        Some(stats.rejected_total()),
        expect["rejected_count"].as_u64()
    );
    let by_reason: BTreeMap<String, u64> = RejectReason::ALL
        .iter()
        .map(|&r| (r.as_str().to_string(), stats.rejected(r)))
        .filter(|&(_, n)| n > 0)
        .collect();
    let want: BTreeMap<String, u64> =
        serde_json::from_value(expect["rejected_by_reason"].clone()).expect("reason counts");
    assert_eq!(by_reason, want);

    let mut channels: HashMap<String, (u64, JsonMap)> = HashMap::new();
    for record in &records {
        assert!(record.ingest_ns > 0, "ingest time stamped");
        let (updates, state) = channels.entry(record.channel.to_string()).or_default();
        *updates += 1;
        merge(state, &record.data);
    }
    assert_channels(&expect, &channels);
}
