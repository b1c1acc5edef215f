//! Encoding server messages, and why the engine encodes each update once.
//!
//! * `encode/update`: `wire::update` (header + envelope around an
//!   already-serialized patch) for a quote patch (84 B of data) and a book
//!   snapshot patch (~1.9 KB), both real records from
//!   `tests/fixtures/replay-mixed.ndjson`. Throughput is frame bytes.
//! * `encode/snapshot`: `wire::snapshot` of a 20-field channel state.
//! * `encode/deflate_frame`: compressing the quote and book update frames
//!   for permessage-deflate (`deflate::deflate_frame`, done once per update
//!   for every compressed subscriber). Throughput is frame bytes.
//! * `encode/patch_to_vec`: `serde_json::to_vec` of the patch `JsonMap`, the
//!   other per-update encoding the engine does (before `wire::update`).
//! * `encode/fanout_1000`: one update to 1000 subscribers, either encoded
//!   once and shared as 1000 `Bytes` clones (what `engine::fanout` does) or
//!   encoded 1000 times, once per subscriber. Each iteration fills and then
//!   clears a reused `Vec<Bytes>` standing in for the outboxes, so freeing
//!   the frames is counted too. Throughput is deliveries.
//!
//! Runs on mimalloc, the server's global allocator (`src/main.rs`).
//! `cargo bench --bench encode -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use tickcast::record::{record_from_value, JsonMap};
use tickcast::wire;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = include_str!("../tests/fixtures/replay-mixed.ndjson");
const SUBSCRIBERS: usize = 1000;
const SEQ: u64 = 36_090_299_877;
const TS: u64 = 1_680_652_800_004_231_000;

/// The `data` patch of one fixture line.
fn data_of(line: &str) -> JsonMap {
    record_from_value(serde_json::from_str(line).unwrap())
        .unwrap()
        .data
}

/// `("quote", first quote patch)` and `("book", largest book patch)`.
fn patches() -> [(&'static str, JsonMap); 2] {
    let quote = FIXTURE
        .lines()
        .find(|l| l.starts_with(r#"{"channel":"quotes."#))
        .expect("fixture has a quote line");
    let book = FIXTURE
        .lines()
        .filter(|l| l.starts_with(r#"{"channel":"book."#))
        .max_by_key(|l| l.len())
        .expect("fixture has a book line");
    [("quote", data_of(quote)), ("book", data_of(book))]
}

/// A 20-field channel state: a ticker with a nested object and an array.
fn state_20() -> JsonMap {
    let value = json!({
        "symbol": "BTCUSDT", "bid": 28165.47, "bid_size": 7.9868, "ask": 28165.48,
        "ask_size": 3.26888, "last": 28165.47, "last_size": 0.00056, "open": 28010.0,
        "high": 28390.12, "low": 27944.5, "volume": 41234.55871, "quote_volume": 1.16e9,
        "trades": 1_204_331, "vwap": 28153.2, "change": 155.47, "change_pct": 0.555,
        "status": "trading", "u": 36_090_299_876u64,
        "limits": {"tick": 0.01, "lot": 0.00001, "min_notional": 5},
        "sessions": ["pre", "regular", "post"]
    });
    let serde_json::Value::Object(map) = value else {
        unreachable!()
    };
    assert_eq!(map.len(), 20);
    map
}

fn encode(c: &mut Criterion) {
    let patches = patches();
    let mut group = c.benchmark_group("encode");

    for (name, data) in &patches {
        let data_json = serde_json::to_vec(data).unwrap();
        let frame_len = wire::update("quotes.BTCUSDT", SEQ, SEQ - 1, TS, &data_json).len();
        group.throughput(Throughput::Bytes(frame_len as u64));
        group.bench_with_input(BenchmarkId::new("update", name), &data_json, |b, d| {
            b.iter(|| wire::update(black_box("quotes.BTCUSDT"), SEQ, SEQ - 1, TS, d))
        });
        let frame = wire::update("quotes.BTCUSDT", SEQ, SEQ - 1, TS, &data_json);
        group.bench_with_input(BenchmarkId::new("deflate_frame", name), &frame, |b, f| {
            b.iter(|| tickcast::deflate::deflate_frame(black_box(f)))
        });
        group.throughput(Throughput::Bytes(data_json.len() as u64));
        group.bench_with_input(BenchmarkId::new("patch_to_vec", name), data, |b, d| {
            b.iter(|| serde_json::to_vec(black_box(d)).unwrap())
        });
    }

    let state = state_20();
    let frame_len = wire::snapshot("quotes.BTCUSDT", SEQ, "e1", &state, false).len();
    group.throughput(Throughput::Bytes(frame_len as u64));
    group.bench_function(BenchmarkId::new("snapshot", "20_fields"), |b| {
        b.iter(|| wire::snapshot(black_box("quotes.BTCUSDT"), SEQ, "e1", &state, false))
    });

    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let mut outboxes: Vec<Bytes> = Vec::with_capacity(SUBSCRIBERS);
    for (name, data) in &patches {
        let data_json = serde_json::to_vec(data).unwrap();
        let id = format!("fanout_{SUBSCRIBERS}/{name}");
        group.bench_function(BenchmarkId::new("encode_once_clone", &id), |b| {
            b.iter(|| {
                let frame = wire::update("quotes.BTCUSDT", SEQ, SEQ - 1, TS, &data_json);
                for _ in 0..SUBSCRIBERS {
                    outboxes.push(frame.clone());
                }
                black_box(&outboxes);
                outboxes.clear();
            })
        });
        group.bench_function(BenchmarkId::new("encode_per_subscriber", &id), |b| {
            b.iter(|| {
                for _ in 0..SUBSCRIBERS {
                    outboxes.push(wire::update("quotes.BTCUSDT", SEQ, SEQ - 1, TS, &data_json));
                }
                black_box(&outboxes);
                outboxes.clear();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
