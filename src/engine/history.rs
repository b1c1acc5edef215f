//! Each channel's recent updates, kept so a client that resumes with
//! `since` can be replayed exactly what it missed.
//!
//! The depth is per namespace (`history` in the config; default 1,024
//! updates). Patches are kept as the JSON already serialized for fanout, so
//! holding them costs one shared buffer per update, and a replay without a
//! field filter reuses the bytes as they are.
//!
//! All channels share one [`HistoryBudget`], kept by the state stage
//! (`limits.max_history_bytes`). History is a resume cache, not data: when
//! an update does not fit, the channel being updated forgets its own oldest
//! entries (a client resuming from before them gets a resync snapshot,
//! which is correct, only bigger) rather than the update being refused.
//! Only the channel that grows pays, so a busy channel cannot wipe the
//! history of quiet ones; a channel with nothing left to give keeps no
//! history until there is room.

use std::collections::VecDeque;

use bytes::Bytes;

/// One update as it was applied.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// The ingest stamp sent as `ts`.
    pub ts: u64,
    /// The merge patch, serialized.
    pub patch: Bytes,
}

/// What an entry is charged against the budget beyond its patch bytes:
/// its queue slot (48 bytes, up to twice that in a queue's spare capacity)
/// and the allocator's share of the patch buffer. Measured: 100,000
/// channels x 10 updates of 28-byte patches grew the process by 182 bytes
/// per entry; this charges 188.
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

impl Entry {
    /// Bytes this entry is charged in the [`HistoryBudget`].
    pub fn cost(&self) -> usize {
        self.patch.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Bytes of history held over all channels, and the most it may hold.
#[derive(Debug)]
pub struct HistoryBudget {
    limit: usize,
    used: usize,
    /// Entries forgotten (or never kept) for the budget, not for depth.
    trimmed: u64,
}

impl HistoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            trimmed: 0,
        }
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Entries dropped to stay within the budget, so far.
    pub fn trimmed(&self) -> u64 {
        self.trimmed
    }

    fn fits(&self, cost: usize) -> bool {
        self.used.saturating_add(cost) <= self.limit
    }
}

/// The last `depth` updates of one channel, oldest first, seqs contiguous.
#[derive(Debug)]
pub struct History {
    depth: usize,
    entries: VecDeque<Entry>,
}

impl History {
    pub fn new(depth: usize) -> Self {
        Self {
            depth,
            entries: VecDeque::new(),
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether pushing is worth serializing a patch for.
    pub fn keeps_anything(&self) -> bool {
        self.depth > 0
    }

    /// Remembers the update `seq`; the oldest is forgotten past the depth,
    /// and as many more of this channel's oldest as `budget` needs. If the
    /// channel has nothing left to give, the update is not kept (and the
    /// history, now empty, starts again from the next one).
    pub fn push(&mut self, entry: Entry, budget: &mut HistoryBudget) {
        if self.depth == 0 {
            return;
        }
        debug_assert!(self.entries.back().is_none_or(|e| e.seq + 1 == entry.seq));
        if self.entries.len() == self.depth {
            self.forget_oldest(budget);
        }
        let cost = entry.cost();
        while !budget.fits(cost) && self.forget_oldest(budget) {
            budget.trimmed += 1;
        }
        if !budget.fits(cost) {
            budget.trimmed += 1;
            return;
        }
        budget.used += cost;
        self.entries.push_back(entry);
    }

    /// Forgets every entry (the channel's state was replaced: they would
    /// chain across updates this node never had), giving their bytes back.
    pub fn clear(&mut self, budget: &mut HistoryBudget) {
        while self.forget_oldest(budget) {}
    }

    /// Drops the oldest entry, giving its bytes back; false if none.
    fn forget_oldest(&mut self, budget: &mut HistoryBudget) -> bool {
        match self.entries.pop_front() {
            Some(old) => {
                budget.used -= old.cost();
                true
            }
            None => false,
        }
    }

    /// Every update after `since`, in order, if all of them are still held
    /// (and there is at least one); `None` otherwise.
    pub fn after(&self, since: u64) -> Option<impl Iterator<Item = &Entry>> {
        let first = self.entries.front()?.seq;
        let last = self.entries.back()?.seq;
        if since < first.saturating_sub(1) || since >= last {
            return None;
        }
        let start = (since + 1 - first) as usize;
        Some(self.entries.range(start..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            ts: seq * 10,
            patch: Bytes::from(format!("{{\"n\":{seq}}}")),
        }
    }

    fn seqs(h: &History, since: u64) -> Option<Vec<u64>> {
        h.after(since).map(|it| it.map(|e| e.seq).collect())
    }

    /// An entry whose cost does not depend on its seq.
    fn fixed(seq: u64) -> Entry {
        Entry {
            patch: Bytes::from(format!("{{\"n\":{seq:04}}}")),
            ..entry(seq)
        }
    }

    fn unbounded() -> HistoryBudget {
        HistoryBudget::new(usize::MAX)
    }

    #[test]
    fn replays_only_when_every_missed_update_is_held() {
        let mut h = History::new(3);
        let mut budget = unbounded();
        for seq in 1..=5 {
            h.push(entry(seq), &mut budget);
        }
        assert_eq!(budget.used(), 3 * entry(1).cost());
        assert_eq!(seqs(&h, 2), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&h, 4), Some(vec![5]));
        assert_eq!(seqs(&h, 1), None, "seq 2 is gone");
        assert_eq!(seqs(&h, 5), None, "nothing missed");
        assert_eq!(seqs(&h, 9), None, "ahead of the channel");
    }

    #[test]
    fn from_the_first_update_and_with_no_depth() {
        let mut h = History::new(8);
        let mut budget = unbounded();
        h.push(entry(1), &mut budget);
        h.push(entry(2), &mut budget);
        assert_eq!(seqs(&h, 0), Some(vec![1, 2]));
        let mut none = History::new(0);
        none.push(entry(1), &mut budget);
        assert_eq!(seqs(&none, 0), None);
        assert!(!none.keeps_anything());
    }

    /// A full budget: the growing channel gives up its own oldest entries,
    /// the other channel keeps all of its own, and a channel with nothing
    /// to give keeps nothing (never more than the budget).
    #[test]
    fn the_growing_channel_pays_for_the_budget() {
        let cost = fixed(1).cost();
        let mut budget = HistoryBudget::new(4 * cost);
        let (mut quiet, mut busy, mut late) =
            (History::new(100), History::new(100), History::new(100));
        for seq in 1..=2 {
            quiet.push(fixed(seq), &mut budget);
        }
        for seq in 1..=10 {
            busy.push(fixed(seq), &mut budget);
            assert!(budget.used() <= budget.limit());
        }
        assert_eq!(seqs(&quiet, 0), Some(vec![1, 2]));
        assert_eq!(seqs(&busy, 8), Some(vec![9, 10]));
        assert_eq!(seqs(&busy, 7), None, "seq 8 was trimmed: resync");
        late.push(fixed(1), &mut budget);
        assert_eq!(seqs(&late, 0), None);
        assert_eq!(budget.used(), 4 * cost);
        assert_eq!(budget.trimmed(), 8 + 1);
    }
}
