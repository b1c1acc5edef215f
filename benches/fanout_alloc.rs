//! Proves the fan-out hot path does not allocate per delivery.
//!
//! A counting global allocator (mimalloc, the server's allocator, wrapped to
//! count `alloc`, `alloc_zeroed` and `realloc` calls) watches
//! `Engine::apply` while the engine delivers quote updates on one channel to
//! N sessions, each with its own `Arc<Outbox>`. Per update the engine may
//! allocate a small constant (merging the patch, serializing it, encoding the
//! frame once, sharing it as `Bytes`); per delivery it should only clone a
//! `Bytes` and push it onto a queue that already has room.
//!
//! The run is done twice, with 1 and with 1000 sessions, 1000 updates each
//! (in rounds of 100; the outboxes are drained between rounds, outside the
//! counted region, and a warm-up round grows every outbox queue first). The
//! difference between the two counts, divided by the extra deliveries, is the
//! allocations per delivery; the bench fails if it reaches 0.01, so a change
//! that adds a per-delivery allocation breaks `cargo bench`. Wall time per
//! update is printed too, as a rough figure (`benches/encode.rs` has the
//! careful timings).
//!
//! Then again with every session compressed (permessage-deflate agreed,
//! the default threshold and window): each update's frame is compressed
//! once, by the first delivery that needs it, and the compressed bytes are
//! shared like the plain ones, so the per-delivery figure must stay as low.
//!
//! The drain here keeps its buffer, which the outbox takes back as its
//! queue's room. The server's session writer does not: it drops its buffer
//! after each written batch so that an idle session holds none
//! (docs/benchmarks.md, memory), which costs one allocation per write batch
//! (not per frame of a batch), next to a send(2) of about 2.4 us.
//! `cargo bench --bench fanout_alloc`

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tickcast::deflate::{CompressionConfig, Negotiated};
use tickcast::engine::patch::merge_patch;
use tickcast::session::outbox::{Outbox, QueuedFrame};
use tickcast::wire;

/// Counts allocation calls; frees are not counted.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to mimalloc with the caller's arguments
// unchanged, so mimalloc's guarantees are the caller's.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is (see the impl).
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[path = "support/quote_fanout.rs"]
mod quote_fanout;
use quote_fanout::{records, subscribed_engine, CHANNEL};

const SESSIONS: u64 = 1000;
const UPDATES: usize = 1000;
const ROUND: usize = 100;
/// Most allocations per delivery tolerated before the bench fails.
const MAX_ALLOCS_PER_DELIVERY: f64 = 0.01;

struct Run {
    allocs: u64,
    deliveries: u64,
    elapsed: Duration,
}

/// Moves everything queued out of every outbox (not counted): how many
/// frames, and how many of them compressed (RSV1 set).
fn drain(outboxes: &[Arc<Outbox>], sink: &mut Vec<QueuedFrame>) -> (u64, u64) {
    let (mut frames, mut compressed) = (0, 0);
    for outbox in outboxes {
        // Something is queued, so `take` returns without waiting.
        outbox.take(sink).now_or_never().expect("outbox has frames");
        frames += sink.len() as u64;
        compressed += sink.iter().filter(|f| f.bytes[0] & 0x40 != 0).count() as u64;
        sink.clear();
    }
    (frames, compressed)
}

/// Applies `UPDATES` records with `sessions` subscribers, compressed ones
/// if `deflate`; counts only `apply`.
fn run(sessions: u64, deflate: Option<Negotiated>) -> Run {
    let (mut engine, outboxes) = subscribed_engine(sessions, deflate);

    let warm_up = records(1 + ROUND);
    let measured = records(UPDATES);
    let mut sink = Vec::with_capacity(2 * ROUND);
    // The first record creates the channel and sends snapshots; the rest of
    // the warm-up round grows each outbox queue to a round's worth.
    // `now` only stamps frames for latency histograms; any value will do.
    let mut now = 0;
    for record in &warm_up {
        now += 1;
        engine.apply(record, now);
    }
    drain(&outboxes, &mut sink);

    let (mut allocs, mut deliveries, mut elapsed) = (0, 0, Duration::ZERO);
    let mut compressed = 0;
    for round in measured.chunks(ROUND) {
        let before = ALLOCS.load(Ordering::Relaxed);
        let start = Instant::now();
        for record in round {
            now += 1;
            engine.apply(record, now);
        }
        elapsed += start.elapsed();
        allocs += ALLOCS.load(Ordering::Relaxed) - before;
        let (frames, deflated) = drain(&outboxes, &mut sink);
        deliveries += frames;
        compressed += deflated;
    }
    let want = if deflate.is_some() { deliveries } else { 0 };
    assert_eq!(compressed, want, "frames sent compressed");
    assert_eq!(
        deliveries,
        sessions * UPDATES as u64,
        "every session got every update"
    );
    Run {
        allocs,
        deliveries,
        elapsed,
    }
}

/// Allocation calls of `f`.
fn count(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    f();
    ALLOCS.load(Ordering::Relaxed) - before
}

/// Where the per-update allocations go: the steps of `Engine::apply` done by
/// hand on the same records, each counted on its own.
fn per_step() -> [(&'static str, u64); 3] {
    let records = records(UPDATES);
    let mut state = records[0].data.clone();
    let (mut merge, mut patch, mut frame) = (0, 0, 0);
    for (seq, record) in (1..).zip(&records) {
        merge += count(|| merge_patch(&mut state, &record.data));
        let mut data_json = Vec::new();
        patch += count(|| data_json = serde_json::to_vec(&record.data).unwrap());
        frame += count(|| {
            let bytes = wire::update(CHANNEL, seq, seq - 1, record.ingest_ns, &data_json);
            drop(bytes.clone());
        });
    }
    [
        ("merge_patch", merge),
        ("patch to_vec", patch),
        ("wire::update + share", frame),
    ]
}

fn main() {
    let config = CompressionConfig::default();
    let compressed = Negotiated::new(config.server_max_window_bits, config.min_bytes);
    for deflate in [None, Some(compressed)] {
        measure(deflate);
    }
}

fn measure(deflate: Option<Negotiated>) {
    let one = run(1, deflate);
    let many = run(SESSIONS, deflate);
    let updates = UPDATES as f64;
    let per_update = one.allocs as f64 / updates;
    let per_delivery =
        (many.allocs as f64 - one.allocs as f64) / (many.deliveries - one.deliveries) as f64;
    let how = if deflate.is_some() {
        "every session compressed"
    } else {
        "uncompressed"
    };
    println!(
        "fanout_alloc ({how}): {UPDATES} quote updates on one channel, allocation calls in Engine::apply"
    );
    for (sessions, r) in [(1, &one), (SESSIONS, &many)] {
        println!(
            "  {sessions:>4} sessions: {:>6} allocs = {:.2}/update, {:.4}/delivery; {:>8.0} ns/update, {:.1} ns/delivery",
            r.allocs,
            r.allocs as f64 / updates,
            r.allocs as f64 / r.deliveries as f64,
            r.elapsed.as_nanos() as f64 / updates,
            r.elapsed.as_nanos() as f64 / r.deliveries as f64,
        );
    }
    println!(
        "  per update (1 session): {per_update:.2} allocs; marginal per delivery: {per_delivery:.5} allocs (limit {MAX_ALLOCS_PER_DELIVERY})"
    );
    let steps = per_step()
        .map(|(step, allocs)| format!("{step} {:.2}", allocs as f64 / updates))
        .join(", ");
    println!("  by step, per update: {steps}");
    assert!(
        per_delivery < MAX_ALLOCS_PER_DELIVERY,
        "fan-out allocates per delivery: {per_delivery:.4} allocs per delivery"
    );
}
