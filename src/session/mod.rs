//! One WebSocket connection: a reader that turns client frames into engine
//! commands, and a writer that drains the session's [`Outbox`] onto the
//! socket with vectored writes.
//!
//! Both run in the connection's one task, each as a boxed future that owns
//! what it uses (so an idle connection holds about 670 bytes of futures:
//! docs/benchmarks.md, memory). The reader is dropped only when
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

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use local::Stream;
use tokio::net::{TcpStream, UnixStream};

use crate::auth::Grant;
use crate::engine::{Command, EngineHandle, SessionId};
use crate::metrics::Metrics;
use crate::wire::{self, CloseCode};
use frames::{FrameReader, ReadSocket};
use outbox::Outbox;
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
    /// At the descriptor limit: how long the short answer waits for the
    /// request head, and may take to be written (`http::accept`).
    pub at_limit_read_timeout: Duration,
    pub at_limit_write_timeout: Duration,
    /// Let the fanout write to idle sockets itself (see `Outbox`).
    pub direct_writes: bool,
    /// How fast a client may send messages (`message_rate`).
    pub messages: message_rate::MessageLimit,
    /// Who may subscribe where, and how a refreshed token is checked.
    pub auth: Arc<crate::auth::Auth>,
    /// permessage-deflate: whether to agree to it, and how.
    pub compression: crate::deflate::CompressionConfig,
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

/// What every session of a server shares: one allocation per server, so a
/// connection's task holds one pointer rather than four (the engine handle
/// alone is 64 bytes).
pub struct Shared {
    pub engine: EngineHandle,
    pub limits: Arc<SessionLimits>,
    pub metrics: Arc<Metrics>,
    pub watchlist: Arc<Watchlist>,
}

/// A session's outbox, holding what its token allows (`None`: no token,
/// public namespaces only); checked on each subscribe, and the sweeper
/// closes the session with 1008 at the token's exp.
/// `deflate` is what the handshake agreed to (`crate::deflate::negotiate`).
pub fn new_outbox(
    limits: &SessionLimits,
    grant: Option<Arc<Grant>>,
    deflate: Option<crate::deflate::Negotiated>,
) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(limits.outbox_bytes).with_deflate(deflate));
    if let Some(grant) = grant {
        outbox.set_grant(grant);
    }
    outbox
}

/// Runs a session on an upgraded connection until either side closes.
/// `slot` (the connection's place under `max_connections`) is dropped when
/// the session ends; taking it here rather than in a wrapping block keeps
/// one copy of the arguments in the task, not two. `outbox` is made by
/// the caller (see [`new_outbox`]) with the handshake's token grant in it:
/// an argument the task keeps anyway, where a separate grant argument would
/// take the task over tokio's 256-byte cell (`an_idle_session_stays_small`).
///
/// What an idle connection's task holds is kept small (docs/benchmarks.md,
/// memory): the reader and writer are boxed futures owning what they use,
/// polled side by side by [`Serve`], and every rare step (the upgrade,
/// registering, the close handshake, deregistering) is boxed.
pub async fn run(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    slot: impl Send,
) {
    let _slot = slot;
    let Some((frames, socket)) = Box::pin(connect(upgrade)).await else {
        return;
    };
    let session = shared.engine.new_session_id();
    if shared.limits.direct_writes {
        outbox.attach_socket(socket.clone(), shared.metrics.clone());
    }
    let registered = Box::pin(shared.engine.send(Command::Register {
        session,
        outbox: outbox.clone(),
    }))
    .await;
    if registered.is_err() {
        return;
    }
    tracing::debug!(session, peer = ?SocketWrite::peer_addr(&*socket), "connected");
    // Read timeouts are the sweeper's (no timer in this task); it forgets
    // the session once the last other owner of its outbox has.
    shared.watchlist.watch(session, outbox.clone());
    let serve = Serve::new(&shared, session, frames, &socket, &outbox);
    // A panic while serving this session ends this session only.
    if let Err(panic) = crate::fault::contain(serve).await {
        shared
            .metrics
            .session_panics
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!("a session panicked ({panic}); it is closed, every other session goes on");
        outbox.detach_socket();
        on_panic(&shared.engine, session, &*socket);
        return;
    }
    Box::pin(finish(&shared.engine, session, &socket, &outbox)).await;
}

/// After a panic while serving: the reader or writer that panicked is
/// gone, so close the socket with 1011 without waiting (best effort), and
/// have the engine forget the session.
fn on_panic<S: SocketWrite>(engine: &EngineHandle, session: SessionId, socket: &S) {
    let close = wire::close(CloseCode::InternalError, "internal error");
    let _ = socket.try_write_vectored(&[IoSlice::new(&close)]);
    let engine = engine.clone();
    tokio::spawn(async move {
        let _ = engine.send(Command::Deregister { session }).await;
    });
}

/// The close handshake is over: deregister, then shut the write side down
/// so the peer sees FIN.
async fn finish<S: Session>(
    engine: &EngineHandle,
    session: SessionId,
    socket: &Arc<S>,
    outbox: &Outbox,
) {
    outbox.detach_socket();
    let _ = engine.send(Command::Deregister { session }).await;
    socket.shutdown_write();
    tracing::debug!(session, "disconnected");
}

/// What a session needs of its socket: frames are read with
/// [`ReadSocket`], written with [`SocketWrite`] (and directly by the
/// outbox), both through shared references, so one `Arc` serves both.
trait Session: ReadSocket + SocketWrite + Send + Sync + 'static {
    /// Ends the write side (FIN) once everything is written.
    fn shutdown_write(&self);
}

impl Session for TcpStream {
    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write);
    }
}

/// Awaits the upgrade and takes the stream out of hyper: our frame reader,
/// and the socket the writer and outbox share.
async fn connect(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
) -> Option<(FrameReader<Arc<Stream>>, Arc<Stream>)> {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!("websocket upgrade failed: {e}");
            return None;
        }
    };
    let upgraded = ws.into_inner().into_inner();
    // hyper hands back the connection it was given: a TcpStream, or the
    // local end of a TLS connection's bridge.
    let (stream, read_buf) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            let _ = stream.set_nodelay(true);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(SEND_LOW_WATER as u32);
            (Stream::Tcp(stream), parts.read_buf)
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<UnixStream>>() {
            Ok(parts) => (Stream::Local(parts.io.into_inner()), parts.read_buf),
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP or local stream; closing it");
                return None;
            }
        },
    };
    // One shared stream rather than `into_split`'s two halves: the reader
    // and writer each use only `&self` methods (poll_read_ready/try_read,
    // poll_write_ready/try_write), and each side has one waiter.
    let stream = Arc::new(stream);
    // `read_buf` (bytes hyper read past the upgrade request, almost always
    // none) is copied into the frame reader, not kept: it is a slice of
    // hyper's whole read buffer.
    let frames = FrameReader::new(stream.clone(), &read_buf);
    Some((frames, stream))
}

type Half = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The reader and writer of one session, polled side by side until the
/// close handshake is over. Each is a boxed future that owns what it uses,
/// so this (what an idle connection's task holds besides them) is a few
/// pointers.
struct Serve {
    reader: Option<Half>,
    writer: Option<Half>,
    /// How long the side still running may take once the other has ended.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    outbox: Arc<Outbox>,
    /// `limits.write_timeout` in ms: 8 bytes less than a `Duration` in
    /// every idle connection's task (its cell is 256 bytes up to a future
    /// of 152, then 384).
    write_timeout_ms: u32,
}

impl Serve {
    fn new<S: Session>(
        shared: &Arc<Shared>,
        session: SessionId,
        frames: FrameReader<Arc<S>>,
        socket: &Arc<S>,
        outbox: &Arc<Outbox>,
    ) -> Self {
        let reader = reader::read_loop(frames, outbox.clone(), shared.clone(), session);
        let writer = writer::write_loop(socket.clone(), outbox.clone(), shared.clone(), session);
        Self {
            reader: Some(Box::pin(reader)),
            writer: Some(Box::pin(writer)),
            grace: None,
            outbox: outbox.clone(),
            write_timeout_ms: u32::try_from(shared.limits.write_timeout.as_millis())
                .unwrap_or(u32::MAX),
        }
    }
}

impl Future for Serve {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(reader) = &mut this.reader {
            if reader.as_mut().poll(cx).is_ready() {
                this.reader = None;
                if this.writer.is_some() {
                    // The client closed or broke the protocol; flush what is
                    // owed, within the write timeout.
                    this.outbox.close(wire::close(CloseCode::Normal, ""), false);
                    this.grace = Some(Box::pin(tokio::time::sleep(Duration::from_millis(
                        u64::from(this.write_timeout_ms),
                    ))));
                }
            }
        }
        if let Some(writer) = &mut this.writer {
            if writer.as_mut().poll(cx).is_ready() {
                this.writer = None;
                if this.reader.is_some() && this.grace.is_none() {
                    // We closed (shutdown, slow consumer, frame too large) or
                    // the socket failed: give the peer a moment to answer.
                    this.grace = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
                }
            }
        }
        if this.reader.is_none() && this.writer.is_none() {
            return Poll::Ready(());
        }
        match &mut this.grace {
            Some(grace) => grace.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most bytes each part of an idle connection's session may take: the
    /// task's own future, and the boxed reader and writer it polls. Most of
    /// an idle connection's memory is these (docs/benchmarks.md), so growing
    /// one is a regression to notice. Before the halves were boxed the task
    /// future alone was 1,144 bytes (a task cell of 1,408); with rustc 1.95
    /// it is 120 with an empty slot (tokio's cell is the future plus about
    /// 104 bytes, rounded up to 128: 256), the reader 256 and the writer
    /// 160. With the server's 16-byte slot and the outbox argument it is
    /// 152, the last size in the 256-byte cell. The message-rate
    /// allowance and the auth hooks took the reader to 304 (mimalloc's
    /// 320-byte class); handling a frame in a plain function, boxing the
    /// rare partial message and passing `max_payload` per read brought it
    /// back to 256.
    const TASK_BUDGET: usize = 152;
    const READER_BUDGET: usize = 256;
    const WRITER_BUDGET: usize = 176;

    #[tokio::test]
    async fn an_idle_session_stays_small() {
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
        let shared = Arc::new(Shared {
            engine,
            limits,
            metrics,
            watchlist,
        });
        // A slot as large as the server's (`ConnectionSlot`: an Arc and
        // the admission place), so the budget is the real task's.
        let slot = (Arc::new(()), 0u64);
        let task = run(
            upgrade,
            shared.clone(),
            new_outbox(&shared.limits, None, None),
            slot,
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, socket) = (client.unwrap(), Arc::new(accepted.unwrap().0));
        let outbox = Arc::new(Outbox::new(1024));
        let frames = FrameReader::new(socket.clone(), b"");
        let reader = reader::read_loop(frames, outbox.clone(), shared.clone(), 1);
        let writer = writer::write_loop(socket, outbox, shared, 1);

        let parts = [
            ("task", std::mem::size_of_val(&task), TASK_BUDGET),
            ("reader", std::mem::size_of_val(&reader), READER_BUDGET),
            ("writer", std::mem::size_of_val(&writer), WRITER_BUDGET),
        ];
        eprintln!("{parts:?}");
        for (part, size, budget) in parts {
            assert!(
                size <= budget,
                "the session's {part} future is {size} bytes, over its budget of {budget}: \
                 box what is rare, keep what an idle connection awaits small"
            );
        }
    }
}
