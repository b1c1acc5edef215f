//! Clients that send what no client should, over raw TCP so that nothing
//! in between tidies it up: bad JSON, unknown ops, binary frames, oversize
//! frames, unmasked frames, invalid close codes, frames announced and never
//! finished, garbage instead of HTTP. Each is answered with an error reply
//! or a close (or the connection ends); none may take the server down, which
//! the readers and the health probe around them would notice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use super::churn::Ctx;
use super::Tally;

/// How long an answer to a bad message may take.
const ANSWER: Duration = Duration::from_secs(10);

/// One WebSocket frame as a client sends it: masked (with a random key)
/// unless `masked` is false.
fn frame(opcode: u8, payload: &[u8], masked: bool, rng: &mut SmallRng) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        let key: [u8; 4] = rng.gen();
        out.extend(key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend(reason);
    p
}

/// What a malformed client saw after its bad message.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A text message (an error reply, or a pong to the probe after one).
    Text(String),
    /// A close frame with this code.
    Close(u16),
    /// The connection ended.
    Ended,
}

/// Reads the next text or close frame the server sends.
async fn next_answer(stream: &mut TcpStream) -> std::io::Result<Answer> {
    loop {
        let mut head = [0u8; 2];
        if stream.read_exact(&mut head).await.is_err() {
            return Ok(Answer::Ended);
        }
        let len = match head[1] & 0x7f {
            126 => stream.read_u16().await? as u64,
            127 => stream.read_u64().await?,
            n => n as u64,
        };
        let mut payload = vec![0; len.min(1 << 24) as usize];
        stream.read_exact(&mut payload).await?;
        match head[0] & 0x0f {
            1 => return Ok(Answer::Text(String::from_utf8_lossy(&payload).into_owned())),
            8 => {
                let code = match payload[..] {
                    [a, b, ..] => u16::from_be_bytes([a, b]),
                    _ => 1005,
                };
                return Ok(Answer::Close(code));
            }
            _ => continue,
        }
    }
}

/// Opens a WebSocket by hand; returns the stream after the 101.
async fn handshake(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.map_err(|e| e.to_string())?;
        head.push(byte);
        if head.len() > 4096 {
            return Err("an endless handshake answer".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("no 101: {}", String::from_utf8_lossy(&head)));
    }
    Ok(stream)
}

/// The bad things, one per connection, in turn.
const KINDS: u64 = 11;

/// Sends bad thing number `kind`; checks the answer.
async fn misbehave(ctx: &Ctx, kind: u64, rng: &mut SmallRng) -> Result<(), String> {
    if kind == 10 {
        // Not HTTP at all: the server answers (400) or hangs up, in time.
        let mut stream = TcpStream::connect(ctx.addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"\x16\x03\x01 not http\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut sink = Vec::new();
        return match timeout(ANSWER, stream.read_to_end(&mut sink)).await {
            Ok(_) => Ok(()),
            Err(_) => Err("garbage instead of HTTP was neither answered nor closed".into()),
        };
    }
    let mut stream = handshake(ctx.addr).await?;
    let oversize = vec![b' '; 70 * 1024];
    let (bytes, expect_error_reply) = match kind {
        0 => (frame(1, b"{\"op\":\"subscribe\",", true, rng), true),
        1 => (frame(1, b"{\"op\":\"launch\",\"id\":7}", true, rng), true),
        2 => (frame(1, b"[1,2,3]", true, rng), true),
        3 => (
            frame(
                1,
                b"{\"op\":\"subscribe\",\"channels\":[\"a..b\"]}",
                true,
                rng,
            ),
            true,
        ),
        4 => (frame(2, b"{\"op\":\"ping\"}", true, rng), false),
        5 => (frame(1, &oversize, true, rng), false),
        6 => (frame(1, b"{\"op\":\"ping\"}", false, rng), false),
        7 => (frame(8, &close_payload(999, b""), true, rng), false),
        8 => (
            frame(8, &close_payload(1000, &[0xff, 0xfe]), true, rng),
            false,
        ),
        _ => {
            // A frame announced at 1000 bytes, ten sent, then gone.
            let mut f = frame(1, &[b' '; 1000], true, rng);
            f.truncate(18);
            stream.write_all(&f).await.map_err(|e| e.to_string())?;
            return Ok(());
        }
    };
    // The server may hang up before it has read all of a bad frame.
    let _ = stream.write_all(&bytes).await;
    let answer = timeout(ANSWER, next_answer(&mut stream))
        .await
        .map_err(|_| format!("kind {kind}: no answer within {ANSWER:?}"))?
        .map_err(|e| format!("kind {kind}: reading the answer: {e}"))?;
    match (expect_error_reply, answer) {
        (true, Answer::Text(t)) if t.contains("\"error\"") => {
            // An error answers one message: the connection still serves.
            let ping = frame(1, b"{\"op\":\"ping\",\"id\":9}", true, rng);
            stream.write_all(&ping).await.map_err(|e| e.to_string())?;
            match timeout(ANSWER, next_answer(&mut stream)).await {
                Ok(Ok(Answer::Text(t))) if t.contains("pong") => Ok(()),
                other => Err(format!("kind {kind}: no pong after an error: {other:?}")),
            }
        }
        (true, other) => Err(format!(
            "kind {kind}: expected an error reply, got {other:?}"
        )),
        (false, Answer::Close(_) | Answer::Ended | Answer::Text(_)) => Ok(()),
    }
}

/// A client that connects, misbehaves once, and goes, until the churn ends.
pub async fn run(ctx: Arc<Ctx>, n: u64) {
    let mut rng = SmallRng::seed_from_u64(2_000_000 + n);
    let mut kind = n;
    sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
    while !ctx.stop.is_cancelled() {
        Tally::bump(&ctx.tally.malformed);
        if let Err(e) = misbehave(&ctx, kind % KINDS, &mut rng).await {
            ctx.tally.violation(format!("malformed {n}: {e}"));
        }
        kind += 1;
        sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
    }
}
