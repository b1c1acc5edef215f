//! Turning one applied update into frames for its subscribers.
//!
//! Every subscriber whose last delivered seq is `seq - 1` (the usual case)
//! gets the same frame, encoded once. A subscriber whose chain is elsewhere
//! (just after a snapshot, say) needs its own `prev`; those frames are
//! encoded once per distinct `prev`.

use bytes::Bytes;

use crate::wire;

/// The frames of one update, built lazily and shared by reference.
pub struct UpdateFrames<'a> {
    channel: &'a str,
    seq: u64,
    ts: u64,
    data_json: &'a [u8],
    in_chain: Option<Bytes>,
    /// Frames for other `prev` values; rarely more than one or two.
    others: Vec<(u64, Bytes)>,
}

impl<'a> UpdateFrames<'a> {
    pub fn new(channel: &'a str, seq: u64, ts: u64, data_json: &'a [u8]) -> Self {
        Self {
            channel,
            seq,
            ts,
            data_json,
            in_chain: None,
            others: Vec::new(),
        }
    }

    /// The frame for a subscriber whose previous delivery was `prev`.
    pub fn for_prev(&mut self, prev: u64) -> Bytes {
        let (channel, seq, ts, data) = (self.channel, self.seq, self.ts, self.data_json);
        if prev + 1 == seq {
            return self
                .in_chain
                .get_or_insert_with(|| wire::update(channel, seq, prev, ts, data))
                .clone();
        }
        if let Some((_, frame)) = self.others.iter().find(|(p, _)| *p == prev) {
            return frame.clone();
        }
        let frame = wire::update(channel, seq, prev, ts, data);
        self.others.push((prev, frame.clone()));
        frame
    }

    /// How many distinct frames were encoded (for the encode-once metric).
    pub fn encoded(&self) -> usize {
        usize::from(self.in_chain.is_some()) + self.others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_encoding_per_distinct_prev() {
        let mut frames = UpdateFrames::new("a.b", 10, 1, b"{}");
        let a = frames.for_prev(9);
        let b = frames.for_prev(9);
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes shared, not re-encoded");
        let c = frames.for_prev(7);
        let d = frames.for_prev(7);
        assert_eq!(c.as_ptr(), d.as_ptr());
        assert_ne!(a, c);
        assert_eq!(frames.encoded(), 2);
    }
}
