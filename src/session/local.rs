//! The socket a session runs on: the client's TCP connection, or for TLS
//! the server's end of the connection's bridge (`http::bridge`), a local
//! (Unix) socket with the same readiness API. One enum rather than a
//! generic session, so that the session's code and its tasks' sizes are the
//! same for both; the per-call cost is one branch.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::net::{TcpStream, UnixStream};

use super::frames::ReadSocket;
use super::outbox::TryWrite;
use super::writer::SocketWrite;
use super::Session;

#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// A TLS connection's bridge end; the client is on the other side.
    Local(UnixStream),
}

impl ReadSocket for Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => ReadSocket::poll_read_ready(s, cx),
            // Only the frame reader polls the read side.
            Stream::Local(s) => s.poll_read_ready(cx),
        }
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => ReadSocket::try_read_buf(s, buf),
            Stream::Local(s) => s.try_read_buf(buf),
        }
    }
}

impl TryWrite for Stream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => TryWrite::try_write_vectored(s, bufs),
            Stream::Local(s) => s.try_write_vectored(bufs),
        }
    }
}

impl SocketWrite for Stream {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => SocketWrite::poll_write_ready(s, cx),
            // Only the writer waits on the write side.
            Stream::Local(s) => s.poll_write_ready(cx),
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => SocketWrite::peer_addr(s),
            // The client's address is on the other side of the bridge.
            Stream::Local(_) => None,
        }
    }
}

impl Session for Stream {
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
            Stream::Local(s) => socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write),
        };
    }
}
