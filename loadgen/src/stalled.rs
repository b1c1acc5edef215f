//! Stalled subscribers (`--stalled N`): connections that subscribe like the normal clients and
//! then never read from their socket again, the slow consumer of a fan-out server.
//!
//! Each one asks the kernel for a small receive buffer (`--stalled-rcvbuf`) and a
//! network-sized segment (`--stalled-mss`) before it connects, so once it stops reading the
//! server's writes back up after some tens of KB, instead of after the megabytes a loopback
//! connection lets the server's send buffer autotune to. It reads exactly until the `subscribed`
//! answer to its request (or an error), then leaves the socket idle until the run ends.
//! Nothing it receives counts anywhere: not in latency, deliveries or gap checks.
//!
//! When the run closes, it sends a close (1000) and reads whatever piled up, bounded by
//! `--close-timeout`, to learn how the server treated it: a close frame with a code other than
//! 1000 (1013 for a slow consumer on a stream channel) means the server had closed it first; the
//! connection ending without any close frame means the server dropped it (for instance when
//! one socket write outlasted its write timeout).

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Payload};
use serde::Serialize;
use tokio::time::{timeout, timeout_at, Instant};

use crate::client::{subscribe_request, Shared, Stop};
use crate::scan::{scan, Kind};
use crate::stats::Counters;
use crate::ws::{self, Conn};

/// What the stalled connections share with the run while they are being opened.
#[derive(Debug, Default)]
pub struct Tally {
    /// Subscribed, or given up: each connection counts once.
    pub settled: AtomicU64,
    pub subscribed: AtomicU64,
}

/// How a stalled connection ended, as seen when the run closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// It never subscribed.
    NotSubscribed,
    /// Our close was answered with 1000: the server kept the connection to the end.
    Answered,
    /// A close frame with this code arrived before the answer to ours: the server closed it
    /// (1013: slow consumer).
    ClosedByServer(u16),
    /// The connection ended (EOF or reset) without a close frame.
    Dropped,
    /// What piled up was still arriving when the close timeout passed.
    TimedOut,
}

/// What one stalled connection reports when it is done.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub subscribed: bool,
    /// The receive buffer the kernel granted, when one was asked for.
    pub recv_buffer: Option<u32>,
    pub end: End,
    /// Payload bytes read after the stall (what had piled up in the socket buffers and the
    /// server's outbox, plus anything flushed behind them).
    pub drained_bytes: u64,
}

/// Stalled connection `id`: subscribes to `channels`, stalls, and reports at the end.
pub async fn run(
    shared: Arc<Shared>,
    tally: Arc<Tally>,
    id: usize,
    channels: Vec<String>,
    source: Option<IpAddr>,
    opts: ws::SocketOpts,
    mut stop: Stop,
) -> Outcome {
    let mut outcome = Outcome {
        subscribed: false,
        recv_buffer: None,
        end: End::NotSubscribed,
        drained_bytes: 0,
    };
    let opened = tokio::select! {
        r = timeout(shared.connect_timeout, open(&shared, &channels, source, opts)) => {
            r.unwrap_or_else(|_| Err("connect or subscribe timed out".into()))
        }
        _ = stop.wait() => Err("the run ended before it subscribed".into()),
    };
    let conn = match opened {
        Ok(conn) => conn,
        Err(why) => {
            Counters::bump(&tally.settled);
            shared
                .notes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sample(format!("stalled client {id}: {why}"));
            return outcome;
        }
    };
    outcome.subscribed = true;
    outcome.recv_buffer = conn.recv_buffer;
    Counters::bump(&tally.subscribed);
    Counters::bump(&tally.settled);

    // The stall: nothing reads this socket until the run ends.
    stop.wait().await;
    (outcome.end, outcome.drained_bytes) = close_and_drain(conn, &shared).await;
    outcome
}

/// Connects, subscribes, and reads up to the `subscribed` answer.
async fn open(
    shared: &Shared,
    channels: &[String],
    source: Option<IpAddr>,
    opts: ws::SocketOpts,
) -> Result<Conn, String> {
    let mut conn = ws::connect_with(&shared.target, source, opts)
        .await
        .map_err(|e| format!("connecting to {}: {e}", shared.target.url))?;
    let request = subscribe_request(shared, channels).to_string();
    conn.write
        .write_frame(Frame::text(Payload::Owned(request.into_bytes())))
        .await
        .map_err(|e| format!("sending the subscription: {e}"))?;
    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let frame = conn
            .read
            .read_frame(&mut no_obligations)
            .await
            .map_err(|e| format!("reading the subscription answer: {e}"))?;
        let whole: Vec<u8> = match frame.opcode {
            OpCode::Text if frame.fin => frame.payload.to_vec(),
            OpCode::Text => {
                partial = frame.payload.to_vec();
                continue;
            }
            OpCode::Continuation => {
                partial.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                std::mem::take(&mut partial)
            }
            OpCode::Close => {
                return Err("the server closed before answering the subscription".into())
            }
            OpCode::Binary | OpCode::Ping | OpCode::Pong => continue,
        };
        match scan(&whole).map(|m| (m.kind, m.id)) {
            Ok((Kind::Subscribed, _)) => return Ok(conn),
            Ok((Kind::Error, Some(1))) => {
                return Err(format!(
                    "subscription refused: {}",
                    String::from_utf8_lossy(&whole)
                ))
            }
            _ => {}
        }
    }
}

/// Sends a close (1000), then reads everything that arrives until the server's close frame,
/// the end of the connection, or the close timeout.
async fn close_and_drain(conn: Conn, shared: &Shared) -> (End, u64) {
    let Conn {
        mut read,
        mut write,
        ..
    } = conn;
    let deadline = Instant::now() + shared.close_timeout;
    // If the server already dropped the connection this write fails; the reads below say so.
    let _ = write.write_frame(Frame::close(1000, b"run over")).await;
    // Let the reader take whole frames however large the pile is.
    read.set_max_message_size(64 << 20);
    let mut no_obligations = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    let mut bytes = 0u64;
    loop {
        match timeout_at(deadline, read.read_frame(&mut no_obligations)).await {
            Err(_elapsed) => return (End::TimedOut, bytes),
            Ok(Err(_)) => return (End::Dropped, bytes),
            Ok(Ok(frame)) => {
                if frame.opcode != OpCode::Close {
                    bytes += frame.payload.len() as u64;
                    continue;
                }
                let code = match &frame.payload[..] {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                };
                let end = if code == 1000 {
                    End::Answered
                } else {
                    End::ClosedByServer(code)
                };
                return (end, bytes);
            }
        }
    }
}
