//! Opening one client WebSocket: the TCP connect (bound to a chosen 127.0.0.x source address
//! when the run spreads over several) and the HTTP/1.1 upgrade, done by hand.
//!
//! Why by hand rather than through hyper: after the upgrade the socket is a plain
//! `TcpStream` split into owned halves, so every read goes straight to the socket (no boxed
//! `Upgraded` stream, no lock of a shared split) and no helper task per connection is spawned.
//! The response is consumed exactly up to its blank line (peek, then read that many bytes), so
//! a first frame sent right behind the 101 is left in the socket for the frame reader.
//! The loadgen trusts the server's `Sec-WebSocket-Accept` (it does not check the SHA-1).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use fastwebsockets::{Role, WebSocketRead, WebSocketWrite};

use crate::inflate::{self, Inflating};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// A parsed `ws://` URL, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
    pub addr: SocketAddr,
    /// Offer permessage-deflate and inflate what comes compressed (`--deflate`);
    /// a server that declines fails the connect.
    pub deflate: bool,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = match url.split_once("://") {
            Some(("ws", rest)) => rest,
            Some(("wss", _)) => anyhow::bail!(
                "{url}: wss:// is not supported; measure the server's plain ws:// listener \
                 (TLS would be measured on both sides of the same machine)"
            ),
            _ => anyhow::bail!("{url}: expected a ws:// URL such as ws://127.0.0.1:8080/ws"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("{url}: cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{url}: {authority} resolves to no address"))?;
        Ok(Target {
            url: url.to_string(),
            authority: authority.to_string(),
            path: path.into(),
            addr,
            deflate: false,
        })
    }
}

/// Why a connection could not be opened, sorted the way the report counts them.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens there.
    Refused,
    /// The connect or the handshake took longer than `--connect-timeout`.
    Timeout,
    /// No local port or source address left (`EADDRNOTAVAIL`): spread over more source IPs.
    NoLocalPort,
    /// Out of file descriptors (`EMFILE`/`ENFILE`).
    NoFds,
    /// The server answered the upgrade with another status.
    Status(u16),
    /// The response was not HTTP or was cut short.
    BadResponse(&'static str),
    Io(io::Error),
}

impl ConnectError {
    /// A short key for the report's error counts.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Refused => "refused",
            ConnectError::Timeout => "timeout",
            ConnectError::NoLocalPort => "no_local_port",
            ConnectError::NoFds => "no_fds",
            ConnectError::Status(_) => "http_status",
            ConnectError::BadResponse(_) => "bad_response",
            ConnectError::Io(_) => "io",
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::ConnectionRefused, _) => ConnectError::Refused,
            (io::ErrorKind::AddrNotAvailable, _) => ConnectError::NoLocalPort,
            (_, Some(libc::EMFILE | libc::ENFILE)) => ConnectError::NoFds,
            _ => ConnectError::Io(e),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => write!(f, "connection refused: is the server running?"),
            ConnectError::Timeout => write!(f, "connect or handshake timed out"),
            ConnectError::NoLocalPort => write!(
                f,
                "no local port left: raise --source-ips (each 127.0.0.x adds ~28k ports) or \
                 widen net.ipv4.ip_local_port_range"
            ),
            ConnectError::NoFds => write!(f, "out of file descriptors: raise `ulimit -Hn`"),
            ConnectError::Status(s) => {
                write!(f, "upgrade answered with HTTP {s}: is the path right?")
            }
            ConnectError::BadResponse(why) => write!(f, "bad upgrade response: {why}"),
            ConnectError::Io(e) => write!(f, "{e}"),
        }
    }
}

pub type Reader = WebSocketRead<Inflating<OwnedReadHalf>>;
pub type Writer = WebSocketWrite<OwnedWriteHalf>;

/// An open client connection and the server's `Server` header, if it sent one.
pub struct Conn {
    pub read: Reader,
    pub write: Writer,
    pub server: Option<String>,
    /// The receive buffer the kernel granted, when one was asked for (Linux doubles the
    /// request for its bookkeeping).
    pub recv_buffer: Option<u32>,
}

/// Connects to `target` from `source` (or the kernel's choice) and upgrades to WebSocket.
/// The caller bounds it with a timeout.
pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Conn, ConnectError> {
    connect_with(target, source, SocketOpts::default()).await
}

/// Socket options for [`connect_with`], applied before the connect so that the handshake
/// already advertises them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOpts {
    /// SO_RCVBUF in bytes: the receive window the peer may fill.
    pub recv_buffer: Option<u32>,
    /// TCP_MAXSEG in bytes (Linux): the segment size announced to the peer. On loopback the
    /// default is about 64 KB, which lets the peer's send buffer autotune to megabytes.
    pub max_segment: Option<u32>,
}

/// [`connect`] with `opts` set on the socket first.
pub async fn connect_with(
    target: &Target,
    source: Option<IpAddr>,
    opts: SocketOpts,
) -> Result<Conn, ConnectError> {
    let mut granted = None;
    let stream = match (source, opts.recv_buffer, opts.max_segment) {
        (None, None, None) => TcpStream::connect(target.addr).await?,
        _ => {
            let socket = if target.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(bytes) = opts.recv_buffer {
                socket.set_recv_buffer_size(bytes)?;
                granted = socket.recv_buffer_size().ok();
            }
            if let Some(bytes) = opts.max_segment {
                set_max_segment(&socket, bytes)?;
            }
            if let Some(ip) = source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(target.addr).await?
        }
    };
    stream.set_nodelay(true)?;
    let key = websocket_key(rand::random());
    let extensions = if target.deflate {
        format!("Sec-WebSocket-Extensions: {}\r\n", inflate::OFFER)
    } else {
        String::new()
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extensions}\
         User-Agent: tickcast-loadgen/{}\r\n\r\n",
        target.path,
        target.authority,
        env!("CARGO_PKG_VERSION")
    );
    let mut stream = stream;
    stream.write_all(request.as_bytes()).await?;
    let head = read_response_head(&mut stream).await?;
    let server = check_response(&head)?;
    let deflate = inflate::agreed(header(&head, "sec-websocket-extensions").as_deref())
        .map_err(ConnectError::BadResponse)?;
    if target.deflate && !deflate {
        return Err(ConnectError::BadResponse(
            "the server declined permessage-deflate (--deflate)",
        ));
    }
    let (r, w) = stream.into_split();
    let r = Inflating::new(r, deflate);
    let (mut read, mut write) = fastwebsockets::after_handshake_split(r, w, Role::Client);
    // Pings and closes are answered by the client loop itself, which owns the write half.
    read.set_auto_close(false);
    read.set_auto_pong(false);
    read.set_max_message_size(16 << 20);
    write.set_writev(false);
    Ok(Conn {
        read,
        write,
        server,
        recv_buffer: granted,
    })
}

/// Sets TCP_MAXSEG (Linux only; elsewhere a no-op).
fn set_max_segment(socket: &TcpSocket, bytes: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: the fd belongs to `socket`, which outlives the call, and the option value is a
        // c_int on the stack whose size is passed along with its address.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (socket, bytes);
    Ok(())
}

/// Reads the response up to and including its blank line, and not one byte further.
async fn read_response_head(stream: &mut TcpStream) -> Result<Vec<u8>, ConnectError> {
    const LIMIT: usize = 16 * 1024;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ConnectError::BadResponse(
                "connection closed during the handshake",
            ));
        }
        // Search the tail of what is already consumed plus the peeked bytes.
        let keep = head.len().min(3);
        let mut window = head[head.len() - keep..].to_vec();
        window.extend_from_slice(&buf[..n]);
        let take = match window.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(pos) => pos + 4 - keep,
            None => n,
        };
        let start = head.len();
        head.resize(start + take, 0);
        stream.read_exact(&mut head[start..]).await?;
        if head.ends_with(b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > LIMIT {
            return Err(ConnectError::BadResponse("response head over 16 KiB"));
        }
    }
}

/// Checks the status line; returns the `Server` header.
fn check_response(head: &[u8]) -> Result<Option<String>, ConnectError> {
    let text = std::str::from_utf8(head).map_err(|_| ConnectError::BadResponse("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ConnectError::BadResponse("not an HTTP/1.x response"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ConnectError::BadResponse("no status code"))?;
    if status != 101 {
        return Err(ConnectError::Status(status));
    }
    Ok(lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("server")
            .then(|| value.trim().to_string())
    }))
}

/// The value of header `name` (lower case) in a response head.
fn header(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

/// Base64 of 16 random bytes, as `Sec-WebSocket-Key` wants.
fn websocket_key(raw: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_base64_of_16_bytes() {
        // RFC 6455 section 1.3's sample nonce.
        let nonce = *b"the sample nonce";
        assert_eq!(websocket_key(nonce), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn urls_parse_with_default_port_and_path() {
        let t = Target::parse("ws://127.0.0.1:9001/ws?token=x").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:9001", "/ws?token=x")
        );
        assert_eq!(t.addr.port(), 9001);
        let t = Target::parse("ws://127.0.0.1").unwrap();
        assert_eq!((t.path.as_str(), t.addr.port()), ("/", 80));
        assert!(Target::parse("http://127.0.0.1/").is_err());
        assert!(Target::parse("wss://127.0.0.1/").is_err());
    }

    #[test]
    fn response_status_and_server_header() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nserver: uWS\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(check_response(ok).unwrap().as_deref(), Some("uWS"));
        let nf = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert!(matches!(check_response(nf), Err(ConnectError::Status(404))));
        assert!(matches!(
            check_response(b"SSH-2.0\r\n\r\n"),
            Err(ConnectError::BadResponse(_))
        ));
    }
}
