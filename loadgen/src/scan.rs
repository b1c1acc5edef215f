//! A small, allocation-free scanner for the server's messages.
//!
//! The loadgen shares the machine with the server it measures, so it must not spend a full JSON
//! parse on every delivery. [`scan`] walks the top-level object once, picks out the handful of
//! members the loadgen needs (`type`, `channel`, `seq`, `prev`, `ts`, `resync`, `id`, and
//! `sent_ns`/`act_ns` one level down inside `data`) and skips everything else without building
//! values. Member order and whitespace do not matter. Anything it cannot read is reported as
//! [`ScanError`], and the caller falls back to `serde_json` (or counts a malformed message).

/// The message kinds of protocol v1 that the loadgen tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Update,
    Snapshot,
    Subscribed,
    Unsubscribed,
    Error,
    Pong,
    /// A `type` this loadgen does not know (or none at all).
    Other,
}

impl Kind {
    fn from_name(name: &str) -> Kind {
        match name {
            "update" => Kind::Update,
            "snapshot" => Kind::Snapshot,
            "subscribed" => Kind::Subscribed,
            "unsubscribed" => Kind::Unsubscribed,
            "error" => Kind::Error,
            "pong" => Kind::Pong,
            _ => Kind::Other,
        }
    }
}

/// The fields of one server message that the loadgen uses. Strings borrow from the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Msg<'a> {
    pub kind: Kind,
    /// Raw channel name as it appears between the quotes (valid names need no escapes).
    pub channel: Option<&'a str>,
    pub seq: Option<u64>,
    pub prev: Option<u64>,
    pub ts: Option<u64>,
    pub id: Option<u64>,
    pub resync: bool,
    /// A snapshot's `epoch` (raw, as written between the quotes).
    pub epoch: Option<&'a str>,
    /// `data.sent_ns`: the publisher's scheduled send time.
    pub sent_ns: Option<u64>,
    /// `data.act_ns`: the publisher's actual send time.
    pub act_ns: Option<u64>,
}

/// Why a message could not be scanned; the byte offset helps when reading a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for ScanError {}

/// Scans one server message (a JSON object). See the module doc.
pub fn scan(text: &[u8]) -> Result<Msg<'_>, ScanError> {
    let mut c = Cursor { s: text, i: 0 };
    let mut msg = Msg {
        kind: Kind::Other,
        channel: None,
        seq: None,
        prev: None,
        ts: None,
        id: None,
        resync: false,
        epoch: None,
        sent_ns: None,
        act_ns: None,
    };
    c.expect(b'{')?;
    if c.peek_after_ws() == Some(b'}') {
        return Ok(msg);
    }
    loop {
        let key = c.string()?;
        c.expect(b':')?;
        match key {
            b"type" => msg.kind = Kind::from_name(c.str_value()?),
            b"channel" => msg.channel = Some(c.str_value()?),
            b"seq" => msg.seq = Some(c.number()?),
            b"prev" => msg.prev = Some(c.number()?),
            b"ts" => msg.ts = Some(c.number()?),
            b"id" => msg.id = c.opt_number()?,
            b"resync" => msg.resync = c.literal_true()?,
            b"epoch" if c.peek_after_ws() == Some(b'"') => msg.epoch = Some(c.str_value()?),
            b"data" if c.peek_after_ws() == Some(b'{') => c.data_members(&mut msg)?,
            _ => c.skip_value()?,
        }
        if !c.comma_or_end(b'}')? {
            return Ok(msg);
        }
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T, ScanError> {
        Err(ScanError { at: self.i, what })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn peek_after_ws(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), ScanError> {
        if self.peek_after_ws() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            self.err("unexpected character")
        }
    }

    /// After a member: `true` if a comma follows (more members), `false` at the closing `end`.
    fn comma_or_end(&mut self, end: u8) -> Result<bool, ScanError> {
        match self.peek_after_ws() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(b) if b == end => {
                self.i += 1;
                Ok(false)
            }
            _ => self.err("expected ',' or end of object"),
        }
    }

    /// A string's raw bytes between the quotes (escapes are skipped over, not decoded).
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        let start = self.i;
        while let Some(&b) = self.s.get(self.i) {
            match b {
                b'"' => {
                    self.i += 1;
                    return Ok(&self.s[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
        self.err("unterminated string")
    }

    fn str_value(&mut self) -> Result<&'a str, ScanError> {
        let raw = self.string()?;
        std::str::from_utf8(raw).or_else(|_| self.err("string is not UTF-8"))
    }

    /// A non-negative number. Integers are read exactly; a number written with a fraction or an
    /// exponent (JavaScript servers may turn a big integer into a double) is rounded.
    fn number(&mut self) -> Result<u64, ScanError> {
        self.skip_ws();
        let start = self.i;
        let mut value: u64 = 0;
        let mut overflow = false;
        while let Some(&b) = self.s.get(self.i) {
            if !b.is_ascii_digit() {
                break;
            }
            match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
            {
                Some(v) => value = v,
                None => overflow = true,
            }
            self.i += 1;
        }
        if self.i == start {
            return self.err("expected a non-negative number");
        }
        if let Some(b'.' | b'e' | b'E') = self.s.get(self.i) {
            while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("x");
            return match text.parse::<f64>() {
                Ok(f) if (0.0..1.8e19).contains(&f) => Ok(f.round() as u64),
                _ => self.err("number out of range"),
            };
        }
        if overflow {
            return self.err("number out of range");
        }
        Ok(value)
    }

    /// A number if the value is one, else `None` with the value skipped.
    fn opt_number(&mut self) -> Result<Option<u64>, ScanError> {
        let start = self.i;
        match self.number() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                self.i = start;
                self.skip_value()?;
                Ok(None)
            }
        }
    }

    fn literal_true(&mut self) -> Result<bool, ScanError> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        if rest.starts_with(b"true") {
            self.i += 4;
            Ok(true)
        } else {
            self.skip_value()?;
            Ok(false)
        }
    }

    /// The members of `data`: picks `sent_ns` and `act_ns`, skips the rest.
    fn data_members(&mut self, msg: &mut Msg<'a>) -> Result<(), ScanError> {
        self.expect(b'{')?;
        if self.peek_after_ws() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            match key {
                b"sent_ns" => msg.sent_ns = self.opt_number()?,
                b"act_ns" => msg.act_ns = self.opt_number()?,
                _ => self.skip_value()?,
            }
            if !self.comma_or_end(b'}')? {
                return Ok(());
            }
        }
    }

    /// Skips one JSON value of any kind without building it.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        match self.peek_after_ws() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(&b) = self.s.get(self.i) {
                    match b {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                self.err("unterminated object or array")
            }
            Some(_) => {
                let start = self.i;
                while let Some(&b) = self.s.get(self.i) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return self.err("expected a value");
                }
                Ok(())
            }
            None => self.err("unexpected end of message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_update_in_protocol_order() {
        let m = scan(
            br#"{"type":"update","channel":"quotes.AAPL","seq":1043,"prev":1042,"ts":1763700000123456789,"data":{"bid":101.25,"sent_ns":1763700000000000001,"act_ns":1763700000000000002}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Update);
        assert_eq!(m.channel, Some("quotes.AAPL"));
        assert_eq!((m.seq, m.prev), (Some(1043), Some(1042)));
        assert_eq!(m.ts, Some(1_763_700_000_123_456_789));
        assert_eq!(m.sent_ns, Some(1_763_700_000_000_000_001));
        assert_eq!(m.act_ns, Some(1_763_700_000_000_000_002));
    }

    #[test]
    fn order_whitespace_and_nesting_do_not_matter() {
        let m = scan(
            br#" { "data" : { "x" : {"sent_ns": 5, "s":"}\"{"}, "arr":[1,[2,{"a":"]"}]], "sent_ns" : 7 } ,
                 "prev": 9 , "seq" :10, "extra":[{"seq":99}], "channel":"a.b", "type" : "update" } "#,
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Update);
        assert_eq!(m.channel, Some("a.b"));
        assert_eq!((m.seq, m.prev, m.sent_ns), (Some(10), Some(9), Some(7)));
        assert_eq!(m.ts, None);
    }

    #[test]
    fn reads_snapshot_resync_and_replies() {
        let m = scan(
            br#"{"type":"snapshot","channel":"q.A","seq":4,"epoch":"7f","resync":true,"data":{}}"#,
        )
        .unwrap();
        assert_eq!((m.kind, m.seq, m.resync), (Kind::Snapshot, Some(4), true));
        assert_eq!(m.epoch, Some("7f"));
        let m = scan(br#"{"type":"subscribed","id":3,"channels":["q.*"]}"#).unwrap();
        assert_eq!((m.kind, m.id), (Kind::Subscribed, Some(3)));
        let m = scan(br#"{"type":"error","id":null,"code":"limit","message":"x"}"#).unwrap();
        assert_eq!((m.kind, m.id), (Kind::Error, None));
        assert_eq!(scan(b"{}").unwrap().kind, Kind::Other);
    }

    #[test]
    fn doubles_from_javascript_servers_are_rounded() {
        let m =
            scan(br#"{"type":"update","seq":1,"prev":0,"data":{"sent_ns":1.7637e18}}"#).unwrap();
        assert_eq!(m.sent_ns, Some(1_763_700_000_000_000_000));
        let m = scan(br#"{"type":"update","seq":1,"prev":0,"data":{"sent_ns":-3}}"#).unwrap();
        assert_eq!(m.sent_ns, None, "a negative stamp is ignored, not misread");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            br#"{"type""#,
            br#"{"type":"update""#,
            br#"{"seq":-1}"#,
            br#"{"seq":99999999999999999999999}"#,
            br#"{"data":{"a":[1,2}"#,
            br#"{"channel":"unterminated}"#,
            br#"{"a":1 "b":2}"#,
        ] {
            assert!(
                scan(bad).is_err(),
                "{:?} should not scan",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
