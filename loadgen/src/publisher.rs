//! Publisher mode: the loadgen feeds the server itself, on a fixed schedule, over a TCP NDJSON
//! feed ingest, and stamps each record with the time it was *due*.
//!
//! Record k is due at `start + k / rate`. The publisher sends whatever is due when it wakes, in
//! one write; when it falls behind (the server stops reading, the machine stalls) it sends the
//! late records at once but keeps their scheduled times. Latency measured from the scheduled
//! time therefore includes the time a record waited to be sent: this is the coordinated-omission
//! correction of wrk2. Each record also carries its actual send time (`act_ns`), from which
//! the uncorrected latency is measured for comparison.
//!
//! The publisher runs on its own OS thread with blocking I/O: tokio's timer has a 1 ms
//! granularity, which would add up to a millisecond of lateness to every record. On Linux the
//! thread asks for a 1 ns timer slack (and, as root, nice -10) so that its sleeps end close to
//! the due time; its own lateness is reported (`lag`) so a reader can tell publisher delay
//! from server delay.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::stats::{new_histogram, Clock};

/// The fixed schedule: `total` records, record k due at `start_ns + k * interval`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start_ns: u64,
    pub interval_ns: f64,
    pub total: u64,
}

impl Schedule {
    /// `rate` records per second for `length`, starting at `start_ns` (Unix ns).
    pub fn new(start_ns: u64, rate: f64, length: Duration) -> Schedule {
        Schedule {
            start_ns,
            interval_ns: 1e9 / rate,
            total: (length.as_secs_f64() * rate).floor() as u64,
        }
    }

    pub fn due(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns).round() as u64
    }
}

/// Walks a [`Schedule`]: hands out the records due by a given time, each exactly once.
#[derive(Debug)]
pub struct Pacer {
    pub schedule: Schedule,
    next: u64,
}

impl Pacer {
    pub fn new(schedule: Schedule) -> Pacer {
        Pacer { schedule, next: 0 }
    }

    /// The records due at or before `now_ns` that were not handed out yet.
    pub fn take_due(&mut self, now_ns: u64) -> Range<u64> {
        let first = self.next;
        while self.next < self.schedule.total && self.schedule.due(self.next) <= now_ns {
            self.next += 1;
        }
        first..self.next
    }

    /// When the next record is due; `None` when the schedule is done.
    pub fn next_due(&self) -> Option<u64> {
        (self.next < self.schedule.total).then(|| self.schedule.due(self.next))
    }
}

/// Appends record k as one NDJSON line.
pub fn write_record(buf: &mut Vec<u8>, channel: &str, k: u64, due_ns: u64, act_ns: u64) {
    let px = 10_000 + (k * 7919) % 5_000; // a price in cents that moves around
    let _ = writeln!(
        buf,
        r#"{{"channel":"{channel}","data":{{"sent_ns":{due_ns},"act_ns":{act_ns},"n":{k},"px":{}.{:02}}},"ts":{due_ns}}}"#,
        px / 100,
        px % 100
    );
}

/// What the publisher did.
#[derive(Debug)]
pub struct Outcome {
    /// Records sent per channel (same order as the channel list).
    pub sent: Vec<u64>,
    pub total: u64,
    /// Actual send time minus due time, per record, in ns.
    pub lag: Histogram<u64>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Opens the feed connection; done before the schedule starts so a wrong address fails fast.
pub fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the feed ingest at {addr}: {e}. Is it listening? (tickcast: \
             `tickcast serve --feed tcp:{addr}`; the uWS peer: `node uws.js --ingest {addr}`)"
        )
    })?;
    stream.set_nodelay(true)?;
    // A server that stops reading its feed for this long is wedged: stop rather than hang.
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Creates every published channel before clients subscribe, with one record
/// that carries no `sent_ns`. Servers that snapshot (tickcast) then start each
/// client's chain at a snapshot of an existing channel instead of folding the
/// first timed record into it, so every timed record is an `update` that the
/// delivery count and the latency histogram see.
pub fn prime(stream: &mut TcpStream, channels: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut buf = Vec::new();
    for channel in channels {
        buf.extend_from_slice(b"{\"channel\":\"");
        buf.extend_from_slice(channel.as_bytes());
        buf.extend_from_slice(b"\",\"data\":{\"primed\":true}}\n");
    }
    stream
        .write_all(&buf)
        .map_err(|e| anyhow::anyhow!("priming the channels on the feed ingest failed: {e}"))
}

/// Sends the schedule over `stream` on a new thread, until done or `stop` is set.
pub fn spawn(
    mut stream: TcpStream,
    schedule: Schedule,
    channels: Vec<String>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Outcome> {
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            precise_sleeps();
            let mut out = Outcome {
                sent: vec![0; channels.len()],
                total: 0,
                lag: new_histogram(),
                error: None,
            };
            let mut pacer = Pacer::new(schedule);
            let mut buf = Vec::with_capacity(64 * 1024);
            while !stop.load(Relaxed) {
                let now = clock.now_ns();
                buf.clear();
                let due = pacer.take_due(now);
                for k in due.clone() {
                    let ch = (k % channels.len() as u64) as usize;
                    let due_ns = schedule.due(k);
                    write_record(&mut buf, &channels[ch], k, due_ns, now);
                    out.lag.saturating_record(now.saturating_sub(due_ns).max(1));
                    out.sent[ch] += 1;
                }
                if !buf.is_empty() {
                    if let Err(e) = stream.write_all(&buf) {
                        // Nothing of this batch is known to have arrived.
                        for k in due.clone() {
                            out.sent[(k % channels.len() as u64) as usize] -= 1;
                        }
                        out.error = Some(format!(
                            "writing to the feed failed after {} records: {e} (a timeout means \
                             the server stopped reading its feed for 5 s)",
                            out.total
                        ));
                        break;
                    }
                    out.total += due.end - due.start;
                }
                let Some(next) = pacer.next_due() else { break };
                // Sleep until the next record is due, in slices so a stop is seen promptly,
                // and never shorter than 20 us: records due within that share one write.
                let wait = next
                    .saturating_sub(clock.now_ns())
                    .clamp(20_000, 50_000_000);
                std::thread::sleep(Duration::from_nanos(wait));
            }
            let _ = stream.flush();
            out
        })
        .expect("spawning the publisher thread")
}

/// Makes this thread a punctual clock: a 1 ns timer slack (the default 50 us would add to
/// every record's lateness) and, where allowed (root), a higher priority (nice -10), so that a
/// busy machine delays the schedule less. Both apply to this thread only; failures are
/// ignored, and the remaining lateness is measured (`lag`) either way.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: both calls take plain integers and change only this thread's scheduling
    // attributes (on Linux, PRIO_PROCESS with who = 0 means the calling thread); no memory is
    // passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, -10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencyFrom, Stamps, Tally, Window};

    const MS: u64 = 1_000_000;

    #[test]
    fn pacer_hands_out_each_due_record_once() {
        let s = Schedule::new(1_000, 1000.0, Duration::from_millis(10));
        assert_eq!(s.total, 10);
        let mut p = Pacer::new(s);
        assert_eq!(p.take_due(999), 0..0);
        assert_eq!(p.take_due(1_000), 0..1);
        assert_eq!(p.next_due(), Some(1_000 + MS));
        assert_eq!(
            p.take_due(1_000 + 3 * MS + 5),
            1..4,
            "late: three records at once"
        );
        assert_eq!(p.take_due(u64::MAX), 4..10);
        assert_eq!(p.next_due(), None);
    }

    #[test]
    fn records_are_feed_lines_the_scanner_reads_back() {
        let mut buf = Vec::new();
        write_record(
            &mut buf,
            "quotes.S1",
            7,
            1_763_700_000_000_000_000,
            1_763_700_000_000_000_100,
        );
        let line = std::str::from_utf8(&buf).unwrap();
        assert!(line.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["channel"], "quotes.S1");
        assert_eq!(v["ts"], 1_763_700_000_000_000_000u64);
        assert!(v["data"]["px"].is_f64());
        // The server passes data through: an update wrapping it scans back to the same stamps.
        let update = format!(
            r#"{{"type":"update","channel":"quotes.S1","seq":1,"prev":0,"data":{}}}"#,
            v["data"]
        );
        let m = crate::scan::scan(update.as_bytes()).unwrap();
        assert_eq!(m.sent_ns, Some(1_763_700_000_000_000_000));
        assert_eq!(m.act_ns, Some(1_763_700_000_000_000_100));
    }

    /// 1000 records/s for 1 s, 50 us transit, and one 100 ms stall of the sender at t=500 ms.
    /// Measured from the schedule the stall shows as ~100 records waiting 100 ms down to 1 ms
    /// (what a real client would have seen); measured from the actual send time it vanishes.
    #[test]
    fn coordinated_omission_correction_spreads_a_stall_over_the_scheduled_records() {
        let start = 1_000 * MS;
        let schedule = Schedule::new(start, 1000.0, Duration::from_secs(1));
        let mut pacer = Pacer::new(schedule);
        let window = Window::unset();
        window.set(0, u64::MAX);
        let mut tally = Tally::default();
        let transit = 50_000;
        let mut now = start;
        let mut stalled = false;
        loop {
            if !stalled && now >= start + 500 * MS {
                stalled = true;
                now += 100 * MS;
            }
            for k in pacer.take_due(now) {
                let stamps = Stamps {
                    sent_ns: Some(schedule.due(k)),
                    act_ns: Some(now),
                    ts: None,
                };
                tally.record(LatencyFrom::Schedule, &window, now + transit, 100, stamps);
            }
            match pacer.next_due() {
                Some(next) => now = now.max(next),
                None => break,
            }
        }
        let (c, u) = (&tally.corrected, &tally.uncorrected);
        assert_eq!((c.len(), u.len()), (1000, 1000));
        let late = c
            .iter_recorded()
            .filter(|v| v.value_iterated_to() > MS)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!(
            (98..=101).contains(&late),
            "{late} records waited over 1 ms"
        );
        assert!(c.max() >= 100 * MS && c.max() < 101 * MS, "max {}", c.max());
        let p95 = c.value_at_quantile(0.95);
        assert!(
            p95 > 40 * MS && p95 < 60 * MS,
            "p95 {p95}: the stall is spread, not one outlier"
        );
        assert!(
            c.value_at_quantile(0.5) < 60_000,
            "the median stays at the transit time"
        );
        assert!(
            u.max() < 60_000,
            "uncorrected hides the stall: max {}",
            u.max()
        );
    }
}
