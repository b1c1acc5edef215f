//! Rate limits kept as one timestamp each: a token bucket in the form of
//! GCRA (the generic cell rate algorithm of ATM networks).
//!
//! A bucket that holds `burst` tokens and refills at `per_sec` tokens a
//! second is the same thing as one number, the instant until which the
//! allowance is spent (`Allowance`): each event moves it `1/per_sec` later
//! (starting from now if it lies in the past), and an event is allowed
//! while that instant stays within `burst/per_sec` of now. So a limit costs
//! 8 bytes of state per holder, no timer and no allocation: the clock is
//! read only when an event happens.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds on a monotonic clock shared by the whole process.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A rate: `per_sec` events a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds of allowance one event uses.
    cost_ns: u64,
    /// How far past now the allowance may be spent.
    burst_ns: u64,
}

impl Rate {
    /// `per_sec` and `burst` are at least 1 (0 is taken as 1).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let cost_ns = 1_000_000_000 / u64::from(per_sec.max(1));
        Self {
            cost_ns,
            burst_ns: cost_ns * u64::from(burst.max(1)),
        }
    }

    /// How far past now `events` events beyond the burst reach.
    pub fn beyond_burst_ns(&self, events: u32) -> u64 {
        self.burst_ns + self.cost_ns * u64::from(events)
    }
}

/// Where one holder's allowance stands: the instant (on [`now_ns`]'s clock)
/// until which it is spent. 0, in the past, means a full bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Allowance(u64);

impl Allowance {
    /// Takes one event if the rate allows it; otherwise leaves the
    /// allowance as it was and says how long until one would be allowed.
    pub fn try_take(&mut self, rate: &Rate, now: u64) -> Result<(), Duration> {
        let spent = self.0.max(now) + rate.cost_ns;
        let ahead = spent - now;
        if ahead > rate.burst_ns {
            return Err(Duration::from_nanos(ahead - rate.burst_ns));
        }
        self.0 = spent;
        Ok(())
    }

    /// Whether one event would be allowed now (nothing is taken).
    pub fn check(&self, rate: &Rate, now: u64) -> Result<(), Duration> {
        let mut copy = *self;
        copy.try_take(rate, now)
    }

    /// Takes one event whether or not the rate allows it (refused events
    /// count too, so a sender that keeps pushing stays refused) and says how
    /// far past now the allowance is now spent.
    pub fn take_anyway(&mut self, rate: &Rate, now: u64) -> u64 {
        self.0 = self.0.max(now).saturating_add(rate.cost_ns);
        self.0 - now
    }

    /// True when the bucket is full again: forgetting this allowance (and
    /// starting a fresh one later) would change nothing.
    pub fn is_rested(&self, now: u64) -> bool {
        self.0 <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = Rate::new(10, 3);
        let mut a = Allowance::default();
        let t = 5 * SEC;
        for _ in 0..3 {
            assert_eq!(a.try_take(&rate, t), Ok(()));
        }
        let wait = a.try_take(&rate, t).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(100),
            "one token refills in 1/10 s"
        );
        // A refusal takes nothing: the same instant is refused again, and
        // a token is back a tenth of a second later.
        assert!(a.try_take(&rate, t).is_err());
        assert_eq!(a.try_take(&rate, t + SEC / 10), Ok(()));
        assert!(a.try_take(&rate, t + SEC / 10).is_err());
        // After a quiet second the whole burst is back.
        assert!(a.is_rested(t + 2 * SEC));
        for _ in 0..3 {
            assert_eq!(a.try_take(&rate, t + 2 * SEC), Ok(()));
        }
    }

    #[test]
    fn taking_anyway_counts_refused_events() {
        let rate = Rate::new(10, 2);
        let mut a = Allowance::default();
        let t = SEC;
        assert_eq!(a.take_anyway(&rate, t), SEC / 10);
        assert_eq!(a.take_anyway(&rate, t), 2 * SEC / 10);
        assert_eq!(a.take_anyway(&rate, t), 3 * SEC / 10);
        assert!(a.check(&rate, t).is_err());
        assert_eq!(rate.beyond_burst_ns(1), 3 * SEC / 10);
        // Time pays the debt back at the rate.
        assert_eq!(a.check(&rate, t + 2 * SEC / 10), Ok(()));
    }
}
