//! Deterministic read sizes: how an input is cut into the pieces a socket
//! or pipe hands out, chosen from a seed so a crash replays exactly, and
//! the executor that drives the async readers over them.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// A tiny xorshift generator (no dependency, same sequence everywhere).
pub struct Schedule(u64);

impl Schedule {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed taken from the bytes themselves (FNV-1a).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self::new(hash)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A read size: mostly small (splits headers and lines anywhere),
    /// sometimes large (whole frames at once).
    pub fn read_size(&mut self) -> usize {
        let r = self.next();
        match r % 8 {
            0..=4 => 1 + (r >> 8) as usize % 7,
            5 | 6 => 1 + (r >> 8) as usize % 200,
            _ => 1 + (r >> 8) as usize % 70_000,
        }
    }

    /// True about one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// Polls a future whose only waits are the test socket's brief "not ready"
/// (it wakes itself) to completion. Each poll reads a byte or more or
/// blocks once, so the bound catches a reader that spins without progress.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("the reader made no progress");
}
