//! The feed-record parser: `LineReader` (splitting a producer's byte stream
//! into lines) and `parse_line` (one line to a record or a rejection).
//!
//! Input: a producer's byte stream (NDJSON), cut into reads by a schedule
//! seeded from the bytes. Checked:
//! - no panic;
//! - the lines are exactly those of a plain split on LF (first-line BOM and
//!   one trailing CR removed, over-long lines reported as too long), with
//!   the real 1 MiB limit and with a tiny one, however the reads are cut;
//! - the line buffer never grows past about twice the line limit;
//! - each line's outcome agrees with serde_json: JSON that serde_json
//!   rejects is never accepted, and an accepted record's channel, data keys
//!   and ts are what the line says.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tickcast::record::{self, LineOutcome, LineReader, RawLine, RejectReason, MAX_LINE_BYTES};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

use crate::meter;

/// The depth limit the target parses with (the server's default).
const DEPTH: usize = tickcast::json_depth::DEFAULT_LIMIT;
use crate::schedule::{block_on, Schedule};

/// One line as the model expects it.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Bytes(Vec<u8>),
    TooLong,
}

pub fn check(data: &[u8]) {
    let tiny_limit = usize::from(data.first().copied().unwrap_or(0) % 24);
    for max_line in [MAX_LINE_BYTES, tiny_limit] {
        let lines = split_lines(data, max_line);
        assert_eq!(
            lines,
            model(data, max_line),
            "lines with max_line {max_line}"
        );
        if max_line == MAX_LINE_BYTES {
            for (i, line) in lines.iter().enumerate() {
                check_line(i as u64 + 1, line);
            }
        }
    }
}

/// The one place the target calls tickcast's `LineReader`: every line of
/// `data`, read through scheduled pieces, with the line buffer's size checked.
fn split_lines(data: &[u8], max_line: usize) -> Vec<Line> {
    let pieces = Pieces {
        rest: data,
        schedule: Schedule::from_bytes(data),
        piece: 0,
    };
    let mut reader = LineReader::with_max_line(pieces, max_line);
    let mut lines = Vec::new();
    let mut expected_no = 0;
    loop {
        let (next, usage) = meter::measure(|| block_on(reader.next_line()));
        // Vec growth: at most double the line plus its CR and BOM slack.
        let bound = (2 * (max_line + 4)).max(64);
        assert!(
            usage.largest <= bound,
            "line buffer allocation of {} bytes with max_line {max_line}",
            usage.largest
        );
        let Some((line_no, raw)) = next.expect("reading from memory cannot fail") else {
            break;
        };
        expected_no += 1;
        assert_eq!(
            line_no, expected_no,
            "line numbers count from 1 without gaps"
        );
        lines.push(match raw {
            RawLine::Bytes(bytes) => Line::Bytes(bytes.clone()),
            RawLine::TooLong => Line::TooLong,
        });
    }
    lines
}

/// Lines as PROTOCOL.md defines them, written over the whole input at once.
fn model(data: &[u8], max_line: usize) -> Vec<Line> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if data.ends_with(b"\n") {
        // The LF that ends the input does not start another line.
        parts.pop();
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, mut part)| {
            if i == 0 {
                part = part.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(part);
            }
            part = part.strip_suffix(b"\r").unwrap_or(part);
            if part.len() > max_line {
                Line::TooLong
            } else {
                Line::Bytes(part.to_vec())
            }
        })
        .collect()
}

/// The one place the target calls tickcast's `parse_line`.
fn parse_one_line(line_no: u64, line: &Line) -> LineOutcome {
    match line {
        Line::Bytes(bytes) => {
            record::parse_line(line_no, RawLine::Bytes(&mut bytes.clone()), DEPTH)
        }
        Line::TooLong => record::parse_line(line_no, RawLine::TooLong, DEPTH),
    }
}

fn check_line(line_no: u64, line: &Line) {
    let outcome = parse_one_line(line_no, line);
    let Line::Bytes(bytes) = line else {
        assert!(
            matches!(&outcome, LineOutcome::Rejected(r) if r.reason == RejectReason::TooLong),
            "a too-long line gave {outcome:?}"
        );
        return;
    };
    let reference = match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => Some(value),
        // Deeper than serde_json reads: it cannot say.
        Err(e) if e.to_string().contains("recursion limit") => return,
        Err(_) => None,
    };
    match outcome {
        LineOutcome::Blank => assert!(bytes.is_empty(), "a non-empty line taken as blank"),
        LineOutcome::Rejected(rejection) => {
            assert!(!bytes.is_empty(), "an empty line rejected");
            assert_eq!(rejection.line, line_no, "rejection's line number");
            assert!(!rejection.detail.is_empty(), "a rejection without detail");
        }
        LineOutcome::Record(record) => {
            let Some(Value::Object(object)) = reference else {
                panic!(
                    "accepted {:?}, which serde_json does not read as an object",
                    String::from_utf8_lossy(bytes)
                );
            };
            assert_eq!(
                object.get("channel").and_then(Value::as_str),
                Some(record.channel.as_str()),
                "channel"
            );
            let Some(Value::Object(data)) = object.get("data") else {
                panic!("accepted a record whose data serde_json does not read as an object");
            };
            assert!(
                data.keys().eq(record.data.keys()),
                "data keys differ from serde_json's"
            );
            assert_eq!(object.get("ts").and_then(ts_of), record.ts, "ts");
        }
    }
}

/// An in-memory pipe that hands out its bytes in scheduled pieces and is
/// sometimes not ready.
struct Pieces<'a> {
    rest: &'a [u8],
    schedule: Schedule,
    /// Length of the piece being handed out (0: pick the next one).
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let chunk = match Pin::new(&mut *this).poll_fill_buf(cx) {
            Poll::Ready(Ok(chunk)) => chunk,
            other => return other.map_ok(|_| ()),
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        Pin::new(this).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for Pieces<'_> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.piece == 0 && !this.rest.is_empty() {
            if this.schedule.one_in(5) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.piece = this.schedule.read_size().min(this.rest.len());
        }
        Poll::Ready(Ok(&this.rest[..this.piece]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        assert!(amt <= this.piece, "consumed more than was handed out");
        this.rest = &this.rest[amt..];
        this.piece -= amt;
    }
}

/// The record's `ts` as PROTOCOL.md means it: an integer >= 0.
/// serde_json reads `-0` as a float; tickcast (simd-json) reads it as the
/// integer 0, which is what it means, so the oracle does too.
fn ts_of(ts: &Value) -> Option<u64> {
    ts.as_u64()
        .or_else(|| (ts.as_f64() == Some(0.0) && ts.to_string() == "-0.0").then_some(0))
}
