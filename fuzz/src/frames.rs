//! The WebSocket frame reader (`tickcast::session::frames`, RFC 6455
//! section 5.2) against a plain reference parser.
//!
//! Input: byte 0 picks `max_payload` (low bits) and whether the connection
//! agreed to permessage-deflate (high bit), byte 1 seeds the read schedule and
//! how much of the stream arrives as read-ahead (bytes hyper read past the
//! upgrade); the rest is what the client sent. Checked:
//! - no panic, and the reader ends (no endless poll loop);
//! - the frames and the final error are exactly the reference parser's,
//!   however the bytes are cut into reads and whatever reads would block;
//! - no frame's payload is over `max_payload`;
//! - the reader never allocates more than one frame's worth at a time;
//! - with deflate, RSV1 is read only on a message's first frame, and a
//!   compressed payload inflates to at most `max_payload` bytes or is
//!   refused (`tickcast::deflate::inflate`), never more.

use std::io;

use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tickcast::session::frames::{FrameError, FrameReader, OpCode, ReadSocket};
use tickcast::session::watch::Activity;

use crate::meter;
use crate::schedule::{block_on, Schedule};

/// Limits worth probing: 0, the 7-bit / 16-bit length edges, the server's
/// default 64 KiB.
const MAX_PAYLOADS: [usize; 8] = [0, 1, 125, 126, 127, 65_535, 65_536, 64 * 1024 + 1];

/// Bytes the reader may hold beyond the payload: the largest header (14)
/// and its first-read reserve (512, `FIRST_READ` in frames.rs).
const SLACK: usize = 14 + 512;

/// The header `bytes` allocates when a payload is first split off a buffer
/// (its shared state: the vector's parts and a reference count, 40 bytes
/// on 64-bit), rounded up.
const SHARED_HEADER: usize = 64;

pub fn check(data: &[u8]) {
    let [pick, seed, stream @ ..] = data else {
        return;
    };
    let max_payload = MAX_PAYLOADS[usize::from(*pick & 0x7F) % MAX_PAYLOADS.len()];
    let deflate = pick & 0x80 != 0;
    let ahead_len = stream.len().min(usize::from(seed >> 5) * 3);
    let (ahead, rest) = stream.split_at(ahead_len);
    let want = reference(stream, max_payload, deflate);
    // Which frames came compressed, by index: made before the meter with
    // room for every frame, so noting one allocates nothing the meter
    // would blame on the reader.
    let mut compressed = Vec::with_capacity(want.frames.len());

    let socket = Chunked {
        state: Mutex::new((rest, Schedule::new(u64::from(*seed)), false)),
    };
    let mut seen = 0;
    let (end, usage) = meter::measure(|| {
        block_on(read_all(
            socket,
            ahead,
            (max_payload, deflate),
            |fin, opcode, rsv1, payload| {
                assert!(payload.len() <= max_payload, "payload over max_payload");
                let Some(expected) = want.frames.get(seen) else {
                    panic!("frame {seen} read; the reference ends before it");
                };
                assert_eq!(
                    (fin, opcode, rsv1),
                    (expected.fin, expected.opcode, expected.rsv1),
                    "frame {seen}"
                );
                if rsv1 {
                    compressed.push(seen);
                }
                assert!(payload == &expected.payload[..], "payload of frame {seen}");
                seen += 1;
            },
        ))
    });
    assert_eq!(seen, want.frames.len(), "frames read");
    assert_eq!(end, want.end, "how reading ended");
    let one_frame = max_payload.max(ahead.len()) + SLACK;
    assert!(
        usage.largest <= one_frame,
        "an allocation of {} bytes; one frame needs at most {one_frame}",
        usage.largest
    );
    assert!(
        usage.peak <= 2 * one_frame + SHARED_HEADER,
        "{} bytes live at once; at most {} expected (two frame buffers while one is copied, \
         and the header of a split buffer)",
        usage.peak,
        2 * one_frame + SHARED_HEADER
    );
    // Outside the meter: the thread's inflater is made on first use.
    for index in compressed {
        // The reader's payload equals the reference's (checked above).
        // Err: too large (1009) or not deflate data (1007).
        let payload = &want.frames[index].payload;
        if let Ok(message) = tickcast::deflate::inflate(payload, max_payload) {
            assert!(message.len() <= max_payload, "inflated past the bound");
        }
    }
}

/// The one place the target calls tickcast's frame reader: reads frames
/// until an error, handing each to `on_frame`, and returns that error.
async fn read_all(
    socket: Chunked<'_>,
    ahead: &[u8],
    (max_payload, deflate): (usize, bool),
    mut on_frame: impl FnMut(bool, OpCode, bool, &[u8]),
) -> End {
    let mut reader = FrameReader::new(socket, ahead);
    let activity = Activity::default();
    loop {
        match reader.read_frame(&activity, max_payload, deflate).await {
            Ok(frame) => on_frame(frame.fin, frame.opcode, frame.compressed, &frame.payload),
            Err(FrameError::Eof) => return End::Eof,
            Err(FrameError::TooLarge(len)) => return End::TooLarge(len),
            Err(FrameError::Protocol(_)) => return End::Protocol,
            Err(FrameError::Io(e)) => panic!("the test socket never fails, got {e}"),
        }
    }
}

/// How a stream of frames ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The bytes ran out (between frames or inside one).
    Eof,
    TooLarge(u64),
    Protocol,
}

struct Expected {
    fin: bool,
    opcode: OpCode,
    rsv1: bool,
    payload: Vec<u8>,
}

struct Reference {
    frames: Vec<Expected>,
    end: End,
}

/// RFC 6455 section 5.2, written for clarity over the whole stream at once.
fn reference(mut bytes: &[u8], max_payload: usize, deflate: bool) -> Reference {
    let mut frames = Vec::new();
    let end = loop {
        let [b0, b1, rest @ ..] = bytes else {
            break End::Eof;
        };
        // RSV2 and RSV3 must be 0 (section 5.2); RSV1 too unless
        // permessage-deflate was agreed (RFC 7692 section 6).
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && !deflate) {
            break End::Protocol;
        }
        let opcode = match b0 & 0x0F {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => break End::Protocol,
        };
        // RSV1 marks a message's first frame: never a control or
        // continuation frame (RFC 7692 section 6.1).
        if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            break End::Protocol;
        }
        // Every client-to-server frame is masked (section 5.1).
        if b1 & 0x80 == 0 {
            break End::Protocol;
        }
        let fin = b0 & 0x80 != 0;
        let (len, rest) = match b1 & 0x7F {
            126 => match rest {
                [a, b, rest @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), rest),
                _ => break End::Eof,
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((len, rest)) => (u64::from_be_bytes(*len), rest),
                None => break End::Eof,
            },
            short => (u64::from(short), rest),
        };
        let Some((mask, rest)) = rest.split_first_chunk::<4>() else {
            break End::Eof;
        };
        // Control frames: not fragmented, payload <= 125 (section 5.5).
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && (!fin || len > 125) {
            break End::Protocol;
        }
        if len > max_payload as u64 {
            break End::TooLarge(len);
        }
        let len = len as usize;
        if rest.len() < len {
            break End::Eof;
        }
        let payload = rest[..len]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key)
            .collect();
        frames.push(Expected {
            fin,
            opcode,
            rsv1,
            payload,
        });
        bytes = &rest[len..];
    };
    Reference { frames, end }
}

/// A socket that hands out its bytes in scheduled pieces, sometimes says
/// "would block" first, and then reports end of stream.
struct Chunked<'a> {
    /// Bytes left, the schedule, and whether a read has just blocked.
    state: Mutex<(&'a [u8], Schedule, bool)>,
}

impl ReadSocket for Chunked<'_> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock().expect("one thread");
        let blocked = std::mem::replace(&mut state.2, false);
        if blocked && state.1.one_in(2) {
            // Not ready yet: the executor polls again (its waker is a no-op).
            cx.waker().wake_by_ref();
            state.2 = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut state = self.state.lock().expect("one thread");
        let (rest, schedule, blocked) = &mut *state;
        if rest.is_empty() {
            return Ok(0);
        }
        if schedule.one_in(4) {
            *blocked = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // As tokio's `try_read_buf`: read into the spare capacity (which
        // `chunk_mut` grows by 64 bytes if there is none).
        let room = buf.chunk_mut().len();
        let n = schedule.read_size().min(room).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        *rest = &rest[n..];
        Ok(n)
    }
}
