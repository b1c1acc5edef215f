//! Read-side timeouts without a timer in any connection's task: each
//! session stamps atomics as it reads ([`Activity`]), and one sweeper task
//! over all sessions ([`Watchlist`]) looks at the stamps a few times per
//! timeout and acts on the connections past one.
//!
//! A timer per session would sit in every idle connection's task, and idle
//! connections are most of a server's memory (docs/benchmarks.md). The
//! sweeper costs one pass over a map per tick; the stamps live in the
//! session's outbox, an allocation it has anyway.
//!
//! - **Frame timeout**: a frame, or a fragmented message, whose first byte
//!   arrived more than `limits.frame_timeout_ms` ago and is not complete:
//!   close 1008.
//! - **Idle timeout**: nothing heard from the peer for half of
//!   `limits.idle_timeout_ms`: a ping (which a live client answers, and
//!   that answer counts); nothing for all of it: close 1001 "idle timeout".
//!   Heard means a byte read, or a full socket taking bytes (see
//!   [`Activity`]).
//! - **Token expiry**: a connection whose token's `exp` has passed, with no
//!   fresh token sent (`{"op":"auth"}`): close 1008 "token expired".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::outbox::Outbox;
use super::SessionLimits;
use crate::activity::now_ms;
pub use crate::activity::Activity;
use crate::engine::SessionId;
use crate::metrics::Metrics;
use crate::wire::{self, CloseCode, FrameBuilder};

const OP_PING: u8 = 0x9;

/// Every live session's outbox (with its stamps), and the sweeper acting
/// on them.
pub struct Watchlist {
    sessions: Mutex<HashMap<SessionId, Arc<Outbox>>>,
    frame_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    sweeper_started: AtomicBool,
    ping: Bytes,
}

/// What one look at a session calls for.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    Ping,
    IdleClose,
    FrameClose,
    TokenExpired,
}

impl Watchlist {
    pub fn new(limits: &SessionLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            frame_timeout: limits.frame_timeout,
            idle_timeout: limits.idle_timeout,
            metrics,
            sweeper_started: AtomicBool::new(false),
            ping: FrameBuilder::with_capacity(0).finish(OP_PING),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Outbox>>> {
        // Every update is one insert or retain: a poisoned map is whole.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `session` while anyone but this list holds its outbox (the
    /// session task and the engine do until it ends): no guard in the
    /// session's task, and nothing left behind if that task is dropped. The
    /// first call starts the sweeper, which ends when the list is dropped.
    pub fn watch(self: &Arc<Self>, session: SessionId, outbox: Arc<Outbox>) {
        if !self.sweeper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.sweep_every()));
        }
        self.lock().insert(session, outbox);
    }

    /// A quarter of the shortest thing measured, within 10 ms and 1 s: a
    /// timeout fires at most a quarter late.
    fn sweep_every(&self) -> Duration {
        (self.frame_timeout.min(self.idle_timeout / 2) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    fn verdict(&self, activity: &Activity, now: u64) -> Verdict {
        let expires = activity.token_expires_ms.load(Ordering::Relaxed);
        if expires != 0 && now >= expires {
            return Verdict::TokenExpired;
        }
        let started = activity.frame_started_ms.load(Ordering::Relaxed);
        if started != 0 && now.saturating_sub(started) >= self.frame_timeout.as_millis() as u64 {
            return Verdict::FrameClose;
        }
        let last = activity.last_heard_ms.load(Ordering::Relaxed);
        let quiet = now.saturating_sub(last);
        let idle = self.idle_timeout.as_millis() as u64;
        if quiet >= idle {
            Verdict::IdleClose
        } else if quiet >= idle / 2 && activity.pinged_for_ms.load(Ordering::Relaxed) != last {
            Verdict::Ping
        } else {
            Verdict::Fine
        }
    }

    /// One look at every session; forgets the ended ones.
    fn sweep_once(&self) {
        let now = now_ms();
        let mut sessions = self.lock();
        sessions.retain(|&session, outbox| {
            if Arc::strong_count(outbox) == 1 {
                return false;
            }
            self.look_at(session, outbox, now);
            true
        });
        if sessions.capacity() > 4 * sessions.len() + 1024 {
            // Give back what a burst of connections grew.
            sessions.shrink_to_fit();
        }
    }

    fn look_at(&self, session: SessionId, outbox: &Outbox, now: u64) {
        let activity = outbox.activity();
        let verdict = self.verdict(activity, now);
        if verdict == Verdict::Fine || outbox.is_closing() {
            return;
        }
        match verdict {
            Verdict::Fine => {}
            Verdict::Ping => {
                // Past the byte bound if need be (two bytes, once per quiet
                // spell): a slow reader must still be asked.
                if outbox.push_control(self.ping.clone()) {
                    let last = activity.last_heard_ms.load(Ordering::Relaxed);
                    activity.pinged_for_ms.store(last, Ordering::Relaxed);
                    self.metrics.idle_pings.fetch_add(1, Ordering::Relaxed);
                }
            }
            Verdict::IdleClose => {
                tracing::debug!(
                    session,
                    "nothing heard for {:?}: closing",
                    self.idle_timeout
                );
                self.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
                outbox.close(wire::close(CloseCode::GoingAway, "idle timeout"), false);
            }
            Verdict::FrameClose => {
                tracing::debug!(
                    session,
                    "frame not finished within {:?}: closing",
                    self.frame_timeout
                );
                self.metrics
                    .frame_timeouts_closed
                    .fetch_add(1, Ordering::Relaxed);
                let close = wire::close(
                    CloseCode::PolicyViolation,
                    "frame not finished within limits.frame_timeout_ms",
                );
                outbox.close(close, false);
            }
            Verdict::TokenExpired => {
                tracing::debug!(session, "token expired: closing");
                self.metrics
                    .tokens_expired_closed
                    .fetch_add(1, Ordering::Relaxed);
                let close = wire::close(CloseCode::PolicyViolation, "token expired");
                outbox.close(close, false);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

async fn sweep(list: Weak<Watchlist>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(list) = list.upgrade() else {
            return;
        };
        list.sweep_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(frame_ms: u64, idle_ms: u64) -> Arc<Watchlist> {
        let mut limits = crate::config::Settings::default().limits;
        limits.frame_timeout_ms = frame_ms;
        limits.idle_timeout_ms = idle_ms;
        Arc::new(Watchlist::new(
            &limits.session(false),
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn verdicts_follow_the_stamps() {
        let list = list(1_000, 10_000);
        let a = Activity::default();
        let t = a.last_heard_ms.load(Ordering::Relaxed);
        assert_eq!(list.verdict(&a, t + 4_999), Verdict::Fine);
        assert_eq!(list.verdict(&a, t + 5_000), Verdict::Ping);
        a.pinged_for_ms.store(t, Ordering::Relaxed);
        assert_eq!(list.verdict(&a, t + 6_000), Verdict::Fine, "one ping");
        assert_eq!(list.verdict(&a, t + 10_000), Verdict::IdleClose);
        a.frame_begun();
        let started = a.frame_started_ms.load(Ordering::Relaxed);
        a.frame_begun();
        assert_eq!(
            a.frame_started_ms.load(Ordering::Relaxed),
            started,
            "the clock of a frame in progress is not restarted"
        );
        assert_eq!(list.verdict(&a, started + 1_000), Verdict::FrameClose);
        a.frame_done();
        a.read_now();
        let t = a.last_heard_ms.load(Ordering::Relaxed);
        assert_eq!(list.verdict(&a, t + 1_000), Verdict::Fine);
        // A token's exp 2 s from now (to the second): fine until then,
        // closed from then on.
        let unix_now = crate::clock::unix_nanos() / 1_000_000_000;
        a.expire_token_at(unix_now + 2);
        let expires = a.token_expires_ms.load(Ordering::Relaxed);
        assert!(
            expires >= t + 900 && expires <= t + 2_100,
            "{expires} vs {t}"
        );
        assert_eq!(list.verdict(&a, expires - 1), Verdict::Fine);
        assert_eq!(list.verdict(&a, expires), Verdict::TokenExpired);
        a.expire_token_at(unix_now + 60);
        assert_eq!(list.verdict(&a, expires), Verdict::Fine, "refreshed");
    }

    #[tokio::test]
    async fn a_session_is_watched_while_its_outbox_is_held_elsewhere() {
        let list = list(1_000, 10_000);
        let outbox = Arc::new(Outbox::new(1024));
        list.watch(7, outbox.clone());
        list.sweep_once();
        assert_eq!(list.len(), 1);
        drop(outbox);
        list.sweep_once();
        assert_eq!(list.len(), 0, "the session ended: forgotten");
        assert_eq!(list.sweep_every(), Duration::from_millis(250));
    }
}
