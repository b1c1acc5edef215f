//! A WebSocket client written by hand over a raw TCP socket, for what a
//! library client will not do: send invalid close codes or half a frame,
//! read at a pace of its own, ignore pings. (Uses `common`: declare both.)
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::DEADLINE;

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame from the server (unmasked).
#[derive(Debug)]
pub struct ServerFrame {
    pub fin: bool,
    /// permessage-deflate: the message is compressed.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The code and reason of a close frame.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "close without a code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        )
    }
}

/// A client frame: FIN and opcode in `first`, masked as RFC 6455 requires.
pub fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x02];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer, if any.
    pub extensions: Option<String>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_offering(addr, None).await
    }

    /// A client that offers `extensions` (`Sec-WebSocket-Extensions`).
    pub async fn connect_offering(addr: SocketAddr, extensions: Option<&str>) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::handshake(stream, addr, extensions).await
    }

    /// A client whose socket has a small receive buffer and a network-sized
    /// MSS, so that the server's side backs up as soon as it reads slower
    /// than the server writes (see tests/slow_consumer.rs).
    pub async fn connect_narrow(addr: SocketAddr) -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.set_tcp_mss(1460).unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = TcpSocket::from_std_stream(socket.into());
        Self::handshake(socket.connect(addr).await.unwrap(), addr, None).await
    }

    async fn handshake(mut stream: TcpStream, addr: SocketAddr, offer: Option<&str>) -> Self {
        let extensions = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {extensions}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
                .await
                .expect("handshake answer within the deadline")
                .unwrap();
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        buf.drain(..end);
        Self {
            stream,
            buf,
            extensions,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.send_raw(&masked(first, payload)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x80 | OP_TEXT, text.as_bytes()).await;
    }

    /// One read of at most `max` bytes into the buffer; 0 at end of stream
    /// (a reset counts as the end too).
    pub async fn read_some(&mut self, max: usize) -> usize {
        let mut chunk = vec![0u8; max];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// A whole frame from what has been read, if there is one.
    pub fn take_frame(&mut self) -> Option<ServerFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        assert_eq!(b[0] & 0x30, 0, "RSV2 and RSV3 are never set");
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return None;
        }
        let frame = ServerFrame {
            fin: b[0] & 0x80 != 0,
            rsv1: b[0] & 0x40 != 0,
            opcode: b[0] & 0x0F,
            payload: b[head..head + len].to_vec(),
        };
        self.buf.drain(..head + len);
        Some(frame)
    }

    /// The next frame, or `None` at end of stream; fails after [`DEADLINE`].
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            let read = tokio::time::timeout_at(deadline, self.read_some(64 * 1024)).await;
            if read.expect("a frame or the end within the deadline") == 0 {
                return None;
            }
        }
    }

    /// Skips other frames up to the close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let frame = self
                .next_frame()
                .await
                .expect("a close frame before the end");
            if frame.opcode == OP_CLOSE {
                return frame.close();
            }
        }
    }

    /// Reads (and drops) everything up to the end of the stream.
    pub async fn expect_end(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            self.buf.clear();
            let read = tokio::time::timeout_at(deadline, self.read_some(64 * 1024)).await;
            if read.expect("the server ends the connection within the deadline") == 0 {
                return;
            }
        }
    }
}
