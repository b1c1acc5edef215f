//! Server-to-client messages, encoded once as complete WebSocket frames.
//!
//! Server frames are unmasked (RFC 6455 section 5.1), so the same bytes can be
//! written to every socket: each message is built as one [`Bytes`] holding the
//! frame header and the JSON text, and shared by reference among subscribers.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;

use crate::record::JsonMap;

/// Room reserved in front of a payload for the longest frame header.
const MAX_HEADER: usize = 10;

const OP_TEXT: u8 = 0x1;
/// Set on the first frame of a compressed message (permessage-deflate).
const RSV1: u8 = 0x40;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;

/// Builds one frame: write the payload into [`FrameBuilder::payload`], then
/// [`FrameBuilder::finish`] puts the header in front without copying.
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + payload);
        buf.resize(MAX_HEADER, 0);
        Self { buf }
    }

    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Seals the frame with a FIN header for `opcode`.
    pub fn finish(self, opcode: u8) -> Bytes {
        let mut buf = self.buf;
        let len = buf.len() - MAX_HEADER;
        let mut head = [0u8; MAX_HEADER];
        head[0] = 0x80 | opcode;
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let start = MAX_HEADER - head_len;
        buf[start..MAX_HEADER].copy_from_slice(&head[..head_len]);
        Bytes::from(buf).slice(start..)
    }

    pub fn finish_text(self) -> Bytes {
        self.finish(OP_TEXT)
    }

    /// A text frame whose payload is compressed (RSV1 set, RFC 7692).
    pub fn finish_deflated_text(self) -> Bytes {
        self.finish(RSV1 | OP_TEXT)
    }
}

/// A text frame holding `value` serialized as JSON.
pub fn json_frame<T: Serialize>(value: &T) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(128);
    // Serializing our own message types into a Vec cannot fail.
    serde_json::to_writer(frame.payload(), value).expect("serializing a wire message");
    frame.finish_text()
}

/// Error codes of `error` replies (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    Forbidden,
    Limit,
    RateLimited,
    Unsupported,
}

/// WebSocket close codes tickcast sends (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    Normal = 1000,
    GoingAway = 1001,
    PolicyViolation = 1008,
    TooBig = 1009,
    InternalError = 1011,
    TryAgainLater = 1013,
}

#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    channels: &'a [String],
}

/// `{"type":"subscribed",...}` or `{"type":"unsubscribed",...}`.
pub fn channels_reply(kind: &'static str, id: Option<i64>, channels: &[String]) -> Bytes {
    json_frame(&Reply { kind, id, channels })
}

pub fn pong(id: Option<i64>) -> Bytes {
    #[derive(Serialize)]
    struct Pong {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
    }
    json_frame(&Pong { kind: "pong", id })
}

pub fn error(id: Option<i64>, code: ErrorCode, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        code: ErrorCode,
        message: &'a str,
    }
    json_frame(&Error {
        kind: "error",
        id,
        code,
        message,
    })
}

/// `{"type":"snapshot",...}`; `resync` marks a snapshot that replaces a
/// requested resume.
pub fn snapshot(channel: &str, seq: u64, epoch: &str, data: &JsonMap, resync: bool) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(96 + channel.len());
    let out = frame.payload();
    // Channel names and epochs are validated to need no JSON escaping.
    let _ = write!(
        out,
        r#"{{"type":"snapshot","channel":"{channel}","seq":{seq},"epoch":"{epoch}","#
    );
    if resync {
        out.extend_from_slice(br#""resync":true,"#);
    }
    out.extend_from_slice(br#""data":"#);
    serde_json::to_writer(&mut *out, data).expect("serializing a JSON map");
    out.push(b'}');
    frame.finish_text()
}

/// `{"type":"update",...}` around an already-serialized `data` object.
pub fn update(channel: &str, seq: u64, prev: u64, ts: u64, data_json: &[u8]) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(96 + channel.len() + data_json.len());
    let out = frame.payload();
    let _ = write!(
        out,
        r#"{{"type":"update","channel":"{channel}","seq":{seq},"prev":{prev},"ts":{ts},"data":"#
    );
    out.extend_from_slice(data_json);
    out.push(b'}');
    frame.finish_text()
}

/// A close frame with `code` and a short reason (at most 123 bytes are kept).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    close_with_code(code as u16, reason)
}

/// [`close`] for codes outside [`CloseCode`] (such as 1002, protocol error).
pub fn close_with_code(code: u16, reason: &str) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(2 + reason.len());
    let out = frame.payload();
    out.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    frame.finish(OP_CLOSE)
}

/// A close frame echoing a client's close payload as-is.
pub fn close_raw(payload: &[u8]) -> Bytes {
    control(OP_CLOSE, payload)
}

/// The pong a ping frame obliges us to send.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control(OP_PONG, payload)
}

fn control(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = FrameBuilder::with_capacity(payload.len());
    frame
        .payload()
        .extend_from_slice(&payload[..payload.len().min(125)]);
    frame.finish(opcode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let (len, start) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), start + len, "length field matches the payload");
        (frame[0], &frame[start..])
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        for len in [0, 125, 126, 65535, 65536, 70000] {
            let mut f = FrameBuilder::with_capacity(len);
            f.payload().resize(MAX_HEADER + len, b'x');
            let bytes = f.finish_text();
            let (b0, payload) = split(&bytes);
            assert_eq!(b0, 0x81);
            assert_eq!(payload.len(), len);
            assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
        }
    }

    #[test]
    fn messages_are_the_protocol_json() {
        let frame = update("quotes.A", 5, 4, 9, br#"{"bid":1}"#);
        let v: serde_json::Value = serde_json::from_slice(split(&frame).1).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"update","channel":"quotes.A","seq":5,"prev":4,"ts":9,"data":{"bid":1}})
        );
        let mut data = JsonMap::new();
        data.insert("x".into(), 1.into());
        let frame = snapshot("a.b", 3, "e1", &data, true);
        let v: serde_json::Value = serde_json::from_slice(split(&frame).1).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"snapshot","channel":"a.b","seq":3,"epoch":"e1","resync":true,"data":{"x":1}})
        );
        let frame = error(Some(7), ErrorCode::BadRequest, "say \"what\"");
        let v: serde_json::Value = serde_json::from_slice(split(&frame).1).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert_eq!(v["message"], "say \"what\"");
        let frame = close(CloseCode::TryAgainLater, "slow");
        assert_eq!(
            split(&frame),
            (0x88, &[0x03, 0xF5, b's', b'l', b'o', b'w'][..])
        );
    }
}
