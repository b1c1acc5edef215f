//! A value passed through a ring to a known number of consumers, each of
//! which takes it once.
//!
//! A ring slot keeps its value until a producer overwrites the slot on its
//! next lap, so whatever a value owns would stay in memory for a whole lap
//! after every consumer is done with it (up to `capacity` records). Ring
//! items that own something heavy are therefore a small shared shell: each
//! consumer [`take`](Handoff::take)s the value once, the last one moves it
//! out, and the slot then pins only the empty shell. O(1) per take: one
//! uncontended lock and a clone of the value (an `Arc`) or a move.

use std::sync::{Arc, Mutex};

/// A value waiting for `takers` more consumers.
pub struct Handoff<T> {
    pending: Mutex<Pending<T>>,
}

struct Pending<T> {
    takers: usize,
    value: Option<T>,
}

impl<T: Clone> Handoff<T> {
    /// A shell holding `value` for `takers` consumers (at least one).
    pub fn new(value: T, takers: usize) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(Pending {
                takers: takers.max(1),
                value: Some(value),
            }),
        })
    }

    /// The value for one consumer: a clone while others still have to take
    /// it, the value itself for the last one; `None` once all have taken it
    /// (a consumer that takes twice gets nothing the second time it is late).
    pub fn take(&self) -> Option<T> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.takers {
            0 => None,
            1 => {
                pending.takers = 0;
                pending.value.take()
            }
            _ => {
                pending.takers -= 1;
                pending.value.clone()
            }
        }
    }

    /// Whether every consumer has taken the value (the shell is empty).
    pub fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .value
            .is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_taker_moves_the_value_out() {
        let value = Arc::new(vec![0u8; 1024]);
        let weak = Arc::downgrade(&value);
        let shell = Handoff::new(value, 3);
        let first = shell.take().expect("first");
        let second = shell.take().expect("second");
        assert!(!shell.is_empty());
        let third = shell.take().expect("third");
        assert!(shell.is_empty());
        assert!(shell.take().is_none(), "nothing left for a fourth");
        drop((first, second, third));
        assert!(weak.upgrade().is_none(), "the shell pins nothing");
    }

    #[test]
    fn zero_takers_means_one() {
        let shell = Handoff::new(7, 0);
        assert_eq!(shell.take(), Some(7));
        assert_eq!(shell.take(), None);
    }
}
