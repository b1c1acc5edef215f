//! The feed record (PROTOCOL.md, "Publishing: the feed record") and its line
//! parser.
//!
//! Every feed adapter reduces its input to NDJSON lines and hands them to
//! [`LineReader`] and [`parse_line`]. A bad line becomes a [`Rejection`] that
//! carries its 1-based line number and reason; the lines around it go on.

use std::io;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::channel::ChannelName;
use crate::json_depth;

/// A JSON object: channel states and merge patches.
pub type JsonMap = serde_json::Map<String, Value>;

/// Longest accepted line in bytes, terminator excluded (PROTOCOL.md).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One update for one channel, as every feed hands it to the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRecord {
    pub channel: ChannelName,
    /// A JSON Merge Patch (RFC 7396) for the channel's state.
    pub data: JsonMap,
    /// The event's own time (Unix ns), used by replay for pacing.
    pub ts: Option<u64>,
    /// When tickcast took the record in (Unix ns); stamped by the feed as it
    /// hands the record on, sent to clients as `ts`.
    pub ingest_ns: u64,
}

/// Why a line was rejected; the wire names are PROTOCOL.md's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    TooLong,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingChannel,
    BadChannel,
    MissingData,
    DataNotObject,
    BadTs,
    /// An exchange message (feed `binance:`/`coinbase:`) that is valid JSON
    /// but cannot be mapped to a record: unknown type, missing field.
    Unmapped,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        Self::TooLong,
        Self::InvalidUtf8,
        Self::InvalidJson,
        Self::NotAnObject,
        Self::MissingChannel,
        Self::BadChannel,
        Self::MissingData,
        Self::DataNotObject,
        Self::BadTs,
        Self::Unmapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingChannel => "missing_channel",
            Self::BadChannel => "bad_channel",
            Self::MissingData => "missing_data",
            Self::DataNotObject => "data_not_object",
            Self::BadTs => "bad_ts",
            Self::Unmapped => "unmapped",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected line: where, why, and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub reason: RejectReason,
    pub detail: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {} ({})", self.line, self.reason, self.detail)
    }
}

/// What one line turned into.
#[derive(Debug)]
pub enum LineOutcome {
    Record(FeedRecord),
    /// An empty line: skipped, neither accepted nor rejected.
    Blank,
    Rejected(Rejection),
}

/// One line as read by [`LineReader`]: its number and bytes, or the fact that
/// it was too long (its bytes were skipped, not buffered).
#[derive(Debug)]
pub enum RawLine<'a> {
    Bytes(&'a mut Vec<u8>),
    TooLong,
}

/// Splits a byte stream into LF-terminated lines without ever buffering more
/// than `max_line + 1` bytes: a too-long line is skipped to its end.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_line: usize,
    line_no: u64,
    at_start: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_line(inner, MAX_LINE_BYTES)
    }

    pub fn with_max_line(inner: R, max_line: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max_line,
            line_no: 0,
            at_start: true,
        }
    }

    /// Number of the last line returned (1-based).
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// The next line, or `None` at end of input. An unterminated last line is
    /// still a line; the LF that ends the input does not start another one.
    pub async fn next_line(&mut self) -> io::Result<Option<(u64, RawLine<'_>)>> {
        self.buf.clear();
        let mut too_long = false;
        let mut saw_any = false;
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                if !saw_any {
                    return Ok(None);
                }
                break;
            }
            saw_any = true;
            let (take, done) = match memchr_lf(chunk) {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                // Slack: one byte for a CR that belongs to the LF, and three
                // for a byte-order mark on the first line (both removed below).
                let slack = if self.at_start { 4 } else { 1 };
                if self.buf.len() + take > self.max_line + slack {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                break;
            }
        }
        self.line_no += 1;
        if self.at_start {
            self.at_start = false;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if too_long || self.buf.len() > self.max_line {
            return Ok(Some((self.line_no, RawLine::TooLong)));
        }
        Ok(Some((self.line_no, RawLine::Bytes(&mut self.buf))))
    }
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Turns one raw line into a record, a blank, or a rejection. `max_depth`
/// is `limits.max_json_depth` (see [`parse_record`]).
pub fn parse_line(line_no: u64, raw: RawLine<'_>, max_depth: usize) -> LineOutcome {
    let bytes = match raw {
        RawLine::TooLong => {
            return reject(
                line_no,
                RejectReason::TooLong,
                format!("line is longer than {MAX_LINE_BYTES} bytes"),
            )
        }
        RawLine::Bytes(bytes) => bytes,
    };
    if bytes.is_empty() {
        return LineOutcome::Blank;
    }
    match parse_record(bytes, max_depth) {
        Ok(record) => LineOutcome::Record(record),
        Err((reason, detail)) => reject(line_no, reason, detail),
    }
}

fn reject(line: u64, reason: RejectReason, detail: String) -> LineOutcome {
    LineOutcome::Rejected(Rejection {
        line,
        reason,
        detail,
    })
}

/// Parses one record from a line (no terminator) with simd-json; the buffer
/// is its scratch space. simd-json is built with `big-int-as-float`, so an
/// integer past u64 (a `ts` of 2^64, say) parses and is then refused as
/// `bad_ts` rather than as `invalid_json`.
///
/// A line nested deeper than `max_depth` is refused as `invalid_json`
/// before simd-json sees it (see `json_depth`): PROTOCOL.md's list of
/// reasons has no depth reason, and the detail names the limit.
pub fn parse_record(
    bytes: &mut [u8],
    max_depth: usize,
) -> Result<FeedRecord, (RejectReason, String)> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err((RejectReason::InvalidUtf8, e.to_string()));
    }
    if let Err(too_deep) = json_depth::check(bytes, max_depth) {
        return Err((RejectReason::InvalidJson, too_deep.to_string()));
    }
    // simd-json lets some malformed values through (crate::strict_json).
    crate::strict_json::check(bytes).map_err(|e| (RejectReason::InvalidJson, e))?;
    let value: Value = simd_json::serde::from_slice(bytes)
        .map_err(|e| (RejectReason::InvalidJson, e.to_string()))?;
    record_from_value(value)
}

/// Checks a parsed JSON value against the record rules.
pub fn record_from_value(value: Value) -> Result<FeedRecord, (RejectReason, String)> {
    let Value::Object(mut object) = value else {
        return Err((
            RejectReason::NotAnObject,
            format!("a record is a JSON object, not {}", kind(&value)),
        ));
    };
    let channel = match object.get("channel") {
        None => return Err((RejectReason::MissingChannel, "no \"channel\" member".into())),
        Some(Value::String(s)) => {
            ChannelName::new(s).map_err(|e| (RejectReason::BadChannel, format!("{s:?}: {e}")))?
        }
        Some(other) => {
            return Err((
                RejectReason::BadChannel,
                format!("channel must be a string, not {}", kind(other)),
            ))
        }
    };
    let data = match object.remove("data") {
        None => return Err((RejectReason::MissingData, "no \"data\" member".into())),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err((
                RejectReason::DataNotObject,
                format!("data must be an object, not {}", kind(&other)),
            ))
        }
    };
    let ts = match object.get("ts") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ts) if ts < 1 << 63 => Some(ts),
            _ => {
                return Err((
                    RejectReason::BadTs,
                    format!("ts must be an integer in 0..2^63 (Unix ns), not {n}"),
                ))
            }
        },
        Some(other) => {
            return Err((
                RejectReason::BadTs,
                format!("ts must be an integer, not {}", kind(other)),
            ))
        }
    };
    Ok(FeedRecord {
        channel,
        data,
        ts,
        ingest_ns: 0,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FeedRecord, RejectReason> {
        parse_record(&mut text.as_bytes().to_vec(), json_depth::DEFAULT_LIMIT).map_err(|(r, _)| r)
    }

    #[test]
    fn accepts_a_record_and_ignores_other_members() {
        let rec = parse(r#"{"channel":"quotes.A","data":{"bid":1.5},"ts":7,"x":1}"#).unwrap();
        assert_eq!(rec.channel.as_str(), "quotes.A");
        assert_eq!(rec.data["bid"], 1.5);
        assert_eq!(rec.ts, Some(7));
        assert!(parse(r#"{"channel":"a","data":{}}  "#)
            .unwrap()
            .ts
            .is_none());
    }

    /// Found by fuzz/ (target record): simd-json alone accepted these
    /// lines, with `ts` cut short to 16 and taken whole before the junk.
    #[test]
    fn malformed_values_are_invalid_json() {
        for line in [
            "{\"channel\":\"a\",\"data\":{},\"ts\":16\0junk}",
            "{\"channel\":\"a\",\"data\":{},\"ts\":1621765441751339000\u{6}}",
        ] {
            assert_eq!(parse(line), Err(RejectReason::InvalidJson), "{line:?}");
        }
    }

    #[test]
    fn each_reason_is_detected() {
        assert_eq!(parse("{\"channel\":"), Err(RejectReason::InvalidJson));
        assert_eq!(
            parse(r#"{"channel":"a","data":{}} x"#),
            Err(RejectReason::InvalidJson)
        );
        assert_eq!(
            parse(r#"{"channel":"a","data":{"x":NaN}}"#),
            Err(RejectReason::InvalidJson)
        );
        assert_eq!(parse("[1]"), Err(RejectReason::NotAnObject));
        assert_eq!(parse(r#"{"data":{}}"#), Err(RejectReason::MissingChannel));
        assert_eq!(
            parse(r#"{"channel":"a.*","data":{}}"#),
            Err(RejectReason::BadChannel)
        );
        assert_eq!(
            parse(r#"{"channel":3,"data":{}}"#),
            Err(RejectReason::BadChannel)
        );
        assert_eq!(parse(r#"{"channel":"a"}"#), Err(RejectReason::MissingData));
        assert_eq!(
            parse(r#"{"channel":"a","data":[]}"#),
            Err(RejectReason::DataNotObject)
        );
        for ts in ["1.5", "-1", "1e9", "\"1\"", "9223372036854775808", "null"] {
            let line = format!(r#"{{"channel":"a","data":{{}},"ts":{ts}}}"#);
            assert_eq!(parse(&line), Err(RejectReason::BadTs), "ts {ts}");
        }
        assert_eq!(
            parse_record(
                &mut b"{\"channel\":\"a\xff\",\"data\":{}}".to_vec(),
                json_depth::DEFAULT_LIMIT
            )
            .map_err(|e| e.0),
            Err(RejectReason::InvalidUtf8)
        );
    }

    fn record_nested(depth: usize) -> Vec<u8> {
        // The record object and `data` are two levels; "x" holds the rest.
        let inner = depth - 2;
        format!(
            r#"{{"channel":"a","data":{{"x":{}{}}}}}"#,
            "[".repeat(inner),
            "]".repeat(inner)
        )
        .into_bytes()
    }

    #[test]
    fn too_deep_lines_are_invalid_json_naming_the_limit() {
        let rec = parse_record(&mut record_nested(10), 10).expect("at the limit");
        assert_eq!(rec.channel.as_str(), "a");
        let (reason, detail) = parse_record(&mut record_nested(11), 10).unwrap_err();
        assert_eq!(reason, RejectReason::InvalidJson);
        assert!(
            detail.contains("nested deeper than limits.max_json_depth (10)"),
            "{detail}"
        );
        // A million levels: refused by the scan, never handed to simd-json.
        let outcome = parse_line(
            7,
            RawLine::Bytes(&mut record_nested(1_000_000)),
            json_depth::DEFAULT_LIMIT,
        );
        let LineOutcome::Rejected(rejection) = outcome else {
            panic!("rejected expected, got {outcome:?}")
        };
        assert_eq!(
            (rejection.line, rejection.reason),
            (7, RejectReason::InvalidJson)
        );
    }

    async fn read_all(input: &[u8], max: usize) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut reader = LineReader::with_max_line(input, max);
        let mut out = Vec::new();
        while let Some((no, raw)) = reader.next_line().await.unwrap() {
            out.push((
                no,
                match raw {
                    RawLine::Bytes(b) => Some(b.clone()),
                    RawLine::TooLong => None,
                },
            ));
        }
        out
    }

    #[tokio::test]
    async fn line_reader_handles_bom_crlf_blank_and_long_lines() {
        let input = b"\xEF\xBB\xBFab\r\n\ncdefgh\nij";
        let lines = read_all(input, 4).await;
        assert_eq!(
            lines,
            vec![
                (1, Some(b"ab".to_vec())),
                (2, Some(vec![])),
                (3, None),
                (4, Some(b"ij".to_vec())),
            ]
        );
        // A CR before LF is not counted against the limit; a final LF ends input.
        assert_eq!(
            read_all(b"abcd\r\n", 4).await,
            vec![(1, Some(b"abcd".to_vec()))]
        );
        assert_eq!(read_all(b"abcde\n", 4).await, vec![(1, None)]);
        assert!(read_all(b"", 4).await.is_empty());
    }
}
