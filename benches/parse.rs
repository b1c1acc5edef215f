//! Parsing one feed record line: simd-json against serde_json, on real lines.
//!
//! Every record a feed reads goes through `record::parse_record` (UTF-8 and depth checks,
//! `simd_json::serde::from_slice` into a `serde_json::Value`, then
//! `record_from_value`), so this is the per-line cost of ingest. The
//! alternative is plain `serde_json::from_slice` into the same `Value`, then
//! the same `record_from_value`; both produce an identical `FeedRecord`.
//!
//! Lines come from `tests/fixtures/replay-mixed.ndjson`: the first
//! `quotes.BTCUSDT` line (~150 B) and the longest `book.*` line, a full book
//! snapshot (~2 KB). simd-json parses in place, so each iteration of every
//! variant first copies the line into a reused buffer; `copy_only` measures
//! that copy alone as the harness baseline.
//!
//! Two reference lines explain the result rather than compete with it:
//! `simd_json_buffers` is `parse_record` with simd-json's scratch `Buffers`
//! kept across calls (`from_slice` allocates them on every call), and
//! `simd_json_dom` is simd-json into its own `OwnedValue`, without the serde
//! bridge to `serde_json::Value` and without building a `FeedRecord`.
//!
//! Runs on mimalloc, the server's global allocator (`src/main.rs`), since
//! parsing a `Value` is mostly allocation.
//! `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use tickcast::json_depth::DEFAULT_LIMIT;
use tickcast::record::{parse_record, record_from_value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = include_str!("../tests/fixtures/replay-mixed.ndjson");

/// `(name, line)` pairs: a quote and the largest book snapshot.
fn lines() -> [(&'static str, &'static [u8]); 2] {
    let quote = FIXTURE
        .lines()
        .find(|l| l.starts_with(r#"{"channel":"quotes."#))
        .expect("fixture has a quote line");
    let book = FIXTURE
        .lines()
        .filter(|l| l.starts_with(r#"{"channel":"book."#))
        .max_by_key(|l| l.len())
        .expect("fixture has a book line");
    [("quote", quote.as_bytes()), ("book", book.as_bytes())]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, line) in lines() {
        // Both parsers must agree before their speeds mean anything.
        let simd =
            parse_record(&mut line.to_vec(), DEFAULT_LIMIT).expect("simd-json parses the line");
        let serde = record_from_value(serde_json::from_slice(line).unwrap()).unwrap();
        assert_eq!(simd, serde, "{name}: parsers disagree");

        group.throughput(Throughput::Bytes(line.len() as u64));
        let mut buf = Vec::with_capacity(line.len());
        group.bench_with_input(BenchmarkId::new("copy_only", name), line, |b, line| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(line);
                black_box(&mut buf);
            })
        });
        group.bench_with_input(BenchmarkId::new("simd_json", name), line, |b, line| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(line);
                black_box(parse_record(&mut buf, DEFAULT_LIMIT).unwrap())
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_json", name), line, |b, line| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(line);
                let value: Value = serde_json::from_slice(&buf).unwrap();
                black_box(record_from_value(value).unwrap())
            })
        });
        let mut buffers = simd_json::Buffers::new(line.len());
        group.bench_with_input(
            BenchmarkId::new("simd_json_buffers", name),
            line,
            |b, line| {
                b.iter(|| {
                    buf.clear();
                    buf.extend_from_slice(line);
                    std::str::from_utf8(&buf).unwrap();
                    let value: Value =
                        simd_json::serde::from_slice_with_buffers(&mut buf, &mut buffers).unwrap();
                    black_box(record_from_value(value).unwrap())
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("simd_json_dom", name), line, |b, line| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(line);
                black_box(simd_json::to_owned_value(&mut buf).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
