//! Stopping so that clients survive it.
//!
//! On SIGTERM or Ctrl-C (`signal`) the server stops taking connections
//! (the listener closes, so a new connect is refused and a load balancer
//! moves on), stops its feeds, and gives every client what is queued for it
//! followed by close 1001 with the reason
//! `server restarting; reconnect_after_ms=N` ([`RestartNotice`]). N is drawn
//! at random for each client from 0 to `limits.shutdown_reconnect_spread_ms`,
//! so that the clients of a restarted server do not all come back in the
//! same instant. The process exits once every session has ended, or
//! `limits.shutdown_timeout_ms` after the signal, whichever comes first: a
//! client that does not read cannot hold the exit.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use crate::wire::{self, CloseCode};

/// What the shutdown close reason starts with; the delay follows in
/// decimal milliseconds. docs/protocol.md documents the format.
pub const REASON_PREFIX: &str = "server restarting; reconnect_after_ms=";

/// The close frames sent on shutdown, each with its own reconnect delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartNotice {
    /// Delays are drawn from 0 to this many ms, both included.
    spread_ms: u64,
}

impl RestartNotice {
    pub fn new(spread: Duration) -> Self {
        Self {
            spread_ms: spread.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// A 1001 close frame whose reason carries a random reconnect delay.
    pub fn close_frame(&self, rng: &mut impl Rng) -> Bytes {
        let delay = rng.gen_range(0..=self.spread_ms);
        wire::close(CloseCode::GoingAway, &format!("{REASON_PREFIX}{delay}"))
    }
}

/// The reconnect delay in a shutdown close reason (as a client reads it).
pub fn reconnect_hint(reason: &str) -> Option<Duration> {
    let rest = &reason[reason.find("reconnect_after_ms=")? + "reconnect_after_ms=".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok().map(Duration::from_millis)
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(frame: &Bytes) -> (u16, &str) {
        // A close frame under 126 bytes: two header bytes, then the code.
        let payload = &frame[2..];
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (code, std::str::from_utf8(&payload[2..]).unwrap())
    }

    #[test]
    fn every_close_carries_its_own_delay_within_the_spread() {
        let notice = RestartNotice::new(Duration::from_millis(5_000));
        let mut rng = rand::thread_rng();
        let mut delays = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let frame = notice.close_frame(&mut rng);
            let (code, text) = reason(&frame);
            assert_eq!(code, 1001);
            assert!(text.starts_with(REASON_PREFIX), "{text}");
            let delay = reconnect_hint(text).expect("a parseable delay");
            assert!(delay <= Duration::from_millis(5_000), "{delay:?}");
            delays.insert(delay);
        }
        assert!(delays.len() > 1, "delays differ from client to client");
        let none = RestartNotice::new(Duration::ZERO).close_frame(&mut rng);
        assert_eq!(reconnect_hint(reason(&none).1), Some(Duration::ZERO));
    }

    #[test]
    fn hints_are_read_from_the_reason() {
        assert_eq!(
            reconnect_hint("server restarting; reconnect_after_ms=1234"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            reconnect_hint("reconnect_after_ms=7; more later"),
            Some(Duration::from_millis(7))
        );
        assert_eq!(reconnect_hint("server shutting down"), None);
        assert_eq!(reconnect_hint("reconnect_after_ms="), None);
    }
}
