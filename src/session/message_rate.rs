//! How fast a connection may send: `limits.messages_per_sec` on average,
//! `limits.message_burst` at once. A message beyond that is answered with
//! an error `rate_limited` and not acted on; it still counts against the
//! connection, so a client that keeps sending gets nothing through until it
//! slows down. A connection that gets `limits.rate_limited_before_close`
//! messages ahead of its allowance is closed with 1008.
//!
//! Counted: every complete text or binary message and every ping frame
//! (each ping costs a pong). Not counted: pongs and the close frame.
//!
//! The state is one `u64` in the reader ([`MessageBudget`]); no timer.

use std::sync::atomic::Ordering;

use super::frames::OpCode;
use super::outbox::Outbox;
use crate::engine::{Command, SessionId};
use crate::metrics::Metrics;
use crate::rate::{self, Allowance, Rate};
use crate::wire::{self, CloseCode, ErrorCode};

/// The message rate limit, worked out once from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimit {
    rate: Rate,
    /// How far past now a connection's allowance may be spent before it is
    /// closed.
    close_beyond_ns: u64,
    per_sec: u32,
}

impl MessageLimit {
    pub fn new(per_sec: u32, burst: u32, refused_before_close: u32) -> Self {
        let rate = Rate::new(per_sec, burst);
        Self {
            rate,
            close_beyond_ns: rate.beyond_burst_ns(refused_before_close),
            per_sec,
        }
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Act,
    Refuse,
    Close,
}

/// One connection's allowance.
#[derive(Debug, Default)]
pub struct MessageBudget(Allowance);

impl MessageBudget {
    /// Counts one message at `now` (ns on [`rate::now_ns`]'s clock).
    pub fn charge(&mut self, limit: &MessageLimit, now: u64) -> Verdict {
        let ahead = self.0.take_anyway(&limit.rate, now);
        if ahead > limit.close_beyond_ns {
            Verdict::Close
        } else if limit.rate.beyond_burst_ns(0) < ahead {
            Verdict::Refuse
        } else {
            Verdict::Act
        }
    }
}

/// Whether a frame completes something the rate counts: a ping, or the
/// last frame of a text or binary message (`in_message`: a fragmented
/// message is under way). Frames out of order are not counted: the reader
/// fails the connection for them.
pub fn completes_a_message(opcode: OpCode, fin: bool, in_message: bool) -> bool {
    match opcode {
        OpCode::Ping => true,
        OpCode::Text | OpCode::Binary => fin && !in_message,
        OpCode::Continuation => fin && in_message,
        OpCode::Close | OpCode::Pong => false,
    }
}

/// Counts one message against the connection's allowance. On `Close` the
/// 1008 close is queued here; on `Refuse` the caller answers with
/// [`refusal`] and drops the message.
pub fn check(
    budget: &mut MessageBudget,
    limit: &MessageLimit,
    outbox: &Outbox,
    metrics: &Metrics,
) -> Verdict {
    let verdict = budget.charge(limit, rate::now_ns());
    match verdict {
        Verdict::Act => {}
        Verdict::Refuse => {
            metrics
                .messages_rate_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Close => {
            metrics.rate_limit_closed.fetch_add(1, Ordering::Relaxed);
            let close = wire::close(
                CloseCode::PolicyViolation,
                "message rate limit exceeded (limits.messages_per_sec)",
            );
            outbox.close(close, false);
        }
    }
    verdict
}

/// The `rate_limited` error for a refused message, to send through the
/// engine so it stays in order with the engine's own replies.
pub fn refusal(session: SessionId, limit: &MessageLimit) -> Command {
    let message = format!(
        "rate limited: more than {} messages per second (limits.messages_per_sec); \
         this message was not acted on",
        limit.per_sec
    );
    let frame = wire::error(None, ErrorCode::RateLimited, &message);
    Command::Reply { session, frame }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_acted_on_then_refused_then_closed() {
        let limit = MessageLimit::new(10, 3, 2);
        let mut budget = MessageBudget::default();
        let now = 1_000_000_000;
        let verdicts: Vec<_> = (0..6).map(|_| budget.charge(&limit, now)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Act, Act, Act, Refuse, Refuse, Close]);
    }

    #[test]
    fn a_client_that_slows_down_gets_through_again() {
        let limit = MessageLimit::new(10, 1, 100);
        let mut budget = MessageBudget::default();
        let sec = 1_000_000_000;
        assert_eq!(budget.charge(&limit, sec), Verdict::Act);
        assert_eq!(budget.charge(&limit, sec), Verdict::Refuse);
        // The refused message counted: the allowance is spent until
        // sec + 0.2 s, so at sec + 0.15 one more is still refused.
        assert_eq!(budget.charge(&limit, sec + sec * 15 / 100), Verdict::Refuse);
        assert_eq!(budget.charge(&limit, sec + sec), Verdict::Act);
    }

    #[test]
    fn only_complete_messages_and_pings_count() {
        assert!(completes_a_message(OpCode::Text, true, false));
        assert!(!completes_a_message(OpCode::Text, false, false));
        assert!(completes_a_message(OpCode::Continuation, true, true));
        assert!(!completes_a_message(OpCode::Continuation, false, true));
        assert!(completes_a_message(OpCode::Binary, true, false));
        assert!(completes_a_message(OpCode::Ping, true, true));
        assert!(!completes_a_message(OpCode::Pong, true, false));
        assert!(!completes_a_message(OpCode::Close, true, false));
        // Out of order: left to the reader's protocol check.
        assert!(!completes_a_message(OpCode::Text, true, true));
        assert!(!completes_a_message(OpCode::Continuation, true, false));
    }
}
