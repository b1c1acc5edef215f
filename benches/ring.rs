//! The sequenced ring against `tokio::sync::broadcast`: one producer task, two consumer
//! tasks, 1M `u64` records through a 4096-slot ring, on a 3-worker tokio runtime.
//!
//! * `ring/GatingRecv`: `Ring::consumer` + `recv`: lossless, the producer waits for space.
//! * `ring/GatingRecvMany`: same, draining bursts of up to 256 with `recv_many`.
//! * `ring/LossyRecv`: `Ring::lossy_consumer` + `recv`: like broadcast, may lag.
//! * `ring/GatingPublishManyRecvMany`: gating `recv_many` as above, and the producer hands
//!   over runs of 256 with `publish_many` (one claim and one wake-up check per run).
//!   `broadcast` has no batch send, so this compares the ring's batch API with its per-item one.
//! * `tokio_broadcast`: `broadcast::channel` + `recv` (the alternative; may lag).
//!
//! Each consumer counts records received plus records reported lagged, so every variant moves
//! the same 1M sequences; lossy variants may skip some of them. Record machine and versions
//! beside any numbers you quote (`cargo bench --bench ring`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickcast::ring::{RecvError, Ring};
use tokio::sync::broadcast;

const ITEMS: u64 = 1_000_000;
const CAPACITY: usize = 4096;
const CONSUMERS: usize = 2;
const BATCH: usize = 256;

#[derive(Clone, Copy, Debug)]
enum Variant {
    GatingRecv,
    GatingRecvMany,
    LossyRecv,
    GatingPublishManyRecvMany,
}

async fn through_ring(variant: Variant) -> u64 {
    let ring = Ring::with_capacity(CAPACITY);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let mut rx = match variant {
                Variant::LossyRecv => ring.lossy_consumer(),
                Variant::GatingRecv
                | Variant::GatingRecvMany
                | Variant::GatingPublishManyRecvMany => ring.consumer(),
            };
            tokio::spawn(async move {
                let mut seen = 0u64;
                let mut buf = Vec::with_capacity(BATCH);
                loop {
                    let received = match variant {
                        Variant::GatingRecvMany | Variant::GatingPublishManyRecvMany => {
                            rx.recv_many(&mut buf, BATCH).await
                        }
                        _ => rx.recv().await.map(|value| {
                            buf.push(value);
                            1
                        }),
                    };
                    match received {
                        Ok(n) => {
                            seen += n as u64;
                            buf.clear();
                        }
                        Err(RecvError::Lagged(missed)) => seen += missed,
                        Err(RecvError::Closed) => return seen,
                    }
                }
            })
        })
        .collect();
    let tx = ring.producer();
    drop(ring);
    if let Variant::GatingPublishManyRecvMany = variant {
        let mut run = Vec::with_capacity(BATCH);
        for value in 0..ITEMS {
            run.push(value);
            if run.len() == BATCH {
                tx.publish_many(&mut run).await;
            }
        }
        tx.publish_many(&mut run).await;
    } else {
        for value in 0..ITEMS {
            tx.publish(value).await;
        }
    }
    drop(tx);
    let mut total = 0;
    for consumer in consumers {
        total += consumer.await.expect("consumer task");
    }
    total
}

async fn through_broadcast() -> u64 {
    let (tx, _) = broadcast::channel(CAPACITY);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let mut seen = 0u64;
                loop {
                    match rx.recv().await {
                        Ok(_) => seen += 1,
                        Err(broadcast::error::RecvError::Lagged(missed)) => seen += missed,
                        Err(broadcast::error::RecvError::Closed) => return seen,
                    }
                }
            })
        })
        .collect();
    for value in 0..ITEMS {
        tx.send(value).expect("consumers alive");
    }
    drop(tx);
    let mut total = 0;
    for consumer in consumers {
        total += consumer.await.expect("consumer task");
    }
    total
}

fn one_producer_two_consumers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONSUMERS + 1)
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("1p2c_1M_u64");
    group
        .throughput(Throughput::Elements(ITEMS))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let expected = ITEMS * CONSUMERS as u64;
    for variant in [
        Variant::GatingRecv,
        Variant::GatingRecvMany,
        Variant::LossyRecv,
        Variant::GatingPublishManyRecvMany,
    ] {
        group.bench_function(BenchmarkId::new("ring", format!("{variant:?}")), |b| {
            b.to_async(&runtime).iter(|| async move {
                let total = through_ring(variant).await;
                // Lossy consumers join at the tail, so they may see slightly fewer.
                assert!(total <= expected);
                total
            });
        });
    }
    group.bench_function("tokio_broadcast", |b| {
        b.to_async(&runtime).iter(|| async {
            let total = through_broadcast().await;
            assert!(total <= expected);
            total
        });
    });
    group.finish();
}

criterion_group!(benches, one_producer_two_consumers);
criterion_main!(benches);
