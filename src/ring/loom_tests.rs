//! Model checks of the ring under loom: every interleaving (up to the preemption bound)
//! of the claim CAS, the slot stamp protocol, the cursors and the wake-up protocol.
//!
//! Run: `RUSTFLAGS="--cfg tickcast_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib -- loom`.
//! A lost wake-up shows up as a loom deadlock, a torn or unsynchronized slot access as a
//! loom causality error, a wrong value or count as a failed assertion.

use loom::future::block_on;
use loom::thread;

use crate::ring::{RecvError, Ring};

/// Receives until `Closed`; returns (values with the sequence each was read at, total lag).
fn drain(rx: &mut crate::ring::Consumer<u64>) -> (Vec<(u64, u64)>, u64) {
    let mut values = Vec::new();
    let mut lagged = 0;
    loop {
        let seq = rx.cursor();
        match block_on(rx.recv()) {
            Ok(value) => values.push((seq, value)),
            Err(RecvError::Lagged(n)) => lagged += n,
            Err(RecvError::Closed) => return (values, lagged),
        }
    }
}

/// Runs `publish` on a thread of its own against a gating consumer of `ring`, and checks
/// that the consumer gets exactly the values `0..count`, each at its own seq, none lagged.
fn gating_consumer_receives_all(
    ring: Ring<u64>,
    count: u64,
    publish: impl FnOnce(crate::ring::Producer<u64>) + Send + 'static,
) {
    let mut rx = ring.consumer();
    let tx = ring.producer();
    drop(ring);
    let producer = thread::spawn(move || publish(tx));
    let (values, lagged) = drain(&mut rx);
    let expected: Vec<(u64, u64)> = (0..count).map(|i| (i, i)).collect();
    assert_eq!(values, expected);
    assert_eq!(lagged, 0);
    producer.join().unwrap();
}

/// Two producers, one gating consumer, capacity 2: claims race with each other and with
/// the consumer's reads; the consumer sees each record once, per-producer FIFO.
#[test]
fn loom_two_producers_one_gating_consumer() {
    loom::model(|| {
        let ring = Ring::with_capacity(2);
        let mut rx = ring.consumer();
        let runs = [vec![10], vec![20]];
        let producers: Vec<_> = runs
            .iter()
            .cloned()
            .map(|values| {
                let tx = ring.producer();
                thread::spawn(move || {
                    for value in values {
                        block_on(tx.publish(value));
                    }
                })
            })
            .collect();
        drop(ring);

        let (values, lagged) = drain(&mut rx);
        assert_eq!(lagged, 0);
        let seqs: Vec<u64> = values.iter().map(|&(seq, _)| seq).collect();
        assert_eq!(seqs, [0, 1]);
        for run in &runs {
            let seen: Vec<u64> = values
                .iter()
                .map(|&(_, value)| value)
                .filter(|value| run.contains(value))
                .collect();
            assert_eq!(&seen, run);
        }
        for producer in producers {
            producer.join().unwrap();
        }
    });
}

/// A lossy reader racing a producer that laps it: each read is the record of that exact
/// sequence (never a torn or other one), and received + reported lag == published.
#[test]
fn loom_lossy_reader_lapped_by_producer() {
    const PUBLISHED: u64 = 4;
    loom::model(|| {
        let ring = Ring::with_capacity(2);
        let mut rx = ring.lossy_consumer();
        let tx = ring.producer();
        drop(ring);
        let producer = thread::spawn(move || {
            for seq in 0..PUBLISHED {
                // Value == 100 + its sequence, so a read of the wrong lap is visible.
                assert_eq!(tx.try_publish(100 + seq).ok(), Some(seq));
            }
        });

        let (values, lagged) = drain(&mut rx);
        for pair in values.windows(2) {
            assert!(pair[0].0 < pair[1].0, "sequences go forward");
        }
        for &(seq, value) in &values {
            assert_eq!(value, 100 + seq);
        }
        assert_eq!(values.len() as u64 + lagged, PUBLISHED);
        producer.join().unwrap();
    });
}

/// An idle consumer parks; the publish and then the close must each wake it. The main
/// thread keeps a producer until the first record arrives, so only the publish can wake
/// that first `recv`.
#[test]
fn loom_parked_consumer_is_woken() {
    loom::model(|| {
        let ring = Ring::with_capacity(2);
        let mut rx = ring.consumer();
        let tx = ring.producer();
        let remote = tx.clone();
        drop(ring);
        let producer = thread::spawn(move || {
            remote.try_publish(7).unwrap();
        });
        assert_eq!(block_on(rx.recv()), Ok(7));
        drop(tx);
        assert_eq!(block_on(rx.recv()), Err(RecvError::Closed));
        producer.join().unwrap();
    });
}

/// A producer parked on a full ring must be woken by the consumer freeing a slot.
#[test]
fn loom_parked_producer_is_woken() {
    loom::model(|| {
        gating_consumer_receives_all(Ring::with_capacity(2), 3, |tx| {
            for value in 0..3 {
                assert_eq!(block_on(tx.publish(value)), value);
            }
        });
    });
}

/// A gating consumer joining while a producer runs: it receives a gap-free run of
/// sequences from its start to the end, and producers never overwrite one it still needs.
#[test]
fn loom_gating_consumer_joins_while_publishing() {
    const PUBLISHED: u64 = 3;
    loom::model(|| {
        let ring = Ring::with_capacity(2);
        let tx = ring.producer();
        let producer = thread::spawn(move || {
            for value in 0..PUBLISHED {
                assert_eq!(block_on(tx.publish(value)), value);
            }
        });
        let mut rx = ring.consumer();
        drop(ring);
        let start = rx.cursor();
        let (values, lagged) = drain(&mut rx);
        assert_eq!(lagged, 0);
        let expected: Vec<(u64, u64)> = (start..PUBLISHED).map(|seq| (seq, seq)).collect();
        assert_eq!(values, expected);
        producer.join().unwrap();
    });
}

/// A batch publish (one claim per run) racing a gating consumer on a ring smaller than the
/// batch: the producer claims what fits, parks, and is woken as the consumer frees room;
/// the consumer's unsynchronized-by-reader-count (gated) reads never race an overwrite.
#[test]
fn loom_publish_many_vs_gating_consumer() {
    loom::model(|| {
        gating_consumer_receives_all(Ring::with_capacity(2), 3, |tx| {
            let mut values = vec![0, 1, 2];
            block_on(tx.publish_many(&mut values));
            assert!(values.is_empty());
        });
    });
}

/// A gating consumer that publishes its cursor only every 2 records (or when it catches
/// up) must still wake a producer parked on the full ring, and the producer must not
/// overwrite a slot before the consumer's clone of it.
#[test]
fn loom_lazy_cursor_release_wakes_parked_producer() {
    loom::model(|| {
        gating_consumer_receives_all(Ring::with_release_every(2, 2), 4, |tx| {
            for value in 0..4 {
                assert_eq!(block_on(tx.publish(value)), value);
            }
        });
    });
}
