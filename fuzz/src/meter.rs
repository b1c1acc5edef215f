//! A global allocator that counts, per thread, the bytes live on the heap,
//! their peak and the largest single allocation, so a target can check that
//! a reader never holds more than its limit allows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator plus per-thread counters.
pub struct Meter;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    // `try_with`: the counters may be gone while a thread exits.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(bytes)));
    });
}

fn shrank(bytes: usize) {
    // Saturating: memory freed here may have been allocated on another thread.
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: every call is passed straight to `System` with the caller's
// arguments; the counting around it touches only thread-local `Cell`s of
// plain integers (const-initialised, so counting never allocates).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Counted as a copy: old and new blocks are both live for a moment.
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

/// Heap use while a closure ran, on the calling thread.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Most bytes live at once beyond those live when it started.
    pub peak: usize,
    /// The largest single allocation (or reallocation) it made.
    pub largest: usize,
}

/// Runs `f` and reports its heap use.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    let usage = Usage {
        peak: PEAK.with(Cell::get) - start,
        largest: LARGEST.with(Cell::get),
    };
    (result, usage)
}
