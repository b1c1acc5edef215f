//! Measurement: the clock, per-thread tallies of deliveries and latencies, and run counters.
//!
//! Every delivery is recorded into the tally of the runtime thread that read it (a
//! thread-local slot registered with the run's [`Recorder`]). Only that thread locks it per
//! message, so the lock is uncontended; the progress bar and the final report lock each tally
//! briefly and merge them. Rare events (gaps, snapshots, reconnects) are plain atomics in
//! [`Counters`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Unix time in nanoseconds, read from the monotonic clock anchored once on the wall clock, so
/// an NTP step during a run cannot bend latencies. Copy it into every task.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            anchor: Instant::now(),
            anchor_unix_ns: unix.as_nanos() as u64,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    pub fn ns_at(&self, t: Instant) -> u64 {
        self.anchor_unix_ns + t.saturating_duration_since(self.anchor).as_nanos() as u64
    }

    pub fn instant_at(&self, unix_ns: u64) -> Instant {
        self.anchor + Duration::from_nanos(unix_ns.saturating_sub(self.anchor_unix_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Highest latency a histogram tracks (larger values are clamped): one hour, in ns.
const MAX_TRACKED_NS: u64 = 3_600_000_000_000;

/// A latency histogram in nanoseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("static histogram bounds are valid")
}

/// Where latency is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyFrom {
    /// `data.sent_ns`, the publisher's scheduled time (corrected for coordinated omission);
    /// `data.act_ns`, the actual send time, feeds the uncorrected histogram.
    Schedule,
    /// The update's `ts`, stamped by the server as the update entered it.
    ServerTs,
}

/// The measurement window in Unix ns; `start == u64::MAX` until the window is set.
#[derive(Debug)]
pub struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    pub fn unset() -> Window {
        Window {
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(u64::MAX),
        }
    }

    pub fn set(&self, start_ns: u64, end_ns: u64) {
        self.end.store(end_ns, Relaxed);
        self.start.store(start_ns, Relaxed);
    }

    pub fn contains(&self, ns: u64) -> bool {
        ns >= self.start.load(Relaxed) && ns < self.end.load(Relaxed)
    }
}

/// One thread's (or one test's) share of the measurements.
#[derive(Debug)]
pub struct Tally {
    /// Latency from the schedule (publisher mode) or from the server's `ts`.
    pub corrected: Histogram<u64>,
    /// Latency from the publisher's actual send time (publisher mode only).
    pub uncorrected: Histogram<u64>,
    /// All updates received, in or out of the window.
    pub deliveries: u64,
    pub bytes: u64,
    /// Updates and payload bytes received inside the window (for the per-second rates).
    pub window_deliveries: u64,
    pub window_bytes: u64,
    /// Updates carrying a publisher stamp (`sent_ns`): this run's records, delivered.
    pub published: u64,
    /// Updates without the stamp latency is measured from (not recorded in the histograms).
    pub unstamped: u64,
    /// Updates that arrived before their stamp (clocks disagree); recorded as 0.
    pub negative: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            deliveries: 0,
            bytes: 0,
            window_deliveries: 0,
            window_bytes: 0,
            published: 0,
            unstamped: 0,
            negative: 0,
        }
    }
}

/// The stamps of one update that latency can be measured from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamps {
    pub sent_ns: Option<u64>,
    pub act_ns: Option<u64>,
    pub ts: Option<u64>,
}

impl Tally {
    /// Records one update received at `recv_ns` with `bytes` of payload.
    ///
    /// In publisher mode a record counts toward latency when its *scheduled* time lies in the
    /// window, so each scheduled record is counted once however late it was sent; otherwise
    /// the receive time decides.
    pub fn record(
        &mut self,
        from: LatencyFrom,
        window: &Window,
        recv_ns: u64,
        bytes: usize,
        s: Stamps,
    ) {
        self.deliveries += 1;
        self.bytes += bytes as u64;
        if window.contains(recv_ns) {
            self.window_deliveries += 1;
            self.window_bytes += bytes as u64;
        }
        if s.sent_ns.is_some() {
            self.published += 1;
        }
        let (base, in_window) = match from {
            LatencyFrom::Schedule => (s.sent_ns, s.sent_ns.is_some_and(|t| window.contains(t))),
            LatencyFrom::ServerTs => (s.ts, window.contains(recv_ns)),
        };
        let Some(base) = base else {
            self.unstamped += 1;
            return;
        };
        if !in_window {
            return;
        }
        if recv_ns < base {
            self.negative += 1;
        }
        self.corrected
            .saturating_record(recv_ns.saturating_sub(base).max(1));
        if let (LatencyFrom::Schedule, Some(act)) = (from, s.act_ns) {
            self.uncorrected
                .saturating_record(recv_ns.saturating_sub(act).max(1));
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Tally) {
        // Same bounds by construction, so adding cannot fail.
        self.corrected
            .add(&other.corrected)
            .expect("histograms share bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("histograms share bounds");
        self.deliveries += other.deliveries;
        self.bytes += other.bytes;
        self.window_deliveries += other.window_deliveries;
        self.window_bytes += other.window_bytes;
        self.published += other.published;
        self.unstamped += other.unstamped;
        self.negative += other.negative;
    }
}

static NEXT_RECORDER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's tally and the id of the recorder it belongs to (tests run several).
    static LOCAL: RefCell<Option<(u64, Arc<Mutex<Tally>>)>> = const { RefCell::new(None) };
}

/// Hands each thread its own [`Tally`] and merges them on demand.
#[derive(Debug)]
pub struct Recorder {
    id: u64,
    tallies: Mutex<Vec<Arc<Mutex<Tally>>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            id: NEXT_RECORDER_ID.fetch_add(1, Relaxed),
            tallies: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder {
    /// Runs `f` on this thread's tally (registering one on first use).
    pub fn with_local<R>(&self, f: impl FnOnce(&mut Tally) -> R) -> R {
        LOCAL.with(|slot| {
            let mut slot = slot.borrow_mut();
            if !matches!(&*slot, Some((id, _)) if *id == self.id) {
                let tally = Arc::new(Mutex::new(Tally::default()));
                self.tallies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(tally.clone());
                *slot = Some((self.id, tally));
            }
            let (_, tally) = slot.as_ref().expect("slot was just filled");
            let mut guard = tally.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
    }

    /// The sum of every thread's tally so far.
    pub fn merged(&self) -> Tally {
        let mut total = Tally::default();
        for t in self
            .tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            total.merge(&t.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

/// Counters of rare events, shared by all clients.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub subscribed: AtomicU64,
    pub subscribe_failed: AtomicU64,
    /// Clients whose session loop has ended (for good).
    pub finished: AtomicU64,
    /// Clients that are subscribed or will not be (failed, refused, gone): each counts once.
    pub settled: AtomicU64,
    pub snapshots: AtomicU64,
    pub resyncs: AtomicU64,
    /// Chains started at an update because no snapshot came first (the uWS peer sends none).
    pub chains_from_update: AtomicU64,
    /// `prev` did not match the held seq: an unannounced gap.
    pub gaps: AtomicU64,
    /// Connections that ended before the run did (server close, reset, EOF).
    pub disconnects: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub reconnects: AtomicU64,
    pub server_errors: AtomicU64,
    pub malformed: AtomicU64,
    pub closed_clean: AtomicU64,
    pub close_timeouts: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

/// The usual percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summarises a nanosecond histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: u64, end: u64) -> Window {
        let w = Window::unset();
        w.set(start, end);
        w
    }

    #[test]
    fn merged_tallies_equal_one_tally_of_everything() {
        let w = window(0, u64::MAX);
        let (mut a, mut b, mut all) = (Tally::default(), Tally::default(), Tally::default());
        for i in 1..=1000u64 {
            let s = Stamps {
                ts: Some(1_000_000),
                ..Stamps::default()
            };
            let recv = 1_000_000 + i * 1000;
            let part = if i % 3 == 0 { &mut a } else { &mut b };
            part.record(LatencyFrom::ServerTs, &w, recv, 100, s);
            all.record(LatencyFrom::ServerTs, &w, recv, 100, s);
        }
        let mut merged = Tally::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.corrected, all.corrected);
        assert_eq!((merged.deliveries, merged.bytes), (1000, 100_000));
        assert_eq!(
            Percentiles::of(&merged.corrected),
            Percentiles::of(&all.corrected)
        );
        assert!((Percentiles::of(&merged.corrected).p50 - 500.0).abs() < 1.0);
    }

    #[test]
    fn recorder_merges_tallies_from_several_threads() {
        let rec = Arc::new(Recorder::default());
        let w = Arc::new(window(0, u64::MAX));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rec, w) = (rec.clone(), w.clone());
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        let s = Stamps {
                            ts: Some(10),
                            ..Stamps::default()
                        };
                        rec.with_local(|t| t.record(LatencyFrom::ServerTs, &w, 5010, 1, s));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let total = rec.merged();
        assert_eq!(total.corrected.len(), 1000);
        assert_eq!(
            total.corrected.value_at_quantile(0.5),
            total.corrected.highest_equivalent(5000)
        );
    }

    #[test]
    fn window_and_stamps_decide_what_is_recorded() {
        let w = window(1_000, 2_000);
        let mut t = Tally::default();
        let sched = |sent, act| Stamps {
            sent_ns: Some(sent),
            act_ns: Some(act),
            ts: None,
        };
        // Scheduled inside the window, received after it: still counts (publisher mode).
        t.record(LatencyFrom::Schedule, &w, 2_500, 1, sched(1_500, 1_600));
        // Scheduled before the window (warm-up): not recorded.
        t.record(LatencyFrom::Schedule, &w, 1_200, 1, sched(900, 900));
        // No stamp: counted as unstamped.
        t.record(LatencyFrom::Schedule, &w, 1_200, 1, Stamps::default());
        assert_eq!(
            (t.corrected.len(), t.uncorrected.len(), t.unstamped),
            (1, 1, 1)
        );
        assert_eq!(t.corrected.max(), t.corrected.highest_equivalent(1_000));
        assert_eq!(
            t.uncorrected.value_at_quantile(1.0),
            t.uncorrected.highest_equivalent(900)
        );
        assert_eq!((t.deliveries, t.window_deliveries), (3, 2));
        // A server clock ahead of ours: clamped and counted.
        t.record(
            LatencyFrom::ServerTs,
            &w,
            1_500,
            1,
            Stamps {
                ts: Some(1_600),
                ..Stamps::default()
            },
        );
        assert_eq!(t.negative, 1);
    }
}
