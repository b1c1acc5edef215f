//! The engine seams a follower uses: `StateStage::apply_at` (a record at
//! the seq the stream gives it) and `StateStage::replace` (a channel's
//! snapshot, with a resync for its subscribers), through a real state
//! stage and fanout shard.

use std::sync::Arc;

use crate::channel::ChannelName;
use crate::engine::{Directory, EngineLimits, EngineStats, StateStage};
use crate::record::{FeedRecord, JsonMap};

/// A state stage for tests (16 channels), and its directory.
pub(super) fn test_stage() -> (StateStage, Arc<Directory>) {
    let limits = EngineLimits {
        max_targets_per_session: 16,
        max_channels: 16,
    };
    let directory = Arc::new(Directory::default());
    let stats = Arc::new(EngineStats::default());
    (StateStage::new(limits, stats, directory.clone()), directory)
}

/// Record `n` of `channel`: `{"n": n}`, stamped `n`.
pub(super) fn numbered(channel: &str, n: u64) -> Arc<FeedRecord> {
    let mut data = JsonMap::new();
    data.insert("n".into(), n.into());
    Arc::new(FeedRecord {
        channel: ChannelName::new(channel).unwrap(),
        data,
        ts: None,
        ingest_ns: n,
    })
}

/// The seam a follower applies stream records through: a record is
/// applied only at its channel's next seq; one seen before is skipped,
/// one past a missing seq is refused and changes nothing.
#[test]
fn a_follower_applies_records_at_the_seqs_it_is_given() {
    use crate::engine::AtSeq;
    let (mut stage, directory) = test_stage();
    let record = |n: u64| numbered("quotes.F", n);
    let state = |directory: &Directory| {
        let cell = directory.get("quotes.F").unwrap();
        let channel = cell.lock();
        (channel.seq, channel.state.get("n").cloned())
    };
    assert!(matches!(
        stage.apply_at(&record(2), 2, 0),
        AtSeq::Gap { expected: 1 }
    ));
    assert!(directory.get("quotes.F").is_none(), "a gap creates nothing");
    assert!(matches!(
        stage.apply_at(&record(1), 1, 0),
        AtSeq::Applied(Some(_))
    ));
    assert!(matches!(
        stage.apply_at(&record(2), 2, 0),
        AtSeq::Applied(_)
    ));
    assert!(matches!(stage.apply_at(&record(1), 1, 0), AtSeq::Seen));
    assert!(matches!(stage.apply_at(&record(2), 2, 0), AtSeq::Seen));
    assert!(matches!(
        stage.apply_at(&record(9), 5, 0),
        AtSeq::Gap { expected: 3 }
    ));
    assert_eq!(state(&directory), (2, Some(2.into())));
    assert!(matches!(
        stage.apply_at(&record(3), 3, 0),
        AtSeq::Applied(_)
    ));
    assert_eq!(state(&directory), (3, Some(3.into())));
}

/// What an edge does at a hole: the channel's snapshot replaces its
/// state, a subscriber gets a `resync` snapshot (filtered like its
/// other messages) and then updates chained from it, and a resume from
/// before the hole is a resync too (the history is gone).
#[test]
fn a_replaced_state_is_a_resync_for_subscribers() {
    use crate::channel::Pattern;
    use crate::engine::filter::FilterInterner;
    use crate::engine::{AtSeq, SubscribeOptions};
    use crate::engine::{Directory, EngineLimits, EngineStats, Shard, StateStage};
    use crate::outbox::{Outbox, QueuedFrame};
    use futures_util::FutureExt;
    use serde_json::{json, Value};

    let limits = EngineLimits {
        max_targets_per_session: 4,
        max_channels: 4,
    };
    let directory = Arc::new(Directory::default());
    let stats = Arc::new(EngineStats::default());
    let mut stage = StateStage::new(limits.clone(), stats.clone(), directory.clone());
    let filters = Arc::new(std::sync::Mutex::new(FilterInterner::default()));
    let mut shard = Shard::new(Arc::from("e"), limits, stats, directory, filters);
    let record = |data: Value| {
        let Value::Object(data) = data else {
            unreachable!()
        };
        Arc::new(FeedRecord {
            channel: ChannelName::new("q.R").unwrap(),
            data,
            ts: None,
            ingest_ns: 1,
        })
    };
    for n in 1..=3u64 {
        if let AtSeq::Applied(Some(event)) = stage.apply_at(&record(json!({"n": n})), n, 0) {
            shard.on_event(&event, 0);
        }
    }
    let outbox = Arc::new(Outbox::new(1 << 16));
    shard.register(7, outbox.clone());
    let only_n = SubscribeOptions {
        fields: Some(vec!["n".into()]),
        ..Default::default()
    };
    let targets = vec![Pattern::new("q.R").unwrap()];
    shard.subscribe(7, Some(1), targets.clone(), only_n, 0);
    // Records 4..8 never came: the snapshot at 8 does.
    let AtSeq::Applied(Some(replaced)) = stage.replace(&record(json!({"n": 8, "x": true})), 8, 0)
    else {
        panic!("a snapshot ahead of the channel replaces it");
    };
    shard.on_event(&replaced, 0);
    assert!(matches!(
        stage.replace(&record(json!({"n": 7})), 7, 0),
        AtSeq::Seen
    ));
    if let AtSeq::Applied(Some(event)) = stage.apply_at(&record(json!({"n": 9})), 9, 0) {
        shard.on_event(&event, 0);
    }
    let resume = SubscribeOptions {
        since: [("q.R".to_string(), 2)].into(),
        epoch: Some("e".into()),
        ..Default::default()
    };
    shard.subscribe(7, Some(2), targets, resume, 0);
    let mut frames: Vec<QueuedFrame> = Vec::new();
    let _ = outbox.take(&mut frames).now_or_never();
    let messages: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_slice(&f.bytes[2..]).unwrap())
        .filter(|m: &Value| m["channel"] == "q.R")
        .collect();
    let shape: Vec<(&str, u64, Option<u64>, &Value, &Value)> = messages
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap(),
                m["seq"].as_u64().unwrap(),
                m["prev"].as_u64(),
                &m["resync"],
                &m["data"],
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("snapshot", 3, None, &Value::Null, &json!({"n": 3})),
            ("snapshot", 8, None, &json!(true), &json!({"n": 8})),
            ("update", 9, Some(8), &Value::Null, &json!({"n": 9})),
            // The resume has no `fields`: the whole state.
            (
                "snapshot",
                9,
                None,
                &json!(true),
                &json!({"n": 9, "x": true})
            ),
        ]
    );
}
