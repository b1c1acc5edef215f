//! `--from`: where a replay starts.
//!
//! - `#N`: at the Nth record of the file (1-based; blank and rejected lines
//!   do not count, so `#1` is the first record).
//! - an RFC 3339 time (`2026-11-27T16:00:00Z`, `...+01:00`, fractions of a
//!   second allowed) or a whole number of Unix milliseconds: at the first
//!   record whose `ts` is at or after it. Records without `ts` before that
//!   point are skipped too; from there on every record goes.
//!
//! Skipped records are parsed but neither paced nor sent, so skipping is
//! as fast as reading the file.

use std::fmt;
use std::str::FromStr;

/// Where a replay starts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first record with `ts` >= this (Unix ns).
    TimeNs(u64),
    /// The Nth record (1-based).
    Record(u64),
}

impl ReplayFrom {
    /// Whether the replay has reached its start: `record_no` is the 1-based
    /// number of this record in the pass, `ts` its own time.
    pub fn reached(self, record_no: u64, ts: Option<u64>) -> bool {
        match self {
            ReplayFrom::Record(n) => record_no >= n,
            ReplayFrom::TimeNs(start) => ts.is_some_and(|ts| ts >= start),
        }
    }
}

impl FromStr for ReplayFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(n) = s.strip_prefix('#') {
            return match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(ReplayFrom::Record(n)),
                _ => Err(format!(
                    "--from #N needs a record number of 1 or more, not {s:?}"
                )),
            };
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .ok()
                .and_then(|ms| ms.checked_mul(1_000_000))
                .map(ReplayFrom::TimeNs)
                .ok_or_else(|| format!("--from {s}: Unix milliseconds out of range"));
        }
        rfc3339_ns(s).map(ReplayFrom::TimeNs).ok_or_else(|| {
            format!(
                "--from takes an RFC 3339 time (2026-11-27T16:00:00Z), Unix milliseconds \
                 or a record number #N, not {s:?}"
            )
        })
    }
}

impl fmt::Display for ReplayFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayFrom::TimeNs(ns) => write!(f, "ts >= {ns}"),
            ReplayFrom::Record(n) => write!(f, "record #{n}"),
        }
    }
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS[.fraction](Z|z|+HH:MM|-HH:MM)` as Unix ns,
/// `None` if it is not one or is before 1970.
fn rfc3339_ns(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then_some(())?;
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let punctuation = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if punctuation.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let ok = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !ok {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, d) in fraction.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
            }
        }
        rest = &fraction[digits..];
    }
    let offset_s = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |i: usize| i64::from(digits[i] - b'0');
            let (h, m) = (d(0) * 10 + d(1), d(2) * 10 + d(3));
            if h > 23 || m > 59 {
                return None;
            }
            let offset = (h * 60 + m) * 60;
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let ns = seconds.checked_mul(1_000_000_000)?.checked_add(nanos)?;
    u64::try_from(ns).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian), by the
/// usual era arithmetic: eras of 400 years, years starting in March.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        assert_eq!("#5".parse(), Ok(ReplayFrom::Record(5)));
        assert_eq!(
            "1763700000123".parse(),
            Ok(ReplayFrom::TimeNs(1_763_700_000_123_000_000))
        );
        assert_eq!("1970-01-01T00:00:00Z".parse(), Ok(ReplayFrom::TimeNs(0)));
        // `date -u -d 2026-11-27T16:00:00Z +%s` = 1795795200
        assert_eq!(
            "2026-11-27T16:00:00.5Z".parse(),
            Ok(ReplayFrom::TimeNs(1_795_795_200_500_000_000))
        );
        assert_eq!(
            "2026-11-27T17:00:00+01:00".parse(),
            Ok(ReplayFrom::TimeNs(1_795_795_200_000_000_000))
        );
        assert_eq!(
            "2024-02-29T00:00:00Z".parse(),
            Ok(ReplayFrom::TimeNs(1_709_164_800_000_000_000))
        );
    }

    #[test]
    fn refuses_what_is_not_a_start() {
        for bad in [
            "#0",
            "#",
            "#x",
            "",
            "yesterday",
            "2026-11-27",
            "2026-02-30T00:00:00Z",
            "2026-11-27T16:00:00",
            "2026-11-27T16:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<ReplayFrom>().is_err(), "{bad:?} accepted");
        }
    }
}
