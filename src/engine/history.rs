//! Each channel's recent updates, kept so a client that resumes with
//! `since` can be replayed exactly what it missed.
//!
//! The depth is per namespace (`history` in the config; default 1,024
//! updates). Patches are kept as the JSON already serialized for fanout, so
//! holding them costs one shared buffer per update, and a replay without a
//! field filter reuses the bytes as they are.

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

    /// Remembers the update `seq`; the oldest is forgotten past the depth.
    pub fn push(&mut self, entry: Entry) {
        if self.depth == 0 {
            return;
        }
        debug_assert!(self.entries.back().is_none_or(|e| e.seq + 1 == entry.seq));
        if self.entries.len() == self.depth {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
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

    #[test]
    fn replays_only_when_every_missed_update_is_held() {
        let mut h = History::new(3);
        for seq in 1..=5 {
            h.push(entry(seq));
        }
        assert_eq!(seqs(&h, 2), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&h, 4), Some(vec![5]));
        assert_eq!(seqs(&h, 1), None, "seq 2 is gone");
        assert_eq!(seqs(&h, 5), None, "nothing missed");
        assert_eq!(seqs(&h, 9), None, "ahead of the channel");
    }

    #[test]
    fn from_the_first_update_and_with_no_depth() {
        let mut h = History::new(8);
        h.push(entry(1));
        h.push(entry(2));
        assert_eq!(seqs(&h, 0), Some(vec![1, 2]));
        let mut none = History::new(0);
        none.push(entry(1));
        assert_eq!(seqs(&none, 0), None);
        assert!(!none.keeps_anything());
    }
}
