//! permessage-deflate (RFC 7692): the handshake's negotiation, compressing a
//! server frame once for every subscriber, and inflating client messages
//! within a bound.
//!
//! The server always asks for both `no_context_takeover` parameters, so
//! every message is compressed and inflated on its own: a frame compressed
//! once can be sent to every compressed subscriber as it is (the fanout
//! shares it exactly as it shares plain frames), and no connection keeps
//! compression state. The compressor and the inflater are one per thread,
//! reset before each message; an idle compressed connection costs what an
//! uncompressed one does, plus the few bytes of [`Negotiated`] in its outbox.
//!
//! flate2 with its default backend, miniz_oxide: pure Rust (no C toolchain,
//! no unsafe of ours), and it is what `async-compression` already pulls in.
//! Its compressor always keeps a 32 KiB window; with no context takeover a
//! back-reference never reaches further back than the start of its own
//! message, so a message of at most 2^N bytes is within any window of N
//! bits, and that is how a smaller `server_max_window_bits` is honoured:
//! only frames that fit it are compressed.

use std::cell::RefCell;
use std::num::NonZeroU8;

use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use serde::Deserialize;

use crate::wire::FrameBuilder;

/// The extension's token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The empty stored block every sync flush ends with; RFC 7692 section
/// 7.2.1 has the sender drop it and the receiver put it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `[compression]` in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Agree to permessage-deflate when a client offers it.
    pub enabled: bool,
    /// Update frames with a payload shorter than this go uncompressed.
    pub min_bytes: usize,
    /// The window the server declares (`server_max_window_bits`, 8 to 15).
    pub server_max_window_bits: u8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // docs/benchmarks.md, "Cost on the wire": cut from the recorded
            // feeds' frames, under 80 bytes deflate shrinks almost none; at
            // 96 it shrinks every one.
            min_bytes: 96,
            // The same: a smaller window saves no CPU per frame (resetting
            // the compressor is most of it) and sends the few frames past
            // it (a book's first levels, ~1 MB) uncompressed, which doubled
            // the bytes of the recorded feeds at 14 bits and below.
            server_max_window_bits: 15,
        }
    }
}

impl CompressionConfig {
    /// Why the configuration cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(8..=15).contains(&self.server_max_window_bits) {
            return Err(format!(
                "compression.server_max_window_bits must be 8 to 15, not {}",
                self.server_max_window_bits
            ));
        }
        if self.min_bytes > usize::from(u16::MAX) {
            return Err(format!(
                "compression.min_bytes must be at most 65535, not {}",
                self.min_bytes
            ));
        }
        Ok(())
    }
}

/// What one connection agreed to, kept in its outbox: 4 bytes, and
/// `Option<Negotiated>` too (an outbox must stay in its allocator size
/// class, `outbox::tests::an_outbox_stays_small`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The server's window (8 to 15): longer payloads go uncompressed.
    window_bits: NonZeroU8,
    /// Shorter payloads go uncompressed.
    min_bytes: u16,
}

impl Negotiated {
    /// `window_bits` 8 to 15 (checked by the caller), `min_bytes` capped
    /// at 65,535 (`CompressionConfig::check`).
    pub fn new(window_bits: u8, min_bytes: usize) -> Self {
        Self {
            window_bits: NonZeroU8::new(window_bits.clamp(8, 15)).expect("8 to 15"),
            min_bytes: u16::try_from(min_bytes).unwrap_or(u16::MAX),
        }
    }

    pub fn window_bits(&self) -> u8 {
        self.window_bits.get()
    }

    /// Whether a frame with a payload of `len` bytes may go compressed.
    pub fn compresses(&self, len: usize) -> bool {
        let bits = self.window_bits();
        len >= usize::from(self.min_bytes) && (bits >= 15 || len <= 1 << bits)
    }

    /// [`compresses`](Self::compresses) for a whole server frame as
    /// `crate::wire` builds it.
    pub fn compresses_frame(&self, frame: &[u8]) -> bool {
        frame_payload(frame).is_some_and(|payload| self.compresses(payload.len()))
    }
}

/// The first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` values, and the header value that accepts it;
/// `None` (no extension: the connection goes uncompressed) when there is
/// none or compression is off. An offer with a parameter the server does
/// not know, a repeated parameter or a value out of range is declined, as
/// RFC 7692 section 5 says, and the next offer is tried.
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a [u8]>,
    config: &CompressionConfig,
) -> Option<(Negotiated, String)> {
    if !config.enabled {
        return None;
    }
    let offers = offers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok());
    for offer in offers.flat_map(|value| value.split(',')) {
        if let Some((window_bits, asked)) = acceptable(offer, config.server_max_window_bits) {
            let agreed = Negotiated::new(window_bits, config.min_bytes);
            let mut response =
                format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
            // Said when asked (section 7.1.2.1 requires it then) or when
            // smaller than the default 15.
            if asked || window_bits < 15 {
                response.push_str(&format!("; server_max_window_bits={window_bits}"));
            }
            return Some((agreed, response));
        }
    }
    None
}

/// The server window for one offer (`token; param[=value]; ...`) and
/// whether the client asked for one, or `None` if the server declines it.
fn acceptable(offer: &str, server_bits: u8) -> Option<(u8, bool)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut window = server_bits;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            // The client caps the server's window: honoured (see the
            // module comment), the smaller of the two is used.
            "server_max_window_bits" => {
                window = window.min(window_bits(value?)?);
                2
            }
            // The client's own window: any size is inflated, and the
            // client compresses each message on its own anyway.
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None; // A repeated parameter (section 7).
        }
    }
    Some((window, seen[2]))
}

/// A parameter value, unquoted (section 7 allows a quoted string).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"'),
        None => Some(value),
    }
}

/// A window size: 1*DIGIT in 8 to 15, without leading zeros (section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || value.starts_with('0') {
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

thread_local! {
    // One per thread, reset per message: miniz_oxide's compressor is a few
    // hundred KB, and building one per frame would cost more than the frame.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(flate2::Compression::fast(), false));
    // Made on the first compressed client message a thread reads.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// The compressed form of `plain`, a whole unmasked text frame as
/// `crate::wire` builds it: a text frame with RSV1 set, or `None` when
/// compressing would not make it smaller.
pub fn deflate_frame(plain: &[u8]) -> Option<Bytes> {
    let payload = frame_payload(plain)?;
    // Room for exactly as many bytes as the plain payload, plus the tail
    // the flush adds and that is then dropped: output that does not fit is
    // not worth sending.
    let mut frame = FrameBuilder::with_capacity(payload.len() + TAIL.len());
    let out = frame.payload();
    let header = out.len();
    let compressed = COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        let status = compressor.compress_vec(payload, out, FlushCompress::Sync);
        let all_in = compressor.total_in() == payload.len() as u64;
        matches!(status, Ok(Status::Ok | Status::BufError)) && all_in && out.len() < out.capacity()
    });
    if !compressed || !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    if out.len() - header >= payload.len() {
        return None;
    }
    Some(frame.finish_deflated_text())
}

/// The payload of a whole unmasked server frame.
fn frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let start = match *frame.get(1)? {
        126 => 4,
        127 => 10,
        n if n < 126 => 2,
        _ => return None, // masked: not a server frame
    };
    frame.get(start..)
}

/// Why a compressed client message could not be inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the bound (close 1009).
    TooLarge,
    /// Not valid deflate data (close 1007).
    Corrupt,
}

/// Inflates one client message compressed with no context takeover, to at
/// most `max` bytes: a message that would inflate further (a decompression
/// bomb) stops at `max` + 1 bytes of output and is refused, so inflating
/// holds at most `max` + 1 bytes plus the thread's inflater.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let inflater = cell.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let result = inflate_with(inflater, compressed, max);
        if result.is_err() {
            // Whatever state it was left in goes with the message.
            inflater.reset(false);
        }
        result
    })
}

fn inflate_with(
    inflater: &mut Decompress,
    compressed: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    // Start near the usual ratio for JSON; grow by doubling up to the bound.
    // (Not `clamp`: it panics when the bound is under 64 bytes.)
    let start_capacity = (compressed.len().saturating_mul(4))
        .max(64)
        .min(max.saturating_add(1));
    let mut out = Vec::with_capacity(start_capacity);
    for (input, flush) in [
        (compressed, FlushDecompress::None),
        (&TAIL[..], FlushDecompress::Sync),
    ] {
        let start = inflater.total_in();
        loop {
            let (used, before) = (inflater.total_in(), out.len());
            let offset = (used - start) as usize;
            let status = inflater
                .decompress_vec(&input[offset..], &mut out, flush)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooLarge);
            }
            if status == Status::StreamEnd {
                return Ok(out); // A final block: the message ends here.
            }
            if out.len() == out.capacity() {
                // Out of room: there may be more output to come.
                let more = out.capacity().max(64).min(max + 1 - out.len());
                out.reserve_exact(more);
                continue;
            }
            let all_taken = (inflater.total_in() - start) as usize == input.len();
            let stuck = inflater.total_in() == used && out.len() == before;
            if all_taken || stuck {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn config() -> CompressionConfig {
        CompressionConfig {
            enabled: true,
            min_bytes: 10,
            server_max_window_bits: 12,
        }
    }

    /// `[compression]` in a config file reaches the sessions, and a bad
    /// value stops start-up naming the key.
    #[test]
    fn the_config_table_is_read_and_checked() {
        use crate::config::{Config, ServeArgs};
        let read = |text: &str| {
            let config: Config = toml::from_str(text).expect("parses");
            config.resolve(&ServeArgs::default(), None)
        };
        let settings = read("[compression]\nenabled = false\nmin_bytes = 200\n").unwrap();
        let session = settings.limits.session(false).compression;
        assert_eq!(
            (
                session.enabled,
                session.min_bytes,
                session.server_max_window_bits
            ),
            (false, 200, 15)
        );
        for bad in [
            "[compression]\nserver_max_window_bits = 16\n",
            "[compression]\nserver_max_window_bits = 7\n",
            "[compression]\nmin_bytes = 70000\n",
        ] {
            let Err(error) = read(bad) else {
                panic!("{bad:?} was accepted");
            };
            let error = error.to_string();
            assert!(error.contains("compression."), "{error}");
        }
        let typo: Result<Config, _> = toml::from_str("[compression]\nenable = true\n");
        assert!(typo.is_err(), "unknown keys are refused");
    }

    fn agreed(offer: &str) -> Option<u8> {
        negotiate([offer.as_bytes()], &config()).map(|(n, _)| n.window_bits())
    }

    #[test]
    fn offers_are_accepted_or_declined_as_rfc_7692_says() {
        assert_eq!(agreed("permessage-deflate"), Some(12));
        // What browsers send.
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits"),
            Some(12)
        );
        assert_eq!(
            agreed("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Some(12)
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=15"),
            Some(12)
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=9"),
            Some(9)
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=\"10\""),
            Some(10)
        );
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits=8"),
            Some(12)
        );
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        ] {
            assert_eq!(agreed(declined), None, "{declined}");
        }
        // The first acceptable offer wins, over several headers too.
        assert_eq!(
            agreed("permessage-deflate; foo, permessage-deflate; server_max_window_bits=10"),
            Some(10)
        );
        let two = [&b"x-other"[..], &b"permessage-deflate"[..]];
        assert!(negotiate(two, &config()).is_some());
        let off = CompressionConfig {
            enabled: false,
            ..config()
        };
        assert!(negotiate([&b"permessage-deflate"[..]], &off).is_none());
    }

    #[test]
    fn the_response_asks_for_no_context_takeover_both_ways() {
        let (_, response) = negotiate([&b"permessage-deflate"[..]], &config()).unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=12"
        );
        // The default window (15) goes unsaid unless the client asked.
        let wide = CompressionConfig::default();
        let (_, response) = negotiate([&b"permessage-deflate"[..]], &wide).unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let asked = b"permessage-deflate; server_max_window_bits=15";
        let (_, response) = negotiate([&asked[..]], &wide).unwrap();
        assert!(
            response.ends_with("; server_max_window_bits=15"),
            "{response}"
        );
    }

    #[test]
    fn the_window_and_threshold_decide_which_frames_compress() {
        let n = Negotiated::new(9, 100);
        assert!(!n.compresses(99));
        assert!(n.compresses(100) && n.compresses(512));
        assert!(!n.compresses(513), "past the 512-byte window");
        let wide = Negotiated::new(15, 0);
        assert!(wide.compresses(10 << 20));
    }

    /// What a client does with a compressed frame: payload, tail, inflate.
    fn client_inflate(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let payload = frame_payload(frame).unwrap();
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::new();
        flate2::write::DeflateDecoder::new(&mut out)
            .write_all(&input)
            .unwrap();
        out
    }

    #[test]
    fn a_frame_compresses_to_one_that_inflates_back() {
        for len in [200usize, 5_000, 70_000] {
            let text: String = (0..len)
                .map(|i| ((i * 7 % 26) as u8 + b'a') as char)
                .collect();
            let json = format!(r#"{{"type":"update","data":"{text}"}}"#);
            let plain = crate::wire::update("q.A", 2, 1, 3, json.as_bytes());
            let frame = deflate_frame(&plain).expect("repetitive text compresses");
            assert!(frame.len() < plain.len());
            assert_eq!(client_inflate(&frame), frame_payload(&plain).unwrap());
        }
        // Output no smaller than its input is not sent compressed.
        let mut noise = FrameBuilder::with_capacity(256);
        noise
            .payload()
            .extend((0..=255u8).map(|b| b.wrapping_mul(167)));
        assert!(deflate_frame(&noise.finish_text()).is_none());
    }

    fn client_deflate(message: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(message.len() + 64);
        c.compress_vec(message, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn client_messages_inflate_within_the_bound() {
        let message = br#"{"op":"subscribe","channels":["quotes.BTC-USD"]}"#.repeat(20);
        let compressed = client_deflate(&message);
        assert_eq!(inflate(&compressed, 1 << 16).unwrap(), message);
        // Exactly at the bound is fine; a byte over is refused.
        assert_eq!(inflate(&compressed, message.len()).unwrap(), message);
        assert_eq!(
            inflate(&compressed, message.len() - 1),
            Err(InflateError::TooLarge)
        );
        // A bomb: 8 KiB or so of compressed zeros that would be 8 MiB.
        let bomb = client_deflate(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 20_000);
        assert_eq!(inflate(&bomb, 1 << 16), Err(InflateError::TooLarge));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0x00, 0x12], 1 << 16),
            Err(InflateError::Corrupt)
        );
        // The thread's inflater is fine after a refusal.
        assert_eq!(inflate(&compressed, 1 << 16).unwrap(), message);
        // A message that ends with a final block is taken as whole.
        let mut final_block = Vec::new();
        let mut encoder =
            flate2::write::DeflateEncoder::new(&mut final_block, flate2::Compression::fast());
        encoder.write_all(b"{\"op\":\"ping\"}").unwrap();
        encoder.finish().unwrap();
        assert_eq!(inflate(&final_block, 100).unwrap(), b"{\"op\":\"ping\"}");
    }

    /// A bound under the first buffer's 64 bytes (found by the frames fuzz
    /// target with `max_message_bytes` = 1) is kept, not a panic.
    #[test]
    fn tiny_bounds_are_kept_without_a_panic() {
        let compressed = client_deflate(b"{\"op\":\"ping\"}");
        for max in [0, 1, 2, 12] {
            assert_eq!(inflate(&compressed, max), Err(InflateError::TooLarge));
        }
        assert_eq!(inflate(&compressed, 13).unwrap(), b"{\"op\":\"ping\"}");
    }
}
