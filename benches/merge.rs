//! `engine::patch::merge_patch`: the per-update cost of applying a record to
//! its channel's state, paid once per record whatever the subscriber count.
//!
//! * `merge/quote`: a 5-field quote state and a patch replacing all 5 fields
//!   (two consecutive `quotes.BTCUSDT` records of the replay fixture).
//! * `merge/book`: a book state with 250 bid and 250 ask levels (keyed by
//!   price string, as the fixture's `book.*` channels are) and a diff of 20
//!   levels: per side 4 size changes, 3 deletions (`null`) and 3 new levels,
//!   plus an `exch_ts` replacement.
//!
//! Each iteration patches a fresh clone of the state; `iter_batched` keeps
//! the clone and the drop out of the timing, so only the merge is measured.
//! Runs on mimalloc, the server's global allocator (`src/main.rs`).
//! `cargo bench --bench merge -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};
use tickcast::engine::patch::merge_patch;
use tickcast::record::JsonMap;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = include_str!("../tests/fixtures/replay-mixed.ndjson");
const LEVELS_PER_SIDE: usize = 250;

fn object(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The `data` of the first two quote records: (state, patch).
fn quote() -> (JsonMap, JsonMap) {
    let mut quotes = FIXTURE
        .lines()
        .filter(|l| l.starts_with(r#"{"channel":"quotes.BTCUSDT""#))
        .map(|l| {
            let mut record = object(serde_json::from_str(l).unwrap());
            object(record.remove("data").unwrap())
        });
    (quotes.next().unwrap(), quotes.next().unwrap())
}

fn price(side: f64, level: usize) -> String {
    format!("{:.8}", 0.015 + side * 0.000_01 * level as f64)
}

/// A 500-level book and a 20-level diff (with deletions): (state, patch).
fn book() -> (JsonMap, JsonMap) {
    let mut state = JsonMap::new();
    let mut patch = JsonMap::new();
    for (name, side) in [("bids", -1.0), ("asks", 1.0)] {
        let levels: JsonMap = (0..LEVELS_PER_SIDE)
            .map(|i| (price(side, i), json!(10.0 + i as f64 * 0.37)))
            .collect();
        state.insert(name.into(), Value::Object(levels));
        let mut diff = JsonMap::new();
        for i in [0, 3, 17, 90] {
            diff.insert(price(side, i), json!(1.25 * i as f64 + 0.5));
        }
        for i in [1, 40, 249] {
            diff.insert(price(side, i), Value::Null);
        }
        for i in [250, 251, 300] {
            diff.insert(price(side, i), json!(7.5));
        }
        patch.insert(name.into(), Value::Object(diff));
    }
    state.insert("exch_ts".into(), json!(1_617_654_356_924_149_000u64));
    patch.insert("exch_ts".into(), json!(1_617_654_356_924_150_000u64));
    (state, patch)
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for (name, (state, patch)) in [("quote", quote()), ("book", book())] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || state.clone(),
                |mut state| {
                    merge_patch(&mut state, &patch);
                    state
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
