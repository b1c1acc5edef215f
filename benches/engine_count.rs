//! Instructions per applied update, for `valgrind --tool=callgrind`: an
//! instruction count repeats exactly on a noisy machine where times do not.
//!
//! Applies `UPDATES` quote patches to one channel with nobody subscribed,
//! with the engine wired for `SHARDS` fanout shards, and exits. Run it at two
//! update counts and divide the difference by the extra updates, so that
//! set-up and exit cancel out (`scripts/engine-instructions.sh` does this
//! for 1, 4 and 16 shards).
//!
//! `engine_count SHARDS UPDATES` (criterion's `--bench` flag is ignored).

use std::hint::black_box;
use std::sync::Arc;

use serde_json::json;
use tickcast::channel::ChannelName;
use tickcast::engine::{Engine, EngineLimits, EngineStats};
use tickcast::record::{FeedRecord, JsonMap};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("usage: engine_count SHARDS UPDATES"))
        .collect();
    let [shards, updates] = args[..] else {
        eprintln!("usage: engine_count SHARDS UPDATES");
        return;
    };
    let limits = EngineLimits {
        max_targets_per_session: 16,
        max_channels: 16,
    };
    let mut engine = Engine::with_shards(Arc::from("count"), limits, shards, |_| {
        Arc::new(EngineStats::default())
    });
    let records: Vec<Arc<FeedRecord>> = (0..1024u64)
        .map(|i| {
            let serde_json::Value::Object(data) = json!({
                "bid": 28165.0 + i as f64 / 100.0,
                "ask": 28165.5 + i as f64 / 100.0,
                "volume": 41234.0 + i as f64,
            }) else {
                unreachable!()
            };
            Arc::new(FeedRecord {
                channel: ChannelName::new("quotes.BTCUSDT").unwrap(),
                data: data as JsonMap,
                ts: None,
                ingest_ns: 1_700_000_000_000_000_000 + i,
            })
        })
        .collect();
    // The first record creates the channel, which the shards are told of;
    // after that nothing is handed off, since nobody is subscribed.
    let mut handed_off = 0;
    for i in 0..updates {
        let event = engine.stage.apply(&records[i % records.len()], 0);
        handed_off += usize::from(event.is_some());
        black_box(event);
    }
    println!("{updates} updates applied with {shards} shards, {handed_off} handed off");
}
