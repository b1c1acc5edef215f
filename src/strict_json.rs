//! A pass over JSON text before simd-json parses it, refusing what simd-json
//! would wrongly accept (found by fuzz/): it ends a number or literal at a
//! NUL byte and skips what follows (`{"id":9\0junk}` reads as `{"id":9}`),
//! and takes anything after a number of 19 or more digits
//! (`"ts":1617647603424944900&x` reads as the number). Either way a corrupt
//! line or message would be taken as a valid one with the wrong value.
//!
//! Only values outside strings are checked here (each must be `true`,
//! `false`, `null` or a number by RFC 8259's grammar), plus raw control
//! bytes inside strings; structure is left to simd-json.

/// Bytes that end a bare value (structure, whitespace, a string's quote).
fn ends_value(b: u8) -> bool {
    matches!(
        b,
        b'{' | b'}' | b'[' | b']' | b':' | b',' | b' ' | b'\t' | b'\n' | b'\r' | b'"'
    )
}

/// `Err` with a reason if `text` holds a value or byte JSON does not allow.
pub fn check(text: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'"' {
            i += 1;
            while i < text.len() && text[i] != b'"' {
                match text[i] {
                    b'\\' => i = escape(text, i)?,
                    c if c < 0x20 => {
                        return Err(format!("raw control byte 0x{c:02x} at byte {}", i + 1));
                    }
                    _ => i += 1,
                }
            }
            i += 1;
        } else if ends_value(b) {
            i += 1;
        } else {
            let start = i;
            while i < text.len() && !ends_value(text[i]) {
                i += 1;
            }
            let value = &text[start..i];
            if !matches!(value, b"true" | b"false" | b"null") && !is_number(value) {
                return Err(format!("invalid value at byte {}", start + 1));
            }
        }
    }
    Ok(())
}

/// Checks the escape whose backslash is at `at` and returns the index just
/// past it. simd-json reads a lone UTF-16 surrogate (`"\uD888"`) as if it
/// were text, which serde_json and browsers' JSON.parse-then-encode paths
/// do not agree on; a string tickcast stores must be valid Unicode.
fn escape(text: &[u8], at: usize) -> Result<usize, String> {
    let bad = || Err(format!("invalid escape at byte {}", at + 1));
    match text.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
        Some(b'u') => {
            let Some(unit) = hex4(text, at + 2) else {
                return bad();
            };
            match unit {
                0xD800..=0xDBFF => {
                    let low = (text.get(at + 6..at + 8) == Some(b"\\u"))
                        .then(|| hex4(text, at + 8))
                        .flatten();
                    match low {
                        Some(0xDC00..=0xDFFF) => Ok(at + 12),
                        _ => Err(format!("unpaired UTF-16 surrogate at byte {}", at + 1)),
                    }
                }
                0xDC00..=0xDFFF => Err(format!("unpaired UTF-16 surrogate at byte {}", at + 1)),
                _ => Ok(at + 6),
            }
        }
        _ => bad(),
    }
}

/// The four hex digits at `at` as a number.
fn hex4(text: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn is_number(s: &[u8]) -> bool {
    let digits = |i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    if s.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(&mut i) {
        return false;
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_json_passes() {
        for text in [
            r#"{"op":"subscribe","id":1,"channels":["quotes.*"],"max_hz":2.5e-1}"#,
            r#"{"channel":"a.b","data":{"x":-0,"y":[true,false,null],"z":"9\"\\&\u0000"},"ts":1617647603424944900}"#,
            " [ 0 , -1.5E+3 , 18446744073709551616 ] \r\n",
            "{\"s\":\"tab\\tand caf\u{e9}\"}",
            r#"["\uD83D\uDE00 \u00e9 \/ \b\f\n\r\t"]"#,
        ] {
            assert_eq!(check(text.as_bytes()), Ok(()), "{text}");
        }
    }

    /// The inputs simd-json accepted (from fuzz/seeds/*/regress-*), and
    /// values the grammar refuses.
    #[test]
    fn what_simd_json_let_through_is_refused() {
        for text in [
            "{\"op\":\"ping\",\"id\":9\0\0&160546&\0}",
            "{\"since\":{\"q.A\":104184467407370955161&62}}",
            "{\"ts\":1621765441751339000\u{6}}",
            "[true\0]",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[+1]",
            "[nul]",
            "[\"a\u{1}b\"]",
            r#"{"po":"srbscribe","id":1,"channels\uD888":[]}"#,
            r#"["\uDC00"]"#,
            r#"["\uD800\u0041"]"#,
            r#"["\uD800"]"#,
            r#"["\x41"]"#,
            r#"["\u12G4"]"#,
            r#"["\u12"]"#,
        ] {
            assert!(check(text.as_bytes()).is_err(), "{text:?}");
        }
    }
}
