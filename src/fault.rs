//! Keeping a failure where it happened.
//!
//! A bug that panics while serving one session or one feed must end that
//! session or feed, not the process and every other client with it. Tokio
//! already stops a panicking task from unwinding into the runtime, but the
//! task would then skip its clean-up (the engine would keep the session's
//! subscriptions; a feed would still read "running"), so the session and
//! feed tasks run their work through [`contain`] and clean up either way.
//!
//! With the `fault-injection` feature (tests only) [`inject`] panics on
//! purpose, so tests can prove the containment; without it, it is nothing.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Channel name whose records (feeds) or subscribes (sessions) panic on
/// purpose when the `fault-injection` feature is on.
pub const PANIC_CHANNEL: &str = "fault.panic";

/// Runs `work`; a panic inside it comes back as `Err(message)`.
///
/// `AssertUnwindSafe` is sound here in the sense that matters: callers
/// drop whatever state the panicking work touched (the session or feed ends)
/// and never read it afterwards.
///
/// A plain function returning a combinator, not an `async fn`: an `async fn`
/// would hold `work` twice (its argument, and the future polling it), and
/// sessions keep this future for their whole life (docs/benchmarks.md).
pub fn contain<F: Future>(work: F) -> impl Future<Output = Result<F::Output, String>> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .map(|caught| caught.map_err(|payload| panic_message(&*payload)))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

/// Panics when `channel` is [`PANIC_CHANNEL`] and the `fault-injection`
/// feature is on; compiled to nothing otherwise.
#[inline]
pub fn inject(channel: &str, place: &str) {
    if cfg!(feature = "fault-injection") && channel == PANIC_CHANNEL {
        panic!("fault injected in {place} (the fault-injection feature is on)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_comes_back_as_its_message_and_work_returns_its_value() {
        assert_eq!(contain(async { 7 }).await, Ok(7));
        let caught = contain(async {
            if std::hint::black_box(true) {
                panic!("boom {}", 42);
            }
        })
        .await;
        assert_eq!(caught, Err("boom 42".to_owned()));
        let caught = contain(async { std::panic::panic_any(5u8) }).await;
        assert!(caught.unwrap_err().contains("non-text"));
    }
}
