//! The feed ring and the hand-off ring keep nothing alive that every
//! consumer is done with: once the state stage has applied a record and
//! every shard has fanned its update out, the record (and the `Applied`
//! holding it) is freed, although the ring has not lapped its slots.
//! Wired as `server::start` wires the engine tasks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::filter::FilterInterner;
use super::{
    channel, run_shard, run_state, Command, EngineLimits, HandoffItem, HandoffProducer, Shard,
    StateStage, SubscribeOptions,
};
use crate::channel::{ChannelName, Pattern};
use crate::feed::RingItem;
use crate::handoff::Handoff;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::record::{FeedRecord, JsonMap};
use crate::ring::Ring;

const CHANNEL: &str = "ticks.retained";
/// Fewer than either ring's capacity, so no slot is ever overwritten.
const RECORDS: usize = 300;
const SHARDS: usize = 2;
const DEADLINE: Duration = Duration::from_secs(10);

fn record(n: usize) -> Arc<FeedRecord> {
    let mut data = JsonMap::new();
    data.insert("n".into(), n.into());
    data.insert("pad".into(), "x".repeat(4096).into());
    Arc::new(FeedRecord {
        channel: ChannelName::new(CHANNEL).expect("name"),
        data,
        ts: None,
        ingest_ns: 1 + n as u64,
    })
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what} before the deadline");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_records_and_updates_are_not_kept_by_the_rings() {
    let limits = EngineLimits {
        max_targets_per_session: 16,
        max_channels: 16,
    };
    let epoch: Arc<str> = Arc::from("retention");
    let (handle, inputs) = channel(epoch.clone(), SHARDS, 64);
    let stage = StateStage::new(
        limits.clone(),
        handle.stage_stats(),
        handle.directory().clone(),
    );
    let feed: Ring<RingItem> = Ring::with_consumers(1024, 1);
    let stage_input = feed.consumer();
    let handoff: Ring<HandoffItem> = Ring::with_consumers(512, SHARDS);
    let filters = Arc::new(std::sync::Mutex::new(FilterInterner::default()));
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for inputs in inputs {
        let shard = Shard::new(
            epoch.clone(),
            limits.clone(),
            inputs.stats,
            handle.directory().clone(),
            filters.clone(),
        );
        tasks.push(tokio::spawn(run_shard(
            shard,
            handoff.consumer(),
            inputs.commands,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    let producer = HandoffProducer {
        producer: handoff.producer(),
        shards: SHARDS,
    };
    tasks.push(tokio::spawn(run_state(
        stage,
        stage_input,
        producer,
        metrics.clone(),
        shutdown.clone(),
    )));

    // One subscriber per shard, so every update is handed off to both.
    let mut outboxes = Vec::new();
    for _ in 0..SHARDS {
        let session = handle.new_session_id();
        let outbox = Arc::new(Outbox::new(64 << 20));
        let register = Command::Register {
            session,
            outbox: outbox.clone(),
        };
        handle.send(register).await.expect("engine up");
        let subscribe = Command::Subscribe {
            session,
            id: None,
            targets: vec![Pattern::new(CHANNEL).expect("pattern")],
            options: SubscribeOptions::default(),
        };
        handle.send(subscribe).await.expect("engine up");
        outboxes.push(outbox);
    }

    let producer = feed.producer();
    let mut records: Vec<Weak<FeedRecord>> = Vec::new();
    for n in 0..RECORDS {
        let record = record(n);
        records.push(Arc::downgrade(&record));
        producer.publish(Handoff::new(record, 1)).await;
    }
    let stats = handle.stage_stats();
    wait_until("every record applied", || {
        stats.updates_applied.load(Ordering::Relaxed) == RECORDS as u64
    })
    .await;
    wait_until("every subscriber sent every update", || {
        outboxes.iter().all(|o| o.queued_bytes() > RECORDS * 4096)
    })
    .await;
    wait_until("no record kept alive by a ring", || {
        records.iter().all(|r| r.upgrade().is_none())
    })
    .await;

    shutdown.cancel();
    drop(producer);
    for task in tasks {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("task stops")
            .expect("no panic");
    }
}
