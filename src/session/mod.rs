//! One WebSocket connection: a reader that turns client frames into engine
//! commands, and a writer that drains the session's [`Outbox`] onto the
//! socket with vectored writes.
//!
//! Both run in the connection's one task. The reader is dropped only when
//! the session is over (reading a frame is not cancel-safe, so it is never
//! raced against anything that would go on reading). fastwebsockets does the
//! HTTP upgrade; frames are read by `frames` (no buffer while idle) and
//! written pre-encoded by the outbox and writer.

// Public only for the fuzz targets in fuzz/; not part of the API.
#[doc(hidden)]
pub mod frames;
mod local;
pub mod message_rate;
pub use crate::outbox;
pub mod protocol;
mod reader;
#[doc(hidden)]
pub mod watch;
mod writer;

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{unix, TcpStream, UnixStream};

use crate::auth::Grant;
use crate::engine::{Command, EngineHandle, SessionId};
use crate::metrics::Metrics;
use crate::wire::{self, CloseCode};
use frames::{FrameReader, ReadSocket};
use outbox::{Outbox, TryWrite};
pub use watch::Watchlist;
use writer::SocketWrite;

/// Per-connection limits; see `config::Limits` for defaults and knobs.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest client message; a bigger frame gets close 1009.
    pub max_message_bytes: usize,
    /// Bounds on one request: channels, fields, nesting depth.
    pub requests: protocol::RequestLimits,
    /// Bound of the outbound queue in bytes.
    pub outbox_bytes: usize,
    /// How long the peer may accept no byte before it is given up on.
    pub write_timeout: Duration,
    /// How long a client frame or fragmented message may take to arrive.
    pub frame_timeout: Duration,
    /// How long a client may send nothing (pinged at half of it).
    pub idle_timeout: Duration,
    /// How long the HTTP server waits for a request's headers, before the
    /// upgrade (and between requests on a kept-alive connection).
    pub handshake_timeout: Duration,
    /// Let the fanout write to idle sockets itself (see `Outbox`).
    pub direct_writes: bool,
    /// How fast a client may send messages (`message_rate`).
    pub messages: message_rate::MessageLimit,
    /// Who may subscribe where, and how a refreshed token is checked.
    pub auth: Arc<crate::auth::Auth>,
}

/// Most bytes the kernel keeps queued and not yet sent on a session's
/// socket (TCP_NOTSENT_LOWAT, Linux). Past it the socket reports itself
/// full, and room again as the peer's window lets bytes go out, so the
/// writer sees a slow reader's progress in steps of a few KB rather than
/// whenever a whole send buffer's worth of memory is acknowledged (which at
/// 60 KB/s can take seconds, and read as a stalled peer). Updates left in
/// the outbox rather than the kernel also stay mergeable.
const SEND_LOW_WATER: usize = 32 * 1024;

/// How long a closing session waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a session on an upgraded connection until either side closes.
/// `slot` (the connection's place under `max_connections`) is dropped when
/// the session ends; taking it here rather than in a wrapping block keeps
/// one copy of the arguments in the task, not two. `grant` is what the
/// handshake's token allows (`None`: no token, public namespaces only).
pub async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    engine: EngineHandle,
    limits: Arc<SessionLimits>,
    metrics: Arc<Metrics>,
    watchlist: Arc<Watchlist>,
    grant: Option<Arc<Grant>>,
    slot: impl Send,
) {
    let _slot = slot;
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!("websocket upgrade failed: {e}");
            return;
        }
    };
    // Matched on a temporary, not a local, so that no `Socket` stays in the
    // task while it is served; the local kind is boxed, so a plain
    // connection's task is no larger for it.
    let serve = match split(ws, limits.max_message_bytes) {
        None => return,
        Some(Socket::Tcp(frames, write)) => Either::Left(crate::fault::contain(drive(
            frames,
            Arc::new(write),
            &engine,
            &limits,
            &metrics,
            &watchlist,
            grant,
        ))),
        Some(Socket::Local(frames, write)) => {
            Either::Right(Box::pin(crate::fault::contain(drive(
                frames,
                Arc::new(write),
                &engine,
                &limits,
                &metrics,
                &watchlist,
                grant,
            ))))
        }
    };
    let served = serve.await;
    // A panic while serving this session ends this session only (its
    // `OnPanic` guard has told the client and the engine).
    if let Err(panic) = served {
        metrics.session_panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!("a session panicked ({panic}); it is closed, every other session goes on");
    }
}

/// Cleans up after a panic while a session is served: the normal path
/// deregisters in order after the close handshake, but an unwinding task
/// runs only destructors, so this one closes the socket with 1011 and has
/// the engine forget the session.
struct OnPanic<'a, W: TryWrite> {
    engine: &'a EngineHandle,
    session: SessionId,
    write: &'a W,
}

impl<W: TryWrite> Drop for OnPanic<'_, W> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Best effort and without waiting: the writer went with the panic.
        let close = wire::close(CloseCode::InternalError, "internal error");
        let _ = self.write.try_write_vectored(&[IoSlice::new(&close)]);
        let (engine, session) = (self.engine.clone(), self.session);
        tokio::spawn(async move {
            let _ = engine.send(Command::Deregister { session }).await;
        });
    }
}

/// An upgraded connection as our frame reader and the raw write half: the
/// client's TCP socket, or for TLS the local end of its bridge
/// (`http::bridge`), which has the same readiness API.
enum Socket {
    Tcp(FrameReader<OwnedReadHalf>, OwnedWriteHalf),
    Local(FrameReader<unix::OwnedReadHalf>, unix::OwnedWriteHalf),
}

/// The upgraded connection as our frame reader and the raw write half.
/// (A plain function: its locals never sit in the session's task.)
fn split(
    ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    max_message_bytes: usize,
) -> Option<Socket> {
    let upgraded = ws.into_inner().into_inner();
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(upgraded) => {
            // hyper hands back the connection it was given: a TcpStream,
            // or the local end of a TLS bridge.
            let Ok(parts) = upgraded.downcast::<TokioIo<UnixStream>>() else {
                tracing::error!("upgraded connection is not a TCP or local stream; closing it");
                return None;
            };
            let (read, write) = parts.io.into_inner().into_split();
            let frames = FrameReader::new(read, &parts.read_buf, max_message_bytes);
            return Some(Socket::Local(frames, write));
        }
    };
    let stream = parts.io.into_inner();
    let _ = stream.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(SEND_LOW_WATER as u32);
    let (read, write) = stream.into_split();
    // `read_buf` (bytes hyper read past the upgrade request, almost always
    // none) is copied into the frame reader, not kept: it is a slice of
    // hyper's whole read buffer.
    Some(Socket::Tcp(
        FrameReader::new(read, &parts.read_buf, max_message_bytes),
        write,
    ))
}

async fn drive<R, W>(
    frames: FrameReader<R>,
    write: Arc<W>,
    engine: &EngineHandle,
    limits: &SessionLimits,
    metrics: &Arc<Metrics>,
    watchlist: &Arc<Watchlist>,
    grant: Option<Arc<Grant>>,
) where
    R: ReadSocket,
    W: SocketWrite + AsyncWrite + Unpin + 'static,
{
    let session = engine.new_session_id();
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes));
    if let Some(grant) = grant {
        // Checked on each subscribe; the sweeper closes with 1008 at exp.
        outbox.activity().set_grant(grant);
    }
    if limits.direct_writes {
        outbox.attach_socket(write.clone(), metrics.clone());
    }
    // The rare steps (register, the close handshake, deregister) are boxed:
    // inline, their futures would sit in every idle connection's task next
    // to the reader and writer, doubling its size (docs/benchmarks.md).
    let registered = Box::pin(engine.send(Command::Register {
        session,
        outbox: outbox.clone(),
    }))
    .await;
    if registered.is_err() {
        return;
    }
    tracing::debug!(session, peer = ?write.peer_addr(), "connected");
    let on_panic = OnPanic {
        engine,
        session,
        write: &*write,
    };
    {
        // Read timeouts are the sweeper's (no timer in this task); it
        // forgets the session once the last other owner of its outbox has.
        watchlist.watch(session, outbox.clone());
        let reader = reader::read_loop(frames, session, engine, &outbox, limits, metrics);
        let drained = writer::Drained { engine, session };
        let writer = writer::write_loop(&write, &outbox, limits.write_timeout, metrics, &drained);
        tokio::pin!(reader, writer);
        tokio::select! {
            () = &mut reader => {
                // The client closed or broke the protocol; flush what is owed.
                outbox.close(wire::close(CloseCode::Normal, ""), false);
                let _ = Box::pin(tokio::time::timeout(limits.write_timeout, &mut writer)).await;
            }
            () = &mut writer => {
                // We closed (shutdown, slow consumer, frame too large) or the
                // socket failed: give the peer a moment to answer the close.
                let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, &mut reader)).await;
            }
        }
    }
    drop(on_panic);
    outbox.detach_socket();
    let _ = Box::pin(engine.send(Command::Deregister { session })).await;
    // Now the only owner: shut the write side down so the peer sees FIN.
    if let Ok(mut write) = Arc::try_unwrap(write) {
        let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, write.shutdown())).await;
    }
    tracing::debug!(session, "disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most bytes an idle connection's task future may take. It was 2,504
    /// before the rare steps were boxed and the reader and writer waited on
    /// poll functions; 1,088 with rustc 1.95, and 1,144 with the read
    /// timeouts (`watch`). Most of an idle connection's memory is this
    /// future (docs/benchmarks.md), so growing it is a regression to
    /// notice. tokio's task cell (header, this future plus the task
    /// tracker's 8 bytes, trailer; 128-byte aligned) is 1,280 bytes up to a
    /// future of about 1,176 bytes, and 1,408 past it.
    const SESSION_FUTURE_BUDGET: usize = 1280;

    #[tokio::test]
    async fn an_idle_session_task_stays_small() {
        let (engine, _shards) = crate::engine::channel(Arc::from("e"), 2, 8);
        let limits = Arc::new(crate::config::Settings::default().limits.session(false));
        let mut request = hyper::Request::builder()
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        let (_, upgrade) = fastwebsockets::upgrade::upgrade(&mut request).unwrap();
        let metrics = Arc::new(Metrics::new());
        let watchlist = Arc::new(Watchlist::new(&limits, metrics.clone()));
        let session = run(upgrade, engine, limits, metrics, watchlist, None, ());
        let size = std::mem::size_of_val(&session);
        assert!(
            size <= SESSION_FUTURE_BUDGET,
            "the session future is {size} bytes, over its budget of {SESSION_FUTURE_BUDGET}: \
             box what is rare, keep what an idle connection awaits small"
        );
    }
}
