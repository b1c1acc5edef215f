//! Synchronization shim and the ring's wait lists.
//!
//! Everything the ring shares between threads comes through this module, so that
//! `RUSTFLAGS="--cfg tickcast_loom"` swaps the std primitives for loom's models and loom sees every
//! atomic access, every cell access, every lock and every spin (the same trick as tokio's
//! `src/loom`). loom's `UnsafeCell` is accessed through closures (`with`/`with_mut`) so
//! that it can check each access; the std side is wrapped to offer the same API.
//!
//! [`WaitList`] is the async parking spot used by idle consumers (waiting for data) and by
//! producers waiting for space. It is built from the shimmed `Mutex` and atomics rather
//! than `tokio::sync::Notify` so that loom can model the whole wake-up protocol.

#[cfg(tickcast_loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
#[cfg(not(tickcast_loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(tickcast_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's closure-based API, so slot.rs is written once.
#[cfg(not(tickcast_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(tickcast_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared raw pointer to the contents.
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with an exclusive raw pointer to the contents.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Bounded busy-wait for the short critical sections of the slot protocol (a reader's
/// clone, a writer between claim and publish): spin a little, then give the core away.
/// Under loom every step yields, which is how loom explores spin loops without hanging.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// Spins before yielding: 2^6 spin hints cost well under a microsecond.
    #[cfg(not(tickcast_loom))]
    const SPIN_LIMIT: u32 = 6;

    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn snooze(&mut self) {
        #[cfg(tickcast_loom)]
        {
            self.step = self.step.saturating_add(1);
            loom::thread::yield_now();
        }
        #[cfg(not(tickcast_loom))]
        {
            if self.step <= Self::SPIN_LIMIT {
                for _ in 0..(1u32 << self.step) {
                    std::hint::spin_loop();
                }
                self.step += 1;
            } else {
                // The other side was preempted mid-section: let the OS run it.
                std::thread::yield_now();
            }
        }
    }
}

/// Wakers of tasks parked on one condition ("data published", "space freed").
///
/// `len` mirrors the number of registered wakers so the notifying side can skip the lock
/// when nobody waits. That check is only correct when both sides put a `SeqCst` fence
/// between their write and their read (see the module doc of `ring`, "Wake-ups"):
///
/// ```text
/// waiter:   register (writes len)  ; fence(SeqCst) ; re-check condition
/// notifier: make condition true    ; fence(SeqCst) ; wake_if_waiting (reads len)
/// ```
#[derive(Debug)]
pub(crate) struct WaitList {
    len: AtomicUsize,
    wakers: Mutex<Vec<(u64, std::task::Waker)>>,
}

impl WaitList {
    pub(crate) fn new() -> Self {
        Self {
            len: AtomicUsize::new(0),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(u64, std::task::Waker)>> {
        // Nothing panics while the lock is held, but stay usable if something ever does.
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers (or refreshes) the waker of waiter `id`. The caller must then issue
    /// `fence(SeqCst)` and re-check its condition before returning `Pending`.
    pub(crate) fn register(&self, id: u64, waker: &std::task::Waker) {
        let mut wakers = self.lock();
        match wakers.iter_mut().find(|(other, _)| *other == id) {
            Some((_, old)) => old.clone_from(waker),
            None => wakers.push((id, waker.clone())),
        }
        self.len.store(wakers.len(), Ordering::Relaxed);
    }

    /// Number of registered waiters (tests park a task, then check it is registered).
    #[cfg(all(test, not(tickcast_loom)))]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Forgets waiter `id` (a cancelled future, a dropped consumer).
    pub(crate) fn remove(&self, id: u64) {
        if self.len.load(Ordering::Relaxed) == 0 {
            // This task registered earlier, so reading 0 (its own store or a later one)
            // means a wake_all has drained its entry already.
            return;
        }
        let mut wakers = self.lock();
        wakers.retain(|(other, _)| *other != id);
        self.len.store(wakers.len(), Ordering::Relaxed);
    }

    /// Wakes every registered waiter if there is any. Precondition: the caller made its
    /// condition true and then issued `fence(SeqCst)`.
    pub(crate) fn wake_if_waiting(&self) {
        if self.len.load(Ordering::Relaxed) != 0 {
            self.wake_all();
        }
    }

    /// Wakes every registered waiter. Correct without a fence: registration and this
    /// drain are ordered by the mutex (used when closing, which is rare).
    pub(crate) fn wake_all(&self) {
        let wakers = {
            let mut guard = self.lock();
            self.len.store(0, Ordering::Relaxed);
            std::mem::take(&mut *guard)
        };
        // Outside the lock: a waker may run arbitrary scheduler code.
        for (_, waker) in wakers {
            waker.wake();
        }
    }
}
