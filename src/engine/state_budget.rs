//! The bounds on channel state, both in bytes of its JSON: one channel's
//! state (`limits.max_state_bytes`) and every channel's state together
//! (`limits.max_total_state_bytes`).
//!
//! The per-channel bound stops a runaway channel; the total stops a
//! producer that spreads its data over many channels (100,000 channels of
//! 2 MiB would be 200 GB). A record that would break either is refused
//! before it is merged, so its channel keeps its state and seq. Shrinking
//! is always allowed, so a full budget never blocks a record that frees
//! room.

/// How many bytes of state the channels hold, against the two bounds.
#[derive(Debug)]
pub struct StateBudget {
    per_channel: usize,
    total: usize,
    /// Sum over channels of what each state grew by since it was `{}`.
    used: usize,
}

/// A record refused because a state would grow past a bound; nothing was
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateTooLarge {
    /// The channel's state would have been `would_be` bytes, over
    /// `limits.max_state_bytes`.
    Channel { would_be: usize },
    /// Every state together would have been `would_be` bytes, over
    /// `limits.max_total_state_bytes`.
    Total { would_be: usize },
}

impl StateBudget {
    pub fn new(per_channel: usize, total: usize) -> Self {
        Self {
            per_channel,
            total,
            used: 0,
        }
    }

    /// No bound at all (tests and benches that build cells by hand).
    pub fn unbounded() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }

    /// A channel's state goes from `old_len` to `new_len` bytes: charges
    /// the change, or refuses it and charges nothing.
    pub fn resize(&mut self, old_len: usize, new_len: usize) -> Result<(), StateTooLarge> {
        if new_len > self.per_channel {
            return Err(StateTooLarge::Channel { would_be: new_len });
        }
        let used = (self.used + new_len).saturating_sub(old_len);
        if new_len > old_len && used > self.total {
            return Err(StateTooLarge::Total { would_be: used });
        }
        self.used = used;
        Ok(())
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn per_channel(&self) -> usize {
        self.per_channel
    }

    /// Lowers the per-channel bound to `cap` if that is lower (a NATS
    /// writer's: every state must fit one stream message).
    pub fn cap_per_channel(&mut self, cap: usize) {
        self.per_channel = self.per_channel.min(cap);
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_past_its_bound_is_refused_and_charges_nothing() {
        let mut budget = StateBudget::new(100, 1_000);
        assert_eq!(
            budget.resize(2, 101),
            Err(StateTooLarge::Channel { would_be: 101 })
        );
        assert_eq!(budget.used(), 0);
        budget.resize(2, 100).unwrap();
        assert_eq!(budget.used(), 98);
    }

    #[test]
    fn the_total_refuses_growth_but_never_shrinking() {
        let mut budget = StateBudget::new(100, 150);
        budget.resize(2, 100).unwrap(); // channel a: 98 charged
        assert_eq!(
            budget.resize(2, 60),
            Err(StateTooLarge::Total { would_be: 156 })
        );
        assert_eq!(budget.used(), 98, "a refusal charges nothing");
        budget.resize(2, 54).unwrap(); // channel b: exactly 150 in all
        assert_eq!(budget.used(), 150);
        // Full: a state may still shrink or keep its size, and what it
        // frees can be taken by another.
        budget.resize(100, 100).unwrap();
        budget.resize(100, 40).unwrap();
        assert_eq!(budget.used(), 90);
        budget.resize(54, 100).unwrap();
        assert_eq!(budget.used(), 136);
    }
}
