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
                    for value in batch.drain(..) {
                        let (producer, i) = ((value >> 32) as usize, value & 0xffff_ffff);
                        assert_eq!(i, next[producer], "producer {producer} out of order");
                        next[producer] += 1;
                    }
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
    for producer in producers {
        timeout(DEADLINE, producer).await.unwrap().unwrap();
    }
    for consumer in consumers {
        let next = timeout(DEADLINE, consumer).await.unwrap().unwrap();
        assert_eq!(next, [EACH; PRODUCERS as usize]);
    }
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
    let _consumers: Vec<_> = (0..=MAX_GATING_CONSUMERS)
        .map(|_| ring.consumer())
        .collect();
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
