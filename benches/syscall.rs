//! One small frame written to a loopback TCP socket: `send(2)` against
//! `writev(2)` with one buffer. The session writer sends a lone frame with
//! the first (src/outbox.rs `TryWrite`), because most wake-ups carry one
//! frame and the second costs more. tokio's `try_write` and
//! `try_write_vectored` are these same calls on a non-blocking socket
//! (std's `write` is `send` with MSG_NOSIGNAL; `write_vectored` is
//! `writev`); here the socket blocks, so a full socket waits instead of
//! spinning.
//!
//! A thread reads and discards on the other end so the socket never stays
//! full. The time includes the kernel's loopback delivery, as a server's does.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{criterion_group, criterion_main, Criterion};

/// A typical quote update frame (server frame header + JSON), in bytes.
const FRAME: usize = 120;

fn connected_pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let client = TcpStream::connect(address).expect("connect loopback");
    let (mut server, _) = listener.accept().expect("accept");
    std::thread::spawn(move || {
        let mut sink = [0u8; 64 * 1024];
        while matches!(server.read(&mut sink), Ok(n) if n > 0) {}
    });
    client.set_nodelay(true).expect("nodelay");
    client
}

fn one_frame(c: &mut Criterion) {
    let frame = vec![b'x'; FRAME];
    let mut group = c.benchmark_group("write one frame to loopback");
    let mut socket = connected_pair();
    group.bench_function("send", |b| {
        b.iter(|| assert_eq!(socket.write(&frame).expect("send"), FRAME))
    });
    let mut socket = connected_pair();
    group.bench_function("writev", |b| {
        b.iter(|| {
            let written = socket.write_vectored(&[IoSlice::new(&frame)]);
            assert_eq!(written.expect("writev"), FRAME)
        })
    });
    group.finish();
}

criterion_group!(benches, one_frame);
criterion_main!(benches);
