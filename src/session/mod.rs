//! One WebSocket connection: a reader that turns client frames into engine
//! commands, and a writer that drains the session's [`Outbox`] onto the
//! socket with vectored writes.
//!
//! Both run in the connection's one task. The reader is dropped only when
//! the session is over (reading a frame is not cancel-safe, so it is never
//! raced against anything that would go on reading). fastwebsockets does the
//! HTTP upgrade; frames are read by `frames` (no buffer while idle) and
//! written pre-encoded by the outbox and writer.

mod frames;
pub mod outbox;
pub mod protocol;
mod reader;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::engine::{Command, EngineHandle};
use crate::metrics::Metrics;
use crate::wire::{self, CloseCode};
use frames::FrameReader;
use outbox::Outbox;

/// Per-connection limits; see `config::Limits` for defaults and knobs.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest client message; a bigger frame gets close 1009.
    pub max_message_bytes: usize,
    /// Most channels in one subscribe or unsubscribe.
    pub max_channels_per_request: usize,
    /// Bound of the outbound queue in bytes.
    pub outbox_bytes: usize,
    /// How long one write may take before the peer is given up on.
    pub write_timeout: Duration,
    /// Let the fanout write to idle sockets itself (see `Outbox`).
    pub direct_writes: bool,
}

/// How long a closing session waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a session on an upgraded connection until either side closes.
pub async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    engine: EngineHandle,
    limits: Arc<SessionLimits>,
    metrics: Arc<Metrics>,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!("websocket upgrade failed: {e}");
            return;
        }
    };
    let upgraded = ws.into_inner().into_inner();
    let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            // hyper hands back the connection it was given: always a TcpStream.
            tracing::error!("upgraded connection is not a TCP stream; closing it");
            return;
        }
    };
    let stream = parts.io.into_inner();
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    // `read_buf` (bytes hyper read past the upgrade request, almost always
    // none) is copied into the frame reader, not kept: it is a slice of
    // hyper's whole read buffer.
    let frames = FrameReader::new(read, &parts.read_buf, limits.max_message_bytes);
    drop(parts.read_buf);
    drive(frames, Arc::new(write), engine, limits, &metrics).await
}

async fn drive(
    frames: FrameReader<OwnedReadHalf>,
    write: Arc<OwnedWriteHalf>,
    engine: EngineHandle,
    limits: Arc<SessionLimits>,
    metrics: &Arc<Metrics>,
) {
    let session = engine.new_session_id();
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes));
    if limits.direct_writes {
        outbox.attach_socket(write.clone(), metrics.clone());
    }
    let registered = engine
        .send(Command::Register {
            session,
            outbox: outbox.clone(),
        })
        .await;
    if registered.is_err() {
        return;
    }
    tracing::debug!(session, "connected");
    {
        let reader = reader::read_loop(frames, session, &engine, &outbox, &limits);
        let drained = writer::Drained {
            engine: &engine,
            session,
        };
        let writer = writer::write_loop(&write, &outbox, limits.write_timeout, metrics, &drained);
        tokio::pin!(reader, writer);
        tokio::select! {
            () = &mut reader => {
                // The client closed or broke the protocol; flush what is owed.
                outbox.close(wire::close(CloseCode::Normal, ""), false);
                let _ = tokio::time::timeout(limits.write_timeout, &mut writer).await;
            }
            () = &mut writer => {
                // We closed (shutdown, slow consumer, frame too large) or the
                // socket failed: give the peer a moment to answer the close.
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
        }
    }
    outbox.detach_socket();
    let _ = engine.send(Command::Deregister { session }).await;
    // Now the only owner: shut the write side down so the peer sees FIN.
    if let Ok(mut write) = Arc::try_unwrap(write) {
        let _ = tokio::time::timeout(CLOSE_GRACE, write.shutdown()).await;
    }
    tracing::debug!(session, "disconnected");
}
