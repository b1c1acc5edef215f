//! The gap detector: per channel, the last seq a client applied.
//!
//! A chain starts at the channel's snapshot, or at its first update when the server sends none
//! (the uWS peer). A `prev` that differs from the held seq is a gap the protocol did not
//! announce: announced discontinuities arrive as a (resync) snapshot, which re-anchors the
//! chain, or as a close (1013) followed by a resume with `since`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The per-channel chain state of one client.
#[derive(Debug, Default)]
pub struct Chains {
    held: HashMap<Box<str>, u64, BuildHasherDefault<Fnv>>,
}

/// What [`Chains::on_update`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Link {
    /// `prev` matched the held seq.
    Chained,
    /// No chain yet on this channel (no snapshot came first): the chain starts here.
    Started,
    /// `prev` differs from the held seq.
    Gap { held: u64 },
}

impl Chains {
    pub fn on_snapshot(&mut self, channel: &str, seq: u64) {
        match self.held.get_mut(channel) {
            Some(held) => *held = seq,
            None => {
                self.held.insert(channel.into(), seq);
            }
        }
    }

    pub fn on_update(&mut self, channel: &str, seq: u64, prev: u64) -> Link {
        match self.held.get_mut(channel) {
            Some(held) => {
                let link = if *held == prev {
                    Link::Chained
                } else {
                    Link::Gap { held: *held }
                };
                *held = seq;
                link
            }
            None => {
                self.held.insert(channel.into(), seq);
                Link::Started
            }
        }
    }

    /// Resume positions for a resubscribe after a reconnect.
    pub fn since(&self) -> impl Iterator<Item = (&str, u64)> {
        self.held.iter().map(|(k, v)| (&**k, *v))
    }
}

/// FNV-1a: channel names are short, and SipHash's DoS resistance buys nothing here.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_starts_at_snapshot_or_first_update_and_catches_skips() {
        let mut c = Chains::default();
        // No snapshot (the uWS peer): the first update starts the chain whatever its prev.
        assert_eq!(c.on_update("a", 41, 40), Link::Started);
        assert_eq!(c.on_update("a", 42, 41), Link::Chained);
        assert_eq!(c.on_update("a", 44, 43), Link::Gap { held: 42 });
        assert_eq!(
            c.on_update("a", 45, 44),
            Link::Chained,
            "the chain goes on from the new seq"
        );
        // A snapshot sets the chain; seq may jump under filters as long as prev chains.
        c.on_snapshot("b", 10);
        assert_eq!(c.on_update("b", 15, 10), Link::Chained);
        assert_eq!(c.on_update("b", 16, 14), Link::Gap { held: 15 });
        // A resync snapshot re-anchors without a gap.
        c.on_snapshot("b", 100);
        assert_eq!(c.on_update("b", 101, 100), Link::Chained);
        let mut since: Vec<_> = c.since().collect();
        since.sort_unstable();
        assert_eq!(since, [("a", 45), ("b", 101)]);
    }
}
