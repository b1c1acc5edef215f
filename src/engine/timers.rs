//! When held diffs are due: one ordered set for the whole engine.
//!
//! A throttled subscription with a pending diff has exactly one entry here,
//! keyed by the instant it may send next. The engine task sleeps until the
//! earliest entry and then sweeps every entry that is due, so ten thousand
//! throttled subscriptions cost ten thousand set entries, not ten thousand
//! sleeping tasks. Times are the engine's monotonic nanoseconds.

use std::collections::BTreeSet;

use super::index::{ChannelId, SessionId};

#[derive(Debug, Default)]
pub struct Timers {
    due: BTreeSet<(u64, ChannelId, SessionId)>,
}

impl Timers {
    /// Schedules the delivery of `channel` to `session` at `at`.
    pub fn arm(&mut self, at: u64, channel: ChannelId, session: SessionId) {
        self.due.insert((at, channel, session));
    }

    /// Cancels what [`arm`](Self::arm) scheduled with the same arguments.
    pub fn disarm(&mut self, at: u64, channel: ChannelId, session: SessionId) {
        self.due.remove(&(at, channel, session));
    }

    /// The earliest scheduled instant.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|&(at, _, _)| at)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<(ChannelId, SessionId)> {
        match self.due.first() {
            Some(&(at, _, _)) if at <= now => self.due.pop_first().map(|(_, c, s)| (c, s)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_due_entries_in_time_order_and_no_others() {
        let mut t = Timers::default();
        t.arm(300, 1, 7);
        t.arm(100, 2, 7);
        t.arm(200, 1, 8);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.pop_due(99), None);
        assert_eq!(t.pop_due(250), Some((2, 7)));
        assert_eq!(t.pop_due(250), Some((1, 8)));
        assert_eq!(t.pop_due(250), None);
        assert_eq!(t.next_due(), Some(300));
    }

    #[test]
    fn disarm_removes_exactly_one_entry() {
        let mut t = Timers::default();
        t.arm(5, 1, 1);
        t.arm(5, 1, 2);
        t.disarm(5, 1, 1);
        t.disarm(6, 1, 2); // not armed at 6: nothing happens
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_due(5), Some((1, 2)));
        assert!(t.is_empty());
    }

    #[test]
    fn many_entries_share_one_structure() {
        let mut t = Timers::default();
        for s in 0..10_000u64 {
            t.arm(1_000 + (s * 7919) % 10_000, 0, s);
        }
        let mut last = 0;
        let mut popped = 0;
        while let Some((_, s)) = t.pop_due(u64::MAX) {
            let at = 1_000 + (s * 7919) % 10_000;
            assert!(at >= last);
            last = at;
            popped += 1;
        }
        assert_eq!(popped, 10_000);
    }
}
