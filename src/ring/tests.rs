//! Unit tests of the ring: order, exactly-once delivery, gating, laps,
//! closing and wake-ups.

use super::*;
use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;
use tokio::time::timeout;

/// Upper bound for anything a test waits on; passing runs take milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

async fn wait_until(condition: impl Fn() -> bool) {
    timeout(DEADLINE, async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition reached before the deadline");
}

#[test]
fn delivers_in_fifo_order_across_laps() {
    let ring = Ring::with_capacity(8);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    for lap in 0..3u64 {
        for i in lap * 8..lap * 8 + 8 {
            assert_eq!(tx.try_publish(i), Ok(i));
        }
        for i in lap * 8..lap * 8 + 8 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }
    assert_eq!(rx.cursor(), 24);
}

#[test]
#[should_panic(expected = "power of two >= 2, got 12")]
fn rejects_capacity_that_is_not_a_power_of_two() {
    let _ = Ring::<u64>::with_capacity(12);
}

#[test]
#[should_panic(expected = "power of two >= 2, got 1")]
fn rejects_capacity_one() {
    let _ = Ring::<u64>::with_capacity(1);
}

/// Checks values `producer << 32 | i` from `batch` against the next `i`
/// expected from each producer, and advances it.
fn take_in_order(batch: &mut Vec<u64>, next: &mut [u64]) {
    for value in batch.drain(..) {
        let (producer, i) = ((value >> 32) as usize, value & 0xffff_ffff);
        assert_eq!(i, next[producer], "producer {producer} out of order");
        next[producer] += 1;
    }
}

/// Waits (bounded) for every producer, then checks each consumer saw all
/// `each` records of every producer.
async fn join_and_check_counts<const P: usize>(
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<[u64; P]>>,
    each: u64,
) {
    for producer in producers {
        timeout(DEADLINE, producer).await.unwrap().unwrap();
    }
    for consumer in consumers {
        let next = timeout(DEADLINE, consumer).await.unwrap().unwrap();
        assert_eq!(next, [each; P]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_gating_consumer_sees_every_record_once_in_order() {
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 10_000;
    // Small, so producers keep hitting "full" and parking.
    let ring = Ring::with_capacity(64);
    let consumers: Vec<_> = (0..2)
        .map(|batched| {
            let mut rx = ring.consumer();
            tokio::spawn(async move {
                let mut next = [0u64; PRODUCERS as usize];
                let mut batch = Vec::new();
                loop {
                    let seq = rx.cursor();
                    let received = if batched == 1 {
                        rx.recv_many(&mut batch, 100).await
                    } else {
                        rx.recv().await.map(|value| {
                            batch.push(value);
                            1
                        })
                    };
                    match received {
                        Ok(n) => assert_eq!(rx.cursor(), seq + n as u64),
                        Err(RecvError::Closed) => break,
                        Err(lagged) => panic!("gating consumer got {lagged}"),
                    }
                    take_in_order(&mut batch, &mut next);
                }
                next
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = ring.producer();
            tokio::spawn(async move {
                for i in 0..EACH {
                    tx.publish(p << 32 | i).await;
                }
            })
        })
        .collect();
    drop(ring);
    join_and_check_counts(producers, consumers, EACH).await;
}

#[tokio::test]
async fn full_ring_rejects_try_publish_and_parks_publish() {
    let ring = Ring::with_capacity(4);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    for i in 0..4 {
        assert_eq!(tx.try_publish(i), Ok(i));
    }
    assert_eq!(tx.try_publish(4).map_err(Full::into_inner), Err(4));
    let publisher = tokio::spawn(async move { tx.publish(4).await });
    wait_until(|| ring.shared.tx_waiters.waiting() == 1).await;
    assert!(!publisher.is_finished());
    assert_eq!(rx.try_recv(), Ok(0));
    assert_eq!(timeout(DEADLINE, publisher).await.unwrap().unwrap(), 4);
    for i in 1..5 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(ring.shared.tx_waiters.waiting(), 0);
}

#[test]
fn cancelled_publish_leaves_no_hole_and_no_waiter() {
    let ring = Ring::with_capacity(2);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    tx.try_publish(0).unwrap();
    tx.try_publish(1).unwrap();
    {
        let mut publish = std::pin::pin!(tx.publish(2));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(publish.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ring.shared.tx_waiters.waiting(), 1);
    }
    assert_eq!(ring.shared.tx_waiters.waiting(), 0);
    assert_eq!(rx.try_recv(), Ok(0));
    assert_eq!(
        tx.try_publish(3),
        Ok(2),
        "the cancelled value took no sequence"
    );
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.try_recv(), Ok(3));
}

#[test]
fn lapped_lossy_consumer_reports_exact_lag_then_oldest_record() {
    let ring = Ring::with_capacity(4);
    let mut lossy = ring.lossy_consumer();
    let tx = ring.producer();
    for i in 0..10 {
        assert_eq!(
            tx.try_publish(i),
            Ok(i),
            "lossy consumers never fill the ring"
        );
    }
    // Slots hold 6..=9: 0..=5 are gone.
    assert_eq!(lossy.try_recv(), Err(TryRecvError::Lagged(6)));
    assert_eq!(lossy.cursor(), 6);
    for i in 6..10 {
        assert_eq!(lossy.try_recv(), Ok(i));
    }
    assert_eq!(lossy.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn lossy_consumer_does_not_gate_but_gating_one_does() {
    let ring = Ring::with_capacity(4);
    let mut gating = ring.consumer();
    let mut lossy = ring.lossy_consumer();
    let tx = ring.producer();
    for i in 0..4 {
        tx.try_publish(i).unwrap();
    }
    assert!(
        tx.try_publish(4).is_err(),
        "gating consumer has read nothing"
    );
    for i in 0..4 {
        assert_eq!(gating.try_recv(), Ok(i));
    }
    assert_eq!(lossy.try_recv(), Ok(0));
    for i in 4..8 {
        tx.try_publish(i).unwrap();
    }
    assert_eq!(lossy.try_recv(), Err(TryRecvError::Lagged(3)));
    assert_eq!(lossy.try_recv(), Ok(4));
    assert_eq!(gating.try_recv(), Ok(4));
}

#[tokio::test]
async fn closes_after_last_producer_once_drained() {
    let ring = Ring::with_capacity(4);
    let mut rx = ring.consumer();
    let first = ring.producer();
    let second = first.clone();
    first.try_publish(1).unwrap();
    drop(first);
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "one producer left");
    second.try_publish(2).unwrap();
    drop(second);
    assert_eq!(timeout(DEADLINE, rx.recv()).await.unwrap(), Ok(2));
    assert_eq!(rx.recv().await, Err(RecvError::Closed));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
}

#[tokio::test]
async fn parked_consumer_is_woken_by_close() {
    let ring = Ring::<u64>::with_capacity(4);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    let reader = tokio::spawn(async move { rx.recv().await });
    wait_until(|| ring.shared.rx_waiters.waiting() == 1).await;
    drop(tx);
    let got = timeout(DEADLINE, reader).await.unwrap().unwrap();
    assert_eq!(got, Err(RecvError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_consumers_are_woken_by_publish() {
    let ring = Ring::with_capacity(4);
    let readers: Vec<_> = [ring.consumer(), ring.lossy_consumer()]
        .into_iter()
        .map(|mut rx| tokio::spawn(async move { rx.recv().await }))
        .collect();
    wait_until(|| ring.shared.rx_waiters.waiting() == 2).await;
    ring.producer().try_publish(7).unwrap();
    for reader in readers {
        assert_eq!(timeout(DEADLINE, reader).await.unwrap().unwrap(), Ok(7));
    }
}

#[test]
fn late_consumers_start_at_the_tail() {
    let ring = Ring::with_capacity(4);
    let tx = ring.producer();
    let mut early = ring.consumer();
    tx.try_publish(0).unwrap();
    tx.try_publish(1).unwrap();
    let mut late = ring.consumer();
    let mut late_lossy = ring.lossy_consumer();
    assert_eq!((late.cursor(), late_lossy.cursor()), (2, 2));
    assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
    tx.try_publish(2).unwrap();
    assert_eq!(late.try_recv(), Ok(2));
    assert_eq!(late_lossy.try_recv(), Ok(2));
    for i in 0..3 {
        assert_eq!(early.try_recv(), Ok(i));
    }
}

#[tokio::test]
async fn dropping_a_gating_consumer_releases_waiting_producers() {
    let ring = Ring::with_capacity(2);
    let rx = ring.consumer();
    let tx = ring.producer();
    tx.try_publish(0).unwrap();
    tx.try_publish(1).unwrap();
    let publisher = tokio::spawn(async move { tx.publish(2).await });
    wait_until(|| ring.shared.tx_waiters.waiting() == 1).await;
    drop(rx);
    assert_eq!(timeout(DEADLINE, publisher).await.unwrap().unwrap(), 2);
}

#[test]
#[should_panic(expected = "more than 16 gating consumers")]
fn too_many_gating_consumers() {
    let ring = Ring::<u64>::with_capacity(2);
    let _consumers: Vec<_> = (0..=DEFAULT_GATING_CONSUMERS)
        .map(|_| ring.consumer())
        .collect();
}

/// The gate count is the ring's own: 256 gating consumers on one ring each
/// receive every record, and a ring built for 3 refuses a fourth.
#[tokio::test]
async fn gates_are_sized_at_construction() {
    let ring = Ring::with_consumers(4, 256);
    let mut consumers: Vec<_> = (0..256).map(|_| ring.consumer()).collect();
    let tx = ring.producer();
    for n in 0..4u64 {
        tx.try_publish(n).unwrap();
    }
    assert!(tx.try_publish(4).is_err(), "every consumer gates");
    for consumer in &mut consumers {
        for n in 0..4u64 {
            assert_eq!(consumer.try_recv(), Ok(n));
        }
    }
    let small = Ring::<u64>::with_consumers(2, 3);
    let _three: Vec<_> = (0..3).map(|_| small.consumer()).collect();
    let fourth = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| small.consumer()));
    assert!(fourth.is_err());
}

#[tokio::test]
async fn recv_many_drains_bursts() {
    let ring = Ring::with_capacity(8);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    for i in 0..5 {
        tx.try_publish(i).unwrap();
    }
    let mut buf = Vec::new();
    assert_eq!(rx.recv_many(&mut buf, 0).await, Ok(0));
    assert_eq!(rx.recv_many(&mut buf, 3).await, Ok(3));
    assert_eq!(rx.recv_many(&mut buf, 10).await, Ok(2));
    assert_eq!(buf, [0, 1, 2, 3, 4]);
    drop(tx);
    assert_eq!(rx.recv_many(&mut buf, 10).await, Err(RecvError::Closed));
}

#[test]
fn drops_every_value_exactly_once() {
    let token = std::sync::Arc::new(());
    {
        let ring = Ring::with_capacity(4);
        let mut lossy = ring.lossy_consumer();
        let tx = ring.producer();
        for _ in 0..10 {
            tx.try_publish(token.clone()).unwrap();
        }
        assert_eq!(std::sync::Arc::strong_count(&token), 5);
        assert_eq!(lossy.try_recv(), Err(TryRecvError::Lagged(6)));
        let clone = lossy.try_recv().unwrap();
        assert_eq!(std::sync::Arc::strong_count(&token), 6);
        drop(clone);
    }
    assert_eq!(std::sync::Arc::strong_count(&token), 1);
}

#[test]
fn try_publish_many_claims_what_fits_as_one_run() {
    let ring = Ring::with_capacity(8);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    let mut values = Vec::new();
    assert_eq!(tx.try_publish_many(&mut values), 0..0);
    tx.try_publish(100).unwrap();
    values.extend(0..10u64);
    // 7 slots left: the first 7 values go, the rest stay, in order.
    assert_eq!(tx.try_publish_many(&mut values), 1..8);
    assert_eq!(values, [7, 8, 9]);
    assert_eq!(tx.try_publish_many(&mut values), 0..0, "full");
    assert_eq!(values, [7, 8, 9]);
    let mut buf = Vec::new();
    assert_eq!(rx.try_recv(), Ok(100));
    while let Ok(value) = rx.try_recv() {
        buf.push(value);
    }
    assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(tx.try_publish_many(&mut values), 8..11);
    assert!(values.is_empty());
    assert_eq!(rx.try_recv(), Ok(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_many_delivers_every_record_once_in_order_to_every_consumer() {
    const PRODUCERS: u64 = 3;
    const EACH: u64 = 10_000;
    let ring = Ring::with_capacity(64);
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let mut rx = ring.consumer();
            tokio::spawn(async move {
                let mut next = [0u64; PRODUCERS as usize];
                let mut batch = Vec::new();
                loop {
                    match rx.recv_many(&mut batch, 50).await {
                        Ok(_) => {}
                        Err(RecvError::Closed) => return next,
                        Err(lagged) => panic!("gating consumer got {lagged}"),
                    }
                    take_in_order(&mut batch, &mut next);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let tx = ring.producer();
            tokio::spawn(async move {
                let mut run = Vec::new();
                // Runs of varying length, some longer than the ring.
                let mut i = 0;
                let mut len = 1;
                while i < EACH {
                    let end = (i + len).min(EACH);
                    run.extend((i..end).map(|i| p << 32 | i));
                    tx.publish_many(&mut run).await;
                    assert!(run.is_empty());
                    i = end;
                    len = len % 97 + 13;
                }
            })
        })
        .collect();
    drop(ring);
    join_and_check_counts(producers, consumers, EACH).await;
}

#[test]
fn cancelled_publish_many_keeps_the_unpublished_tail() {
    let ring = Ring::with_capacity(4);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    let mut values: Vec<u64> = (0..6).collect();
    {
        let mut publish = std::pin::pin!(tx.publish_many(&mut values));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(publish.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ring.shared.tx_waiters.waiting(), 1);
    }
    assert_eq!(ring.shared.tx_waiters.waiting(), 0);
    assert_eq!(
        values,
        [4, 5],
        "published values were removed, the rest kept"
    );
    for i in 0..4 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(tx.try_publish_many(&mut values), 4..6);
}

#[tokio::test]
async fn publish_many_parks_until_the_consumer_frees_room() {
    let ring = Ring::with_capacity(4);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    let publisher = tokio::spawn(async move {
        let mut values: Vec<u64> = (0..10).collect();
        tx.publish_many(&mut values).await;
        values
    });
    let mut got = Vec::new();
    while got.len() < 10 {
        match timeout(DEADLINE, rx.recv()).await.unwrap() {
            Ok(value) => got.push(value),
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    let left = timeout(DEADLINE, publisher).await.unwrap().unwrap();
    assert!(left.is_empty());
    assert_eq!(rx.recv().await, Err(RecvError::Closed));
}

#[test]
fn gating_cursor_is_published_every_few_records_or_when_caught_up() {
    let ring = Ring::with_release_every(8, 4);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    for i in 0..8 {
        tx.try_publish(i).unwrap();
    }
    // Read 3: not yet published, so producers still see a full ring.
    for i in 0..3 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert!(tx.try_publish(8).is_err());
    // The 4th read publishes the cursor: 4 slots free.
    assert_eq!(rx.try_recv(), Ok(3));
    for i in 8..12 {
        assert_eq!(tx.try_publish(i), Ok(i));
    }
    assert!(tx.try_publish(12).is_err());
    // Catching up publishes at once: drain everything, then one more read finds nothing.
    for i in 4..12 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert_eq!(tx.try_publish_many(&mut (12..20).collect()), 12..20);
    for i in 12..14 {
        assert_eq!(rx.try_recv(), Ok(i));
    }
    assert_eq!(tx.try_publish(20).map_err(Full::into_inner), Err(20));
    let mut buf = Vec::new();
    // recv_many stopping short of its limit has caught up, so it publishes too.
    assert_eq!(rx.read_into(100, &mut |value| buf.push(value)), Ok(6));
    assert_eq!(buf, (14..20).collect::<Vec<_>>());
    assert_eq!(rx.released, 20);
    assert_eq!(tx.try_publish(20), Ok(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_cursor_release_still_wakes_parked_producers() {
    let ring = Ring::with_release_every(8, 8);
    let mut rx = ring.consumer();
    let tx = ring.producer();
    let publisher = tokio::spawn(async move {
        for i in 0..1000u64 {
            tx.publish(i).await;
        }
    });
    for i in 0..1000 {
        assert_eq!(timeout(DEADLINE, rx.recv()).await.unwrap(), Ok(i));
    }
    timeout(DEADLINE, publisher).await.unwrap().unwrap();
}

/// Panics when dropped while armed; clones are unarmed.
struct Bomb(u64, bool);

impl Clone for Bomb {
    fn clone(&self) -> Self {
        Bomb(self.0, false)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.1 && !std::thread::panicking() {
            self.1 = false;
            panic!("bomb {} dropped", self.0);
        }
    }
}

#[test]
fn a_panicking_drop_in_a_batch_still_fills_the_rest_of_the_run() {
    let ring = Ring::with_capacity(2);
    let mut lossy = ring.lossy_consumer();
    let tx = ring.producer();
    let mut values = vec![Bomb(0, true), Bomb(1, false)];
    assert_eq!(tx.try_publish_many(&mut values), 0..2);
    // Seq 2 overwrites armed bomb 0, whose drop panics after 2 is published.
    let mut values = vec![Bomb(2, false), Bomb(3, false)];
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tx.try_publish_many(&mut values)
    }));
    assert!(outcome.is_err());
    assert!(values.is_empty());
    assert_eq!(lossy.try_recv().map(|b| b.0), Err(TryRecvError::Lagged(2)));
    assert_eq!(lossy.try_recv().map(|b| b.0), Ok(2));
    assert_eq!(lossy.try_recv().map(|b| b.0), Ok(3), "the rest of the run");
    assert_eq!(ring.shared.tail.load(Ordering::Relaxed), 4);
}
