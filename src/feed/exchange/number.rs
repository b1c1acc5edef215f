//! Exchange numbers and times as record values.
//!
//! Exchanges send prices and sizes as decimal strings ("61837.63000000");
//! records carry them as JSON numbers with the trailing zeros gone (the
//! shortest text that reads back as the same `f64`; whole numbers as
//! integers), as the converted feeds in the data README do. Book price
//! *keys* stay the exchange's own strings.

use serde_json::{Number, Value};

/// Whole numbers below this are written as integers ("36.00" -> 36).
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0; // 2^53

/// A decimal string as a JSON number; `None` if it is not a finite number.
pub fn decimal(text: &str) -> Option<Value> {
    let parsed: f64 = text.trim().parse().ok()?;
    if !parsed.is_finite() {
        return None;
    }
    if parsed.fract() == 0.0 && parsed.abs() < EXACT_INTEGERS {
        return Some(Value::Number(Number::from(parsed as i64)));
    }
    Number::from_f64(parsed).map(Value::Number)
}

/// A size: `Some(None)` for zero (a deleted level), `None` if not a
/// number or negative.
pub fn size(text: &str) -> Option<Option<Value>> {
    let value = decimal(text)?;
    let v = value.as_f64()?;
    if v < 0.0 {
        None
    } else if v == 0.0 {
        Some(None)
    } else {
        Some(Some(value))
    }
}

/// Milliseconds since the epoch as nanoseconds (saturating).
pub fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// An RFC 3339 UTC time as Coinbase writes it (`2021-04-17T16:43:30.244075Z`)
/// to Unix nanoseconds; `None` for anything else.
pub fn rfc3339_utc_ns(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let s = text.get(from..to)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let rest = &text[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            (&r[..digits], &r[digits..])
        }
        None => ("", rest),
    };
    if zone != "Z" || fraction.len() > 9 {
        return None;
    }
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u64, |n, c| n * 10 + u64::from(c - b'0'));
    let days = u64::try_from(days_from_civil(year as i64, month as i64, day as i64)).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (the civil-from-days
/// method: count 400-year eras from a March-based year).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_lose_trailing_zeros_only() {
        assert_eq!(decimal("61837.63000000").unwrap().to_string(), "61837.63");
        assert_eq!(decimal("0.35130000").unwrap().to_string(), "0.3513");
        assert_eq!(decimal("36.00").unwrap().to_string(), "36");
        assert!(decimal("abc").is_none());
        assert!(decimal("inf").is_none());
        assert_eq!(size("0.00000000"), Some(None));
        assert!(size("-1").is_none());
    }

    #[test]
    fn coinbase_times_read_to_the_nanosecond() {
        assert_eq!(
            rfc3339_utc_ns("2021-04-17T16:43:30.244075Z"),
            Some(1_618_677_810_244_075_000)
        );
        assert_eq!(rfc3339_utc_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_utc_ns("2021-04-17 16:43:30Z"), None);
        assert_eq!(rfc3339_utc_ns("2021-04-17T16:43:30+02:00"), None);
    }
}
