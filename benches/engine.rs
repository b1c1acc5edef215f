//! The engine's CPU cost per applied update, and how it depends on the
//! number of fanout shards.
//!
//! Drives the engine's stages as plain function calls on one thread (no
//! sockets, no tasks): the state stage applies a record (merge patch,
//! seq + 1, history, and, if the channel has subscribers, the hand-off of
//! an `Arc<Applied>`), the event goes through the real hand-off ring
//! (`Ring::with_consumers`, one gating consumer per shard), and every shard
//! reads it and fans it out to its own sessions' outboxes (the frame is
//! encoded once, by the first shard that needs it). What is timed is the
//! sum over all stages, i.e. the CPU the whole engine spends per update,
//! whatever core it would run on.
//!
//! * `engine/no_subscribers/{1,4,16}`: nobody subscribed; nothing is
//!   handed off, so this must not grow with the shard count.
//! * `engine/1000_subscribers/{1,4,16}`: 1,000 sessions on one channel,
//!   spread over the shards (session id mod shards). Outboxes are drained
//!   every 64 updates, outside the timed region.
//! * `engine/stage_only_1000_subscribers/{1,4,16}`: the state stage's own
//!   share of the above (apply + hand-off publish); the shards run untimed.
//!
//! Records are quote patches over one channel (history on, default depth).
//! Runs on mimalloc, the server's global allocator.
//! `cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use serde_json::json;
use tickcast::channel::{ChannelName, Pattern};
use tickcast::engine::{Engine, EngineLimits, EngineStats, HandoffItem, SubscribeOptions};
use tickcast::handoff::Handoff;
use tickcast::outbox::{Outbox, QueuedFrame};
use tickcast::record::{FeedRecord, JsonMap};
use tickcast::ring::{Consumer, Producer, Ring};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANNEL: &str = "quotes.BTCUSDT";
const SHARDS: [usize; 3] = [1, 4, 16];
const SUBSCRIBERS: u64 = 1000;
/// Updates between two drains of the outboxes.
const ROUND: u64 = 64;

/// Distinct quote records, reused in turn.
fn records() -> Vec<Arc<FeedRecord>> {
    (0..1024u64)
        .map(|i| {
            let serde_json::Value::Object(data) = json!({
                "bid": 28165.0 + i as f64 / 100.0,
                "ask": 28165.5 + i as f64 / 100.0,
                "bid_size": 7.9868,
                "last": 28165.47,
                "volume": 41234.0 + i as f64,
            }) else {
                unreachable!()
            };
            Arc::new(FeedRecord {
                channel: ChannelName::new(CHANNEL).unwrap(),
                data: data as JsonMap,
                ts: None,
                ingest_ns: 1_700_000_000_000_000_000 + i,
            })
        })
        .collect()
}

/// The engine wired as the server wires it: a state stage, `shards`
/// shards, and a hand-off ring with one gating consumer per shard.
struct Wired {
    engine: Engine,
    handoff: Producer<HandoffItem>,
    consumers: Vec<Consumer<HandoffItem>>,
    shards: usize,
    outboxes: Vec<Arc<Outbox>>,
    records: Vec<Arc<FeedRecord>>,
    next: usize,
    sink: Vec<QueuedFrame>,
}

impl Wired {
    fn new(shards: usize, subscribers: u64) -> Self {
        let limits = EngineLimits {
            max_targets_per_session: 16,
            max_channels: 16,
        };
        let engine = Engine::with_shards(Arc::from("bench"), limits, shards, |_| {
            Arc::new(EngineStats::default())
        });
        let ring = Ring::with_consumers(4096, shards);
        let consumers = (0..shards).map(|_| ring.consumer()).collect();
        let mut wired = Self {
            engine,
            handoff: ring.producer(),
            shards,
            consumers,
            outboxes: Vec::new(),
            records: records(),
            next: 0,
            sink: Vec::new(),
        };
        wired.apply_and_fan_out(); // creates the channel
        for session in 0..subscribers {
            let outbox = Arc::new(Outbox::new(64 << 20));
            let shard = &mut wired.engine.shards[(session % shards as u64) as usize];
            shard.register(session, outbox.clone());
            let targets = vec![Pattern::new(CHANNEL).unwrap()];
            shard.subscribe(session, None, targets, SubscribeOptions::default(), 0);
            wired.outboxes.push(outbox);
        }
        // Warm up: history full, outbox queues grown to a round's worth.
        for _ in 0..2048 {
            wired.apply_and_fan_out();
        }
        wired.drain();
        wired
    }

    fn record(&mut self) -> Arc<FeedRecord> {
        self.next = (self.next + 1) % self.records.len();
        self.records[self.next].clone()
    }

    /// The state stage's part: apply, and publish the hand-off if any.
    fn apply(&mut self) {
        let record = self.record();
        if let Some(event) = self.engine.stage.apply(&record, 0) {
            // Wrapped as the server does, so the last shard frees it.
            let item = Handoff::new(event, self.shards);
            assert!(self.handoff.try_publish(item).is_ok(), "shards keep up");
        }
    }

    /// Every shard's part: read the hand-off ring and fan out.
    fn fan_out(&mut self) {
        for (shard, consumer) in self.engine.shards.iter_mut().zip(&mut self.consumers) {
            while let Ok(item) = consumer.try_recv() {
                let event = item.take().expect("each shard takes an event once");
                black_box(shard.on_event(&event, 0));
            }
        }
    }

    fn apply_and_fan_out(&mut self) {
        self.apply();
        self.fan_out();
    }

    fn drain(&mut self) {
        for outbox in &self.outboxes {
            let _ = outbox.take(&mut self.sink).now_or_never();
            self.sink.clear();
        }
    }
}

/// Times `iters` updates in rounds, draining between rounds untimed;
/// `timed` is one update's timed part, `untimed` the rest of it.
fn rounds(
    wired: &mut Wired,
    iters: u64,
    timed: fn(&mut Wired),
    untimed: fn(&mut Wired),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let round = left.min(ROUND);
        for _ in 0..round {
            let start = Instant::now();
            timed(wired);
            total += start.elapsed();
            untimed(wired);
        }
        wired.drain();
        left -= round;
    }
    total
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    for shards in SHARDS {
        let mut wired = Wired::new(shards, 0);
        group.bench_function(BenchmarkId::new("no_subscribers", shards), |b| {
            b.iter(|| wired.apply_and_fan_out())
        });
    }
    for shards in SHARDS {
        let mut wired = Wired::new(shards, SUBSCRIBERS);
        group.bench_function(BenchmarkId::new("1000_subscribers", shards), |b| {
            b.iter_custom(|iters| rounds(&mut wired, iters, Wired::apply_and_fan_out, |_| {}))
        });
    }
    for shards in SHARDS {
        let mut wired = Wired::new(shards, SUBSCRIBERS);
        group.bench_function(
            BenchmarkId::new("stage_only_1000_subscribers", shards),
            |b| b.iter_custom(|iters| rounds(&mut wired, iters, Wired::apply, Wired::fan_out)),
        );
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
