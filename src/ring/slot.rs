//! The ring's storage: one value cell and one atomic stamp per slot. All of the crate's
//! `unsafe` lives here, except the one call of the `unsafe fn` [`Slots::read_gated`] in
//! `ring/mod.rs`, whose contract only the ring's claim protocol can uphold.
//!
//! The stamp protocol alone makes every access to a value cell exclusive (one writer) or
//! shared (readers that only `clone`), whatever the callers do: misuse of [`Slots::write`]
//! can make a caller wait forever, never race. So the safety argument for each `unsafe`
//! block below is local to this file, with one exception: [`Slots::read_gated`], the
//! gating consumers' fast path, is an `unsafe fn` whose contract (no overwrite before the
//! caller moves its cursor on) the ring's claim protocol upholds. The encoding of a stamp (`u64`):
//!
//! ```text
//!  63                                   8   7        6 .. 0
//! +--------------------------------------+---------+---------+
//! |          held + N   (56 bits)        | WRITING | readers |
//! +--------------------------------------+---------+---------+
//! ```
//!
//! * `held` is the sequence whose value the cell holds (when WRITING is clear), or whose
//!   value is being replaced by `held + N` (when WRITING is set). It is stored offset by the
//!   capacity `N`, so slot `i` starts at `held + N = i`, i.e. it "holds" the virtual
//!   sequence `i - N` and is uninitialized. A cell is initialized iff `held + N >= N`.
//! * `WRITING`: a writer owns the cell. Readers may not enter; the writer waits until the
//!   readers already inside have left.
//! * `readers`: number of readers currently cloning the value (at most 127; the 128th
//!   waits).

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use crate::ring::sync::{AtomicU64, Backoff, Ordering, UnsafeCell};

const READERS: u64 = (1 << 7) - 1;
const WRITING: u64 = 1 << 7;
const HELD_SHIFT: u32 = 8;

/// Largest usable sequence number (plus capacity): `held + N` must fit in 56 bits.
/// At 10 million records per second that is over 200 years.
pub(crate) const MAX_SEQ: u64 = (1 << (64 - HELD_SHIFT)) - 1;

struct Slot<T> {
    stamp: AtomicU64,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// What [`Slots::read`] found for a sequence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read<T> {
    /// The value, cloned.
    Ready(T),
    /// Not published yet (the slot still holds an older lap, or the writer is not done).
    NotYet,
    /// Overwritten (or being overwritten) by a later lap: the value is gone.
    Lapped,
}

/// A fixed array of `N` slots; sequence `s` lives in slot `s & (N - 1)`.
pub(crate) struct Slots<T> {
    slots: Box<[Slot<T>]>,
    mask: u64,
}

// SAFETY: the stamp protocol gives a writer exclusive access to a cell and readers shared
// access (they call `T::clone(&T)` concurrently, hence `T: Sync`); values are written on
// one thread and cloned or dropped on others, hence `T: Send`.
unsafe impl<T: Send + Sync> Sync for Slots<T> {}

impl<T> Slots<T> {
    /// Precondition: `capacity` is a power of two (checked by the caller, `Ring`).
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two());
        let slots = (0..capacity as u64)
            .map(|i| Slot {
                // Holds virtual sequence `i - N`: nothing, and the writer of `i` may start.
                stamp: AtomicU64::new(i << HELD_SHIFT),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Self {
            slots,
            mask: capacity as u64 - 1,
        }
    }

    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn slot(&self, seq: u64) -> &Slot<T> {
        &self.slots[(seq & self.mask) as usize]
    }

    /// Stores `value` as sequence `seq` and publishes it. Waits (spinning, then yielding
    /// the thread) until the slot has published `seq - N` and the readers cloning it have
    /// left. Returns nothing: the overwritten value is dropped after publishing, outside
    /// the critical section, so a slow `Drop` does not hold readers back.
    ///
    /// Precondition (liveness, not safety): the caller is the only writer of `seq` (it
    /// claimed it from the ring's tail) and `seq - N` was claimed by a writer that runs to
    /// completion. A second writer of the same `seq` would wait forever, never race.
    pub(crate) fn write(&self, seq: u64, value: T) {
        assert!(
            seq + self.capacity() <= MAX_SEQ,
            "ring sequence space exhausted"
        );
        let slot = self.slot(seq);
        let mut backoff = Backoff::new();
        let mut cur = slot.stamp.load(Ordering::Acquire);
        // 1. Take ownership: `held + N == seq` means the slot holds `seq - N`, published.
        //    Only the writer of `seq` moves the stamp on from here, so one CAS settles it
        //    (it only fails on reader count changes). Acquire pairs with the Release of
        //    the previous writer's publish and of the readers' exits.
        loop {
            if cur >> HELD_SHIFT == seq && cur & WRITING == 0 {
                match slot.stamp.compare_exchange_weak(
                    cur,
                    cur | WRITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            } else {
                // The writer of `seq - N` has claimed but not published yet.
                backoff.snooze();
                cur = slot.stamp.load(Ordering::Acquire);
            }
        }
        // 2. New readers now see WRITING and back off; wait for those already inside.
        while cur & READERS != 0 {
            backoff.snooze();
            cur = slot.stamp.load(Ordering::Acquire);
        }
        let initialized = seq >= self.capacity();
        let old = slot.value.with_mut(|cell| {
            // SAFETY: WRITING is set by us and the reader count is zero, so no other
            // thread accesses the cell until the Release store below. If `seq >= N` the
            // cell holds the published value of `seq - N` (initialized); `read` moves it
            // out exactly once, and `write` replaces it before anyone can read it again.
            unsafe {
                let old = initialized.then(|| cell.read().assume_init());
                cell.write(MaybeUninit::new(value));
                old
            }
        });
        // 3. Publish: holds `seq`, no writer, no readers (none could enter meanwhile).
        slot.stamp
            .store((seq + self.capacity()) << HELD_SHIFT, Ordering::Release);
        drop(old);
    }

    /// Clones the value of sequence `seq` if the slot still holds it. Safe against any
    /// concurrent writer: a reader that loses the race reports [`Read::Lapped`].
    pub(crate) fn read(&self, seq: u64) -> Read<T>
    where
        T: Clone,
    {
        let slot = self.slot(seq);
        let want = seq + self.capacity();
        let mut backoff = Backoff::new();
        let mut cur = slot.stamp.load(Ordering::Acquire);
        loop {
            let held = cur >> HELD_SHIFT;
            if held < want {
                return Read::NotYet;
            }
            if held > want || cur & WRITING != 0 {
                return Read::Lapped;
            }
            if cur & READERS == READERS {
                backoff.snooze();
                cur = slot.stamp.load(Ordering::Acquire);
                continue;
            }
            // Enter as a reader; Acquire pairs with the writer's publishing Release store.
            match slot.stamp.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Leaves even if `clone` panics, so the writer is never stuck on us.
        let _exit = ReaderExit(&slot.stamp);
        Read::Ready(slot.value.with(|cell| {
            // SAFETY: we are counted as a reader of a published stamp for `seq`, so the
            // cell is initialized (`want >= N`) and no writer may set WRITING and write
            // until the count drops; other readers only take `&T` too.
            unsafe { (*cell).assume_init_ref().clone() }
        }))
    }
    /// Clones the value of sequence `seq` for a *gating* consumer, without entering the
    /// slot as a reader: one Acquire load of the stamp instead of two RMWs on a line that
    /// the other consumers and the producer also write. Returns [`Read::NotYet`] until
    /// `seq` is published, then [`Read::Ready`]; [`Read::Lapped`] only if the caller broke
    /// the contract below (it is checked, so a broken caller still never reads a torn value
    /// from a cell whose writer has visibly started).
    ///
    /// # Safety
    /// No writer may start writing `seq + N` (the next lap of this slot) before this call
    /// returns, and the clone must happen-before that write. The ring guarantees both for
    /// a gating consumer whose published cursor is at most `seq`: a producer claims
    /// `seq + N` only under a limit computed from an Acquire load of that cursor after the
    /// consumer stored a value above `seq` with Release, which it does only after this call
    /// (see `ring`'s module doc, "Gating reads").
    pub(crate) unsafe fn read_gated(&self, seq: u64) -> Read<T>
    where
        T: Clone,
    {
        let slot = self.slot(seq);
        let want = seq + self.capacity();
        // Acquire pairs with the writer's publishing Release store.
        let cur = slot.stamp.load(Ordering::Acquire);
        let held = cur >> HELD_SHIFT;
        if held < want {
            return Read::NotYet;
        }
        if held > want || cur & WRITING != 0 {
            debug_assert!(false, "a gating reader was lapped");
            return Read::Lapped;
        }
        Read::Ready(slot.value.with(|cell| {
            // SAFETY: the stamp says the cell holds the published value of `seq` (so it is
            // initialized, `want >= N`), and by this function's contract no writer of
            // `seq + N` can set WRITING and touch the cell until our clone is done; other
            // readers only take `&T` too.
            unsafe { (*cell).assume_init_ref().clone() }
        }))
    }
}

/// Drops a reader's count; Release so the clone happens-before the writer's overwrite.
struct ReaderExit<'a>(&'a AtomicU64);

impl Drop for ReaderExit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl<T> Drop for Slots<T> {
    fn drop(&mut self) {
        let capacity = self.capacity();
        for slot in &*self.slots {
            // `&mut self`: no reader or writer is left, WRITING and readers are clear.
            let held = slot.stamp.load(Ordering::Acquire) >> HELD_SHIFT;
            if held >= capacity {
                slot.value.with_mut(|cell| {
                    // SAFETY: `held + N >= N` means a published, initialized value that
                    // nobody else can reach any more; it is dropped exactly once.
                    unsafe { (*cell).assume_init_drop() }
                });
            }
        }
    }
}
