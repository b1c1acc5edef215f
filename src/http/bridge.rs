//! The bridge between a client's TLS connection and the plain local socket
//! the server serves it on.
//!
//! A session reads and writes its socket through tokio's readiness API
//! (`poll_read_ready` + `try_read`, `poll_write_ready` +
//! `try_write_vectored`, and writes straight from the fanout), which a TLS
//! stream does not offer: its bytes must pass through rustls first. So each
//! TLS connection gets a Unix socket pair: hyper and the session use one end
//! exactly as they use a TCP socket, and a task per connection copies
//! between the other end and the TLS stream, both ways. The price is that
//! task, one more copy of every byte, and two 8 KiB buffers per TLS
//! connection (docs/architecture.md, "TLS"); plaintext connections do not go
//! through here. Terminating TLS at a reverse proxy avoids it.
//!
//! Backpressure carries through: a client that reads slowly fills its TCP
//! socket, the bridge stops reading the local socket, whose small send
//! buffer fills, and the session sees its socket full as it would a slow TCP
//! peer.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

/// Bytes each direction moves at a time (one buffer per direction).
const CHUNK: usize = 8 * 1024;

/// The local socket's send buffer. Small, as the session's TCP sockets keep
/// little unsent (`session::SEND_LOW_WATER`): what a slow client has not
/// taken stays in the session's outbox, where it can still be merged.
const LOCAL_SEND_BUFFER: usize = 32 * 1024;

/// Bytes the kernel keeps unsent on the client's TCP socket (as for plain
/// sessions, `session::SEND_LOW_WATER`).
#[cfg(any(target_os = "linux", target_os = "android"))]
const CLIENT_SEND_LOW_WATER: u32 = 32 * 1024;

/// Starts copying between `tls` and a new local socket, on a task of
/// `tasks`; returns the local end to serve. `stall` is how long a write may
/// make no progress before the connection is given up
/// (`limits.write_timeout_ms`).
pub fn spawn(
    tls: TlsStream<TcpStream>,
    stall: Duration,
    tasks: &TaskTracker,
) -> io::Result<UnixStream> {
    let (local, bridge_end) = UnixStream::pair()?;
    for end in [&local, &bridge_end] {
        let _ = socket2::SockRef::from(end).set_send_buffer_size(LOCAL_SEND_BUFFER);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(tls.get_ref().0).set_tcp_notsent_lowat(CLIENT_SEND_LOW_WATER);
    tasks.spawn(run(tls, bridge_end, stall));
    Ok(local)
}

/// Copies both ways until the server side ends, or the client's side ends
/// with an error. A client that merely stops sending (close_notify or FIN)
/// has that passed on, and still gets what the server has left to say.
async fn run(tls: TlsStream<TcpStream>, local: UnixStream, stall: Duration) {
    let (mut from_client, mut to_client) = tokio::io::split(tls);
    let (mut from_server, mut to_server) = local.into_split();
    let inbound = async {
        let copied = pump(&mut from_client, &mut to_server, stall).await;
        // The server reads end of stream.
        let _ = to_server.shutdown().await;
        copied
    };
    let outbound = async {
        let copied = pump(&mut from_server, &mut to_client, stall).await;
        if copied.is_ok() {
            // close_notify, then FIN; a client that takes nothing cannot hold it.
            let _ = tokio::time::timeout(stall, to_client.shutdown()).await;
        }
        copied
    };
    tokio::pin!(inbound, outbound);
    let ended = tokio::select! {
        result = &mut outbound => result,
        result = &mut inbound => match result {
            Ok(()) => outbound.await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = ended {
        tracing::debug!("tls connection ended: {e}");
    }
}

/// Copies `from` to `to` until `from` ends. A write (or flush) that moves
/// no byte for `stall` fails the copy.
async fn pump<R, W>(from: &mut R, to: &mut W, stall: Duration) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let stalled = |_| io::Error::new(io::ErrorKind::TimedOut, "peer took no byte in time");
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = from.read(&mut buf).await?;
        if read == 0 {
            return Ok(());
        }
        let mut done = 0;
        while done < read {
            let written = tokio::time::timeout(stall, to.write(&buf[done..read]))
                .await
                .map_err(stalled)??;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += written;
        }
        // TLS records rustls holds go out now, not with the next chunk.
        tokio::time::timeout(stall, to.flush())
            .await
            .map_err(stalled)??;
    }
}
