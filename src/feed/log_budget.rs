//! Keeping bad input from flooding the log: a per-interval budget of log
//! lines ([`LogBudget`]) and a short, escaped excerpt of untrusted bytes
//! ([`excerpt`]).
//!
//! A producer that sends nothing but bad lines used to write one log line
//! per line it sent, raw bytes included: 400 KB of input gave 65 MB of log,
//! with NUL and ESC bytes in it. Counters stay exact (they are what /metrics
//! shows); only the log is sampled.

/// Longest excerpt of untrusted input written to the log, in input bytes.
pub const EXCERPT_BYTES: usize = 120;

/// At most `per_interval` log lines per interval; the rest are counted.
///
/// Time is passed in (nanoseconds on any monotonic clock), so the engine,
/// which reads no clock, can use its own `now`, and tests need no sleeps.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_interval: u32,
    interval_ns: u64,
    /// Start of the current interval; `None` before the first event.
    window_start: Option<u64>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it. `suppressed_before` events of the previous interval were not
    /// logged: say so first (one summary line) when it is not 0.
    Log { suppressed_before: u64 },
    /// Count it without logging; `first` is set for the first one of the
    /// interval, so the caller can say once that it stops logging.
    Suppress { first: bool },
}

impl LogBudget {
    pub fn new(per_interval: u32, interval_ns: u64) -> Self {
        Self {
            per_interval,
            interval_ns: interval_ns.max(1),
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Decides for one event at `now_ns`.
    pub fn admit(&mut self, now_ns: u64) -> Verdict {
        let mut suppressed_before = 0;
        let expired = self
            .window_start
            .is_none_or(|start| now_ns.saturating_sub(start) >= self.interval_ns);
        if expired {
            suppressed_before = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now_ns);
            self.logged = 0;
        }
        if self.logged < self.per_interval {
            self.logged += 1;
            return Verdict::Log { suppressed_before };
        }
        self.suppressed += 1;
        Verdict::Suppress {
            first: self.suppressed == 1,
        }
    }
}

/// At most [`EXCERPT_BYTES`] of `bytes` as printable text: control
/// characters (NUL, ESC, CR, LF, DEL, C1) and bytes that are not UTF-8 are
/// escaped (`\u{1b}`, `\x80`), and a cut is marked with `...`.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.len() > EXCERPT_BYTES;
    let mut rest = &bytes[..bytes.len().min(EXCERPT_BYTES)];
    let mut out = String::with_capacity(rest.len() + 8);
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(text) => (text, &[][..]),
            Err(e) => {
                let (good, tail) = rest.split_at(e.valid_up_to());
                let text = std::str::from_utf8(good).expect("checked up to here");
                // A character cut by the excerpt's end counts as bad bytes.
                let bad_len = e.error_len().unwrap_or(tail.len());
                (text, &tail[..bad_len])
            }
        };
        for c in valid.chars() {
            if c.is_control() {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
        for b in bad {
            out.push_str(&format!("\\x{b:02x}"));
        }
        rest = &rest[valid.len() + bad.len()..];
    }
    if cut {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn logs_n_per_interval_then_reports_what_it_held_back() {
        let mut budget = LogBudget::new(3, 10 * S);
        let verdicts: Vec<Verdict> = (0..6).map(|i| budget.admit(i * S)).collect();
        let log = Verdict::Log {
            suppressed_before: 0,
        };
        assert_eq!(&verdicts[..3], &[log, log, log]);
        assert_eq!(verdicts[3], Verdict::Suppress { first: true });
        assert_eq!(verdicts[5], Verdict::Suppress { first: false });
        assert_eq!(
            budget.admit(10 * S),
            Verdict::Log {
                suppressed_before: 3
            },
            "the next interval starts with the count of the last"
        );
        assert_eq!(
            budget.admit(11 * S),
            Verdict::Log {
                suppressed_before: 0
            }
        );
    }

    #[test]
    fn excerpts_are_short_and_carry_no_control_bytes() {
        assert_eq!(excerpt(b"plain {\"a\":1}"), "plain {\"a\":1}");
        assert_eq!(excerpt(b"a\0b\x1b[31mc\rd"), "a\\u{0}b\\u{1b}[31mc\\u{d}d");
        assert_eq!(
            excerpt(b"ok \xff\xfe caf\xc3\xa9"),
            "ok \\xff\\xfe caf\u{e9}"
        );
        let long = vec![0u8; 10_000];
        let text = excerpt(&long);
        assert!(text.ends_with("..."));
        assert_eq!(text.len(), EXCERPT_BYTES * "\\u{0}".len() + 3);
        assert!(!text.bytes().any(|b| b.is_ascii_control()));
        // A multi-byte character cut at the end is escaped, not dropped.
        let mut cut = vec![b'x'; EXCERPT_BYTES - 1];
        cut.extend_from_slice("é".as_bytes());
        assert!(excerpt(&cut).ends_with("x\\xc3..."), "{}", excerpt(&cut));
    }
}
