//! A session on a local (Unix) socket: the server's end of a TLS
//! connection's bridge (`http::bridge`). It has the same readiness API as a
//! TCP socket, so the reader, the writer and direct writes work unchanged.

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::frames::ReadSocket;
use super::outbox::TryWrite;
use super::writer::SocketWrite;

impl ReadSocket for OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only the frame reader polls the read side.
        self.as_ref().poll_read_ready(cx)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        OwnedReadHalf::try_read_buf(self, buf)
    }
}

impl TryWrite for OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

impl SocketWrite for OwnedWriteHalf {
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Only the writer task waits on the write side.
        self.as_ref().poll_write_ready(cx)
    }
    // No peer address: the client's is on the other side of the bridge.
}
