//! The sequenced ring: a bounded multi-producer, multi-consumer hand-off from the feeds to
//! the engine (and any other reader, such as a recorder).
//!
//! # Algorithm
//!
//! This is the LMAX Disruptor's ring (Thompson, Farley et al., "Disruptor: High performance
//! alternative to bounded queues for exchanging data between concurrent threads", 2011): a
//! power-of-two array of `N` slots addressed by an ever-growing 64-bit sequence number
//! (`slot = seq & (N - 1)`). Producers claim a sequence from a shared counter, fill its slot
//! and publish it; every consumer walks the sequence with a private cursor; the cursors of
//! *gating* consumers bound how far producers may claim, so a slow gating consumer applies
//! back-pressure instead of losing records. Where tickcast differs:
//!
//! * Publication is a per-slot *stamp* (like the Disruptor's multi-producer "available
//!   buffer" of lap numbers) that also carries a reader count and a WRITING flag. That lets
//!   *lossy* consumers, which never gate, read while producers overwrite: a lapped reader
//!   sees a newer lap in the stamp and reports [`RecvError::Lagged`] instead of reading a
//!   torn value (as `tokio::sync::broadcast` does). The Disruptor only has gating readers.
//! * A claim is a CAS bounded by a cached limit (the Disruptor's `tryNext`), never a blind
//!   `fetch_add`, and the slot is written in the same synchronous step. So a cancelled
//!   [`Producer::publish`] future can never leave a claimed-but-empty hole.
//! * Idle consumers and blocked producers park as async tasks (wakers), instead of one of
//!   the Disruptor's busy-spin or blocking `WaitStrategy`s.
//! * Gating consumers may join and leave while the ring runs (see "Joining").
//! * Values are moved in and cloned out (`T: Clone`, typically an `Arc`), not mutated in place.
//!
//! # State and encodings
//!
//! * `tail` (cache-padded): the next sequence to claim. Only ever grows, by successful CAS.
//! * `limit` (cache-padded): claims stay strictly below it. It is the maximum of every
//!   value `min(gating cursors, tail) + N` that any producer ever computed ("refresh"); any
//!   such value stays safe forever (see "Joining"), so producers refresh only when they
//!   reach it: once per `N` claims when consumers keep up, and when the ring looks full.
//! * `gates` (one cache-padded cursor per gating consumer the ring was built for, see
//!   [`Ring::with_consumers`]): for each gating consumer a sequence it has consumed
//!   everything below (its *published* cursor, at most the next one it will read; see
//!   "Gating reads"); `FREE` (`u64::MAX`) for an unused entry.
//! * slot stamps (see `slot.rs`): `(held + N) << 8 | WRITING << 7 | readers`, where `held`
//!   is the sequence the slot holds. A read of `s` finds `held < s` (not published yet),
//!   `held == s` (clone it under the reader count) or `held > s` / WRITING (lapped).
//!   Writers of `s` wait until the slot holds `s - N` and its readers have left.
//! * `producers`: `2 * live producers + OPENED`. The ring is closed when it equals `OPENED`:
//!   producers existed and all are gone.
//! * `rx_waiters` / `tx_waiters`: wakers of consumers waiting for data and of producers
//!   waiting for space, each with a count that makes "nobody waits" a single load.
//!
//! # Joining
//!
//! A consumer created later starts at the current `tail`: it sees the records claimed after
//! it joined (records claimed before but published after are not delivered to it). A gating
//! consumer must not lose one of those to a producer that computed its limit before the
//! consumer existed. Registration therefore stores a provisional cursor (a `tail` it just
//! read), then reads its real start `c` with an RMW on `tail` (`fetch_add(0)`: it reads the
//! latest value and releases the cursor to every later value, all later writes being RMWs
//! too), then raises the cursor to `c` and wakes parked producers. A refresh reads `tail`
//! (also by RMW) before scanning `gates`. If it reads a value at or after the registration's
//! RMW, it synchronizes with it and its scan sees the cursor; if it reads an earlier one,
//! that value is at most `c`. Since a refresh never yields more than its own `tail + N`,
//! every limit ever computed is at most `c + N`: claims stay below `c + N` and overwrite only
//! sequences below `c`. (A plain load on the registration side breaks this; loom finds it.)
//!
//! # Gating reads
//!
//! A gating consumer never enters a slot as a reader (no reader-count RMWs, which the two
//! consumers of a fan-out would otherwise contend on for every record): it loads the stamp
//! and, once it says `held == s`, clones the value directly (`Slots::read_gated`). That is
//! sound because nobody can overwrite `s` while the consumer may still read it: the writer
//! of `s + N` claimed it under a limit of at most `g + N`, where `g` is the consumer's cursor
//! as the refresh that computed the limit loaded it (Acquire), so `g > s`, and the consumer
//! stores a cursor above `s` (Release) only after it has cloned `s`. Cursor store, refresh
//! load, `limit` RMW, claimer's `limit` load: the clone happens-before the overwrite.
//!
//! The consumer publishes its cursor lazily: once it is `release_every` (`N / 8`) past the
//! published one, or as soon as it catches up with the producers (a read finds nothing
//! more, which always happens before it parks). A published cursor that lags only makes
//! producers see less room; it never lets them overwrite an unread record. A parked producer
//! is woken by that release, at the latest after `N / 8` further reads, since a full ring
//! always has that many records to read. The price: a gating consumer that stops receiving
//! holds producers back up to `N / 8` records before the ones it has actually read.
//!
//! # Batch publish
//!
//! [`Producer::try_publish_many`] / [`Producer::publish_many`] claim a run of consecutive
//! sequences with one CAS on `tail` (as many as fit under `limit`), write the slots in
//! order, and do the wake-up check (fence and waiter count) once for the run.
//!
//! # Lagging (lossy) readers
//!
//! A lossy consumer that finds its next slot overwritten (or being overwritten) gets
//! `Lagged(n)`: its cursor jumps to `tail - N`, the oldest record the ring can still hold,
//! and `n` is how many sequences it skipped. The next receive continues from there (and may
//! lag again if producers are still faster). Received plus reported-lagged always equals the
//! number of sequences published since the consumer joined. Gating consumers never lag.
//!
//! # Wake-ups
//!
//! A waiter registers its waker, issues `fence(SeqCst)`, and re-checks its condition before
//! returning `Pending`. A notifier makes the condition true (a slot publish, a cursor
//! advance, a gate release), issues `fence(SeqCst)`, and only then loads the waiter count,
//! skipping the lock when it is zero. Either fence comes first in the single total order of
//! `SeqCst` fences: if the waiter's does, the notifier's load sees the registration and wakes
//! it; if the notifier's does, the waiter's re-check sees the condition and does not park.
//! So no wake-up is lost, and a publish with no idle consumer costs one fence and one load
//! (once per record, or per run with `publish_many`), as does a gating consumer's cursor
//! update (once per `N / 8` records read, or when it catches up).
//! Closing (the last producer dropping) always takes the lock, which orders it by itself.
//!
//! # Where it spins
//!
//! Only inside `slot.rs`, in windows of a few instructions: a writer waits for readers
//! still cloning the previous lap, and (only when no gating consumer holds producers back)
//! for the writer of the previous lap of its slot to finish its publish. It spins briefly,
//! then yields the thread; it never awaits, so a claim is always filled in the same poll.
//!
//! # Type requirements
//!
//! Handles are `Send + Sync` when `T: Send + Sync`: several consumers clone the same slot
//! concurrently (`T::clone(&T)` from several threads), so `T: Send` alone is not enough.
//!
//! # Closing and dropping
//!
//! When every [`Producer`] is gone, consumers drain what was published, then get
//! [`RecvError::Closed`]. [`Ring::producer`] on a closed ring reopens it. A dropped gating
//! consumer releases its cursor at once, so it stops holding producers back. A ring has as
//! many gate cursors as it was built for ([`Ring::with_consumers`]; producers scan them all
//! when they refresh their limit, so the count is sized to the need, not fixed).
//!
//! # Example
//!
//! ```
//! use tickcast::ring::{RecvError, Ring};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ring = Ring::with_capacity(1024);
//! let mut engine = ring.consumer();
//! let feed = ring.producer();
//! drop(ring);
//! assert_eq!(feed.publish("tick").await, 0);
//! drop(feed);
//! assert_eq!(engine.recv().await, Ok("tick"));
//! assert_eq!(engine.recv().await, Err(RecvError::Closed));
//! # });
//! ```

mod slot;
mod sync;

#[cfg(all(test, tickcast_loom))]
mod loom_tests;

use std::fmt;
use std::future::poll_fn;
use std::ops::Range;
use std::task::Poll;

use crossbeam_utils::CachePadded;

use crate::ring::slot::{Read, Slots};
use crate::ring::sync::{fence, Arc, AtomicU64, AtomicUsize, Ordering, WaitList};

/// Gating consumers a ring made by [`Ring::with_capacity`] allows at once; the server
/// sizes its rings exactly with [`Ring::with_consumers`].
pub const DEFAULT_GATING_CONSUMERS: usize = 16;

/// An unused entry of `gates`.
const FREE: u64 = u64::MAX;
/// `producers` bit: at least one producer was created, so zero live ones means closed.
const OPENED: usize = 1;
const ONE_PRODUCER: usize = 2;

/// A bounded ring of sequenced records. Cheap to clone; create handles from it.
pub struct Ring<T> {
    shared: Arc<Shared<T>>,
}

/// Publishes records. Clone it for each feed; the ring closes when all are dropped.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

/// Reads records in sequence order, gating ([`Ring::consumer`]) or lossy
/// ([`Ring::lossy_consumer`]).
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// The next sequence to read.
    next: u64,
    /// The cursor last stored in `gates` (gating consumers; `next` for lossy ones).
    released: u64,
    /// Index into `gates` for a gating consumer, `None` for a lossy one.
    gate: Option<usize>,
    /// Identity in `rx_waiters`.
    id: u64,
}

/// [`Producer::try_publish`] found the ring full: a gating consumer has not yet consumed
/// the record `capacity` places back. The value is handed back; wait with
/// [`Producer::publish`] or drop it knowingly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

/// Why [`Consumer::recv`] returned no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// A lossy consumer was lapped and skipped this many records; it now continues from
    /// the oldest record still in the ring. Resynchronise downstream state.
    Lagged(u64),
    /// Every producer is gone and everything published has been received.
    Closed,
}

/// Why [`Consumer::try_recv`] returned no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing published yet past the cursor; try again or `recv().await`.
    Empty,
    /// See [`RecvError::Lagged`].
    Lagged(u64),
    /// See [`RecvError::Closed`].
    Closed,
}

struct Shared<T> {
    tail: CachePadded<AtomicU64>,
    limit: CachePadded<AtomicU64>,
    gates: Box<[CachePadded<AtomicU64>]>,
    slots: Slots<T>,
    capacity: u64,
    /// A gating consumer publishes its cursor once it is this far past the published one
    /// (and whenever it catches up with the producers), not after every record.
    release_every: u64,
    producers: AtomicUsize,
    /// Source of waiter identities for `rx_waiters` / `tx_waiters`.
    ids: AtomicU64,
    rx_waiters: WaitList,
    tx_waiters: WaitList,
}

impl<T> Ring<T> {
    /// Creates a ring of `capacity` slots.
    ///
    /// # Panics
    /// If `capacity` is not a power of two of at least 2.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_consumers(capacity, DEFAULT_GATING_CONSUMERS)
    }

    /// Creates a ring of `capacity` slots on which up to `gating` gating consumers may be
    /// alive at once (any number; each costs one cache line that producers scan when they
    /// refresh their claim limit, once per `capacity` claims).
    ///
    /// # Panics
    /// If `capacity` is not a power of two of at least 2, or `gating` is 0.
    #[must_use]
    pub fn with_consumers(capacity: usize, gating: usize) -> Self {
        Self::build(capacity, (capacity / 8).max(1), gating)
    }

    /// [`Ring::with_capacity`] with an explicit cursor-publishing interval for gating
    /// consumers (tests use small rings with an interval above 1).
    #[cfg(test)]
    fn with_release_every(capacity: usize, release_every: usize) -> Self {
        Self::build(capacity, release_every, DEFAULT_GATING_CONSUMERS)
    }

    fn build(capacity: usize, release_every: usize, gating: usize) -> Self {
        assert!(
            capacity >= 2 && capacity.is_power_of_two(),
            "ring capacity must be a power of two >= 2, got {capacity}"
        );
        assert!(
            gating >= 1,
            "a ring needs room for at least one gating consumer"
        );
        let capacity = capacity as u64;
        let shared = Shared {
            tail: CachePadded::new(AtomicU64::new(0)),
            // min(no gates, tail 0) + N: claims 0..N overwrite nothing.
            limit: CachePadded::new(AtomicU64::new(capacity)),
            gates: (0..gating)
                .map(|_| CachePadded::new(AtomicU64::new(FREE)))
                .collect(),
            slots: Slots::new(capacity as usize),
            capacity,
            release_every: release_every.max(1) as u64,
            producers: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            rx_waiters: WaitList::new(),
            tx_waiters: WaitList::new(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Number of slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.shared.capacity as usize
    }

    /// A new producer. Reopens the ring if it was closed.
    #[must_use]
    pub fn producer(&self) -> Producer<T> {
        self.shared
            .producers
            .fetch_add(ONE_PRODUCER, Ordering::Relaxed);
        self.shared.producers.fetch_or(OPENED, Ordering::Relaxed);
        Producer {
            shared: self.shared.clone(),
        }
    }

    /// A gating consumer starting at the current tail: producers wait rather than
    /// overwrite a record it has not consumed, so it never lags.
    ///
    /// # Panics
    /// If as many gating consumers as the ring was built for are already alive.
    #[must_use]
    pub fn consumer(&self) -> Consumer<T> {
        let (gate, start) = self.shared.register_gate();
        Consumer {
            shared: self.shared.clone(),
            next: start,
            released: start,
            gate: Some(gate),
            id: self.shared.next_id(),
        }
    }

    /// A lossy consumer starting at the current tail: it never holds producers back and
    /// reports [`RecvError::Lagged`] when they lap it.
    #[must_use]
    pub fn lossy_consumer(&self) -> Consumer<T> {
        let start = self.shared.tail.load(Ordering::Acquire);
        Consumer {
            shared: self.shared.clone(),
            next: start,
            released: start,
            gate: None,
            id: self.shared.next_id(),
        }
    }
}

impl<T> Shared<T> {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        // Acquire: every producer's publishes happen-before its (AcqRel) decrement.
        self.producers.load(Ordering::Acquire) == OPENED
    }

    fn register_gate(&self) -> (usize, u64) {
        let provisional = self.tail.load(Ordering::Relaxed);
        for (index, gate) in self.gates.iter().enumerate() {
            if gate
                .compare_exchange(FREE, provisional, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                // The RMW releases the provisional cursor to every later refresh and reads
                // a start no smaller than it (module doc, "Joining").
                let start = self.tail.fetch_add(0, Ordering::AcqRel);
                // Raising the provisional cursor frees space: a producer may be parked on it.
                gate.store(start, Ordering::Release);
                fence(Ordering::SeqCst);
                self.tx_waiters.wake_if_waiting();
                return (index, start);
            }
        }
        panic!(
            "more than {} gating consumers on one ring (it was built for that many)",
            self.gates.len()
        );
    }

    /// Recomputes the claim limit; returns `(tail, limit)` as of the RMW on `tail`.
    fn refresh_limit(&self) -> (u64, u64) {
        // An RMW reads the latest tail. An Acquire load would be enough for safety (see
        // "Joining"), but a stale tail could make a ring with no gating consumer look full.
        let tail = self.tail.fetch_add(0, Ordering::AcqRel);
        // Acquire: a consumer's reads happen-before our overwrite of what it has read.
        let oldest = self
            .gates
            .iter()
            .map(|gate| gate.load(Ordering::Acquire))
            .fold(tail, u64::min);
        let limit = oldest + self.capacity;
        let previous = self.limit.fetch_max(limit, Ordering::AcqRel);
        (tail, previous.max(limit))
    }

    /// Claims up to `want` (>= 1) consecutive sequences with one CAS; returns the first
    /// and how many, or `None` if a gating consumer is `N` behind the tail.
    fn try_claim(&self, want: u64) -> Option<(u64, u64)> {
        debug_assert!(want >= 1);
        let mut limit = self.limit.load(Ordering::Acquire);
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            if tail >= limit {
                let (now, fresh) = self.refresh_limit();
                if now >= fresh {
                    return None;
                }
                (tail, limit) = (now, fresh);
            }
            let count = want.min(limit - tail);
            // Relaxed: the slot stamp and `limit` carry the synchronization, not `tail`.
            match self.tail.compare_exchange_weak(
                tail,
                tail + count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((tail, count)),
                Err(now) => tail = now,
            }
        }
    }

    /// Writes and publishes a claimed sequence, then wakes idle consumers if any.
    fn fill(&self, seq: u64, value: T) {
        self.slots.write(seq, value);
        fence(Ordering::SeqCst);
        self.rx_waiters.wake_if_waiting();
    }

    /// Writes and publishes the claimed run `first..` with the values of `values` (exactly
    /// as many as were claimed), then wakes idle consumers once for the whole run.
    fn fill_many(&self, first: u64, values: impl Iterator<Item = T>) {
        let mut run = FillRun {
            slots: &self.slots,
            next: first,
            values,
        };
        run.write_rest();
        fence(Ordering::SeqCst);
        self.rx_waiters.wake_if_waiting();
    }
}

/// A claimed run being filled. If a write panics (only a panicking `T::drop` of an
/// overwritten value can, after its own slot is published), dropping the run still fills
/// the rest of its claim, so a claimed sequence is never left empty for consumers to wait
/// on forever. (A second panic while unwinding aborts.)
struct FillRun<'a, T, I: Iterator<Item = T>> {
    slots: &'a Slots<T>,
    next: u64,
    values: I,
}

impl<T, I: Iterator<Item = T>> FillRun<'_, T, I> {
    fn write_rest(&mut self) {
        for value in self.values.by_ref() {
            let seq = self.next;
            self.next += 1;
            self.slots.write(seq, value);
        }
    }
}

impl<T, I: Iterator<Item = T>> Drop for FillRun<'_, T, I> {
    fn drop(&mut self) {
        self.write_rest();
    }
}

impl<T> Producer<T> {
    /// Publishes `value` if there is room; returns its sequence number.
    ///
    /// # Errors
    /// [`Full`] (holding `value`) when a gating consumer is a whole ring behind.
    pub fn try_publish(&self, value: T) -> Result<u64, Full<T>> {
        match self.shared.try_claim(1) {
            Some((seq, _)) => {
                self.shared.fill(seq, value);
                Ok(seq)
            }
            None => Err(Full(value)),
        }
    }

    /// Publishes `value`, waiting for a gating consumer to free a slot if the ring is
    /// full; returns its sequence number.
    ///
    /// # Cancel safety
    /// Cancel-safe: the value is claimed and written within one poll, so a dropped future
    /// either published it or dropped it unpublished.
    pub async fn publish(&self, value: T) -> u64 {
        let value = match self.try_publish(value) {
            Ok(seq) => return seq,
            Err(Full(value)) => value,
        };
        let shared = &*self.shared;
        let waiter = WaiterGuard {
            list: &shared.tx_waiters,
            id: shared.next_id(),
        };
        let mut value = Some(value);
        poll_fn(|cx| {
            waiter.list.register(waiter.id, cx.waker());
            fence(Ordering::SeqCst);
            match shared.try_claim(1) {
                Some((seq, _)) => {
                    let value = value.take().expect("publish polled after completion");
                    shared.fill(seq, value);
                    Poll::Ready(seq)
                }
                None => Poll::Pending,
            }
        })
        .await
    }
}

impl<T> Producer<T> {
    /// Publishes as many of `values` as there is room for, from the front, as one run of
    /// consecutive sequences claimed with a single CAS and followed by a single wake-up
    /// check; removes them from `values` and returns their sequences. The range is empty
    /// when `values` is, or when the ring is full (see [`Producer::try_publish`]).
    pub fn try_publish_many(&self, values: &mut Vec<T>) -> Range<u64> {
        if values.is_empty() {
            return 0..0;
        }
        match self.shared.try_claim(values.len() as u64) {
            Some((first, count)) => {
                self.shared.fill_many(first, values.drain(..count as usize));
                first..first + count
            }
            None => 0..0,
        }
    }

    /// Publishes all of `values` in order, in runs of consecutive sequences as room allows
    /// (waiting for space like [`Producer::publish`]), leaving `values` empty. Runs of other
    /// producers may fall between two runs of this call.
    ///
    /// # Cancel safety
    /// Cancel-safe: each run is claimed and written within one poll and removed from
    /// `values`, so if the future is dropped, `values` holds exactly the records that were
    /// not published, in order.
    pub async fn publish_many(&self, values: &mut Vec<T>) {
        self.try_publish_many(values);
        if values.is_empty() {
            return;
        }
        let shared = &*self.shared;
        let waiter = WaiterGuard {
            list: &shared.tx_waiters,
            id: shared.next_id(),
        };
        poll_fn(|cx| loop {
            if values.is_empty() {
                return Poll::Ready(());
            }
            if !self.try_publish_many(values).is_empty() {
                continue;
            }
            waiter.list.register(waiter.id, cx.waker());
            fence(Ordering::SeqCst);
            if self.try_publish_many(values).is_empty() {
                return Poll::Pending;
            }
        })
        .await;
    }
}

/// Removes a producer's waker when its `publish` completes or is cancelled.
struct WaiterGuard<'a> {
    list: &'a WaitList,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.list.remove(self.id);
    }
}

impl<T: Clone> Consumer<T> {
    /// Receives the next record, waiting if none is published yet.
    ///
    /// # Errors
    /// [`RecvError::Lagged`] (lossy consumers only) and [`RecvError::Closed`].
    ///
    /// # Cancel safety
    /// Cancel-safe: a record is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        let mut out = None;
        self.recv_into(1, |value| out = Some(value)).await?;
        Ok(out.expect("recv_into returned a record"))
    }

    /// Waits for at least one record, then appends up to `limit` published records to
    /// `buf` in one go (a single cursor update); returns how many. `limit == 0` returns
    /// `Ok(0)` at once. A lossy consumer lapped in mid-batch gets the records read so far,
    /// and `Lagged` on the next call.
    ///
    /// # Errors
    /// As [`Consumer::recv`]. Cancel-safe likewise.
    pub async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, RecvError> {
        if limit == 0 {
            return Ok(0);
        }
        buf.reserve(limit.min(self.shared.capacity as usize));
        self.recv_into(limit, |value| buf.push(value)).await
    }

    /// Receives the next record if one is published.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] if none is, and as [`Consumer::recv`].
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut out = None;
        self.read_into(1, &mut |value| out = Some(value))?;
        Ok(out.expect("read_into returned a record"))
    }

    async fn recv_into(
        &mut self,
        limit: usize,
        mut sink: impl FnMut(T),
    ) -> Result<usize, RecvError> {
        poll_fn(|cx| {
            match self.read_into(limit, &mut sink) {
                Err(TryRecvError::Empty) => {}
                done => return Poll::Ready(done.map_err(RecvError::from_try)),
            }
            self.shared.rx_waiters.register(self.id, cx.waker());
            fence(Ordering::SeqCst);
            match self.read_into(limit, &mut sink) {
                Err(TryRecvError::Empty) => Poll::Pending,
                done => Poll::Ready(done.map_err(RecvError::from_try)),
            }
        })
        .await
    }

    /// Hands up to `limit` (>= 1) consecutive published records to `sink`. Returns
    /// `Ok(n >= 1)` or why there was none.
    fn read_into(&mut self, limit: usize, sink: &mut impl FnMut(T)) -> Result<usize, TryRecvError> {
        let mut taken = 0;
        let mut closed = false;
        let outcome = loop {
            if taken == limit {
                break Ok(taken);
            }
            #[allow(unsafe_code)]
            let read = if self.gate.is_some() {
                // SAFETY: a gating consumer's published cursor (`released`) never exceeds
                // `next`, and it is stored with Release only after these reads, so no
                // producer claims `next + N` before this read is done (module doc,
                // "Gating reads").
                unsafe { self.shared.slots.read_gated(self.next) }
            } else {
                self.shared.slots.read(self.next)
            };
            match read {
                Read::Ready(value) => {
                    sink(value);
                    self.next += 1;
                    taken += 1;
                }
                _ if taken > 0 => break Ok(taken),
                Read::Lapped => break Err(TryRecvError::Lagged(self.skip_lapped())),
                Read::NotYet if closed => break Err(TryRecvError::Closed),
                Read::NotYet if !self.shared.is_closed() => break Err(TryRecvError::Empty),
                // Closed: everything ever published is visible now; look once more.
                Read::NotYet => closed = true,
            }
        };
        // Publish the cursor when we caught up (about to wait, or nothing to read) or are
        // far enough past the published one; a lagging published cursor only makes
        // producers see less room, never lets them overwrite an unread record.
        let caught_up = !matches!(outcome, Ok(n) if n == limit);
        if self.next != self.released
            && (caught_up || self.next - self.released >= self.shared.release_every)
        {
            self.release_gate();
        }
        outcome
    }
}

impl<T> Consumer<T> {
    /// The next sequence this consumer will read.
    #[must_use]
    pub fn cursor(&self) -> u64 {
        self.next
    }

    /// Whether this consumer is lossy (never holds producers back).
    #[must_use]
    pub fn is_lossy(&self) -> bool {
        self.gate.is_none()
    }

    /// Moves the cursor past a lapped record to the oldest one the ring may still hold.
    fn skip_lapped(&mut self) -> u64 {
        debug_assert!(self.is_lossy(), "a gating consumer was lapped");
        // Acquire: we saw the stamp of a later lap, so `tail` is past that lap's claim.
        let tail = self.shared.tail.load(Ordering::Acquire);
        let oldest = tail.saturating_sub(self.shared.capacity).max(self.next + 1);
        let missed = oldest - self.next;
        self.next = oldest;
        self.release_gate();
        missed
    }

    /// Publishes a gating cursor and wakes producers waiting for space, if any.
    fn release_gate(&mut self) {
        self.released = self.next;
        if let Some(index) = self.gate {
            // Release: our clones happen-before a producer overwrites those slots.
            self.shared.gates[index].store(self.next, Ordering::Release);
            fence(Ordering::SeqCst);
            self.shared.tx_waiters.wake_if_waiting();
        }
    }
}

impl RecvError {
    fn from_try(error: TryRecvError) -> Self {
        match error {
            TryRecvError::Lagged(missed) => RecvError::Lagged(missed),
            TryRecvError::Closed => RecvError::Closed,
            TryRecvError::Empty => unreachable!("an empty ring makes recv wait"),
        }
    }
}

impl<T> Clone for Ring<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Clone for Producer<T> {
    fn clone(&self) -> Self {
        self.shared
            .producers
            .fetch_add(ONE_PRODUCER, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        let before = self
            .shared
            .producers
            .fetch_sub(ONE_PRODUCER, Ordering::AcqRel);
        if before == ONE_PRODUCER | OPENED {
            // Last one: closed. Under the lock, so no fence is needed (see WaitList).
            self.shared.rx_waiters.wake_all();
        }
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        if let Some(index) = self.gate {
            self.shared.gates[index].store(FREE, Ordering::Release);
            fence(Ordering::SeqCst);
            self.shared.tx_waiters.wake_if_waiting();
        }
        self.shared.rx_waiters.remove(self.id);
    }
}

impl<T> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.shared.capacity)
            .field("tail", &self.shared.tail.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("cursor", &self.next)
            .field("lossy", &self.is_lossy())
            .finish_non_exhaustive()
    }
}

impl<T> Full<T> {
    /// The value that was not published.
    #[must_use]
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring full: a gating consumer is a whole ring behind")
    }
}

impl<T> std::error::Error for Full<T> {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(missed) => write!(f, "consumer lagged and missed {missed} records"),
            RecvError::Closed => f.write_str("ring closed: every producer is gone"),
        }
    }
}

impl std::error::Error for RecvError {}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no record published yet"),
            TryRecvError::Lagged(missed) => RecvError::Lagged(*missed).fmt(f),
            TryRecvError::Closed => RecvError::Closed.fmt(f),
        }
    }
}

impl std::error::Error for TryRecvError {}

#[cfg(all(test, not(tickcast_loom)))]
mod tests;
