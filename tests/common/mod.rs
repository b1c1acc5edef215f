//! Shared test fixtures: a real server on 127.0.0.1:0, a real WebSocket
//! client (tokio-tungstenite, independent of the server's fastwebsockets),
//! and waiting for conditions with a deadline instead of sleeping.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use tickcast::config::Settings;
use tickcast::engine::ChannelSnapshot;
use tickcast::feed::FeedSpec;
use tickcast::RunningServer;

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts a server with `feeds`, after letting `tweak` adjust the settings.
pub async fn start_server(feeds: &[&str], tweak: impl FnOnce(&mut Settings)) -> RunningServer {
    let mut settings = Settings {
        feeds: feeds
            .iter()
            .map(|f| f.parse::<FeedSpec>().unwrap())
            .collect(),
        ..Settings::default()
    };
    tweak(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    tickcast::start(listener, settings, CancellationToken::new())
        .await
        .expect("server starts")
}

/// A server with one `tcp:` feed on a free port; returns the feed address.
pub async fn start_with_tcp_feed(tweak: impl FnOnce(&mut Settings)) -> (RunningServer, SocketAddr) {
    let server = start_server(&["tcp:127.0.0.1:0"], tweak).await;
    let stats = server.feeds[0].clone();
    let addr = wait_for(
        || {
            let stats = stats.clone();
            async move { stats.local_addr() }
        },
        "tcp feed bound",
    )
    .await;
    (server, addr)
}

/// Polls `probe` until it yields `Some`, failing the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(probe: F, what: &str) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(probe).await {
        Some(value) => value,
        None => panic!("timed out after {DEADLINE:?} waiting for: {what}"),
    }
}

/// As [`wait_for`], but `None` at the deadline, for a caller that explains
/// the failure itself (what it found instead of what it wanted).
pub async fn try_wait_for<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Look again every 5 ms: each look is cheap, and a passing test waits
    // only as long as the condition takes.
    let mut every = tokio::time::interval(Duration::from_millis(5));
    loop {
        every.tick().await;
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
    }
}

/// Waits until the server holds channel `name`; returns its snapshot.
pub async fn wait_for_channel(server: &RunningServer, name: &str) -> ChannelSnapshot {
    let engine = server.engine.clone();
    wait_for(
        || {
            let engine = engine.clone();
            async move { engine.snapshot(name).await.unwrap() }
        },
        &format!("channel {name} to exist"),
    )
    .await
}

/// A producer connected to a `tcp:` feed.
pub struct Producer(pub TcpStream);

impl Producer {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self(TcpStream::connect(addr).await.unwrap())
    }

    pub async fn send_line(&mut self, line: &str) {
        self.0.write_all(line.as_bytes()).await.unwrap();
        self.0.write_all(b"\n").await.unwrap();
    }

    pub async fn publish(&mut self, channel: &str, data: Value) {
        let line = json!({ "channel": channel, "data": data }).to_string();
        self.send_line(&line).await;
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking JSON.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        Self { ws }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next message that is not a WebSocket control frame.
    pub async fn next(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a message within the deadline")
                .expect("connection still open")
                .expect("no websocket error");
            if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                return message;
            }
        }
    }

    /// The next JSON message; panics on anything else.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Message::Text(text) => serde_json::from_str(&text).expect("server sends JSON"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Subscribes and checks the `subscribed` reply.
    pub async fn subscribe(&mut self, id: i64, channels: &[&str]) {
        self.send(json!({"op":"subscribe","id":id,"channels":channels}))
            .await;
        let reply = self.recv().await;
        assert_eq!(
            reply,
            json!({"type":"subscribed","id":id,"channels":channels})
        );
    }

    /// Waits for the close frame and returns its code.
    pub async fn expect_close(&mut self) -> CloseCode {
        loop {
            match self.next().await {
                Message::Close(Some(frame)) => return frame.code,
                Message::Close(None) => panic!("close frame without a code"),
                _ => continue,
            }
        }
    }
}

/// Keeps channel states the way the protocol tells a client to, checking the
/// `prev` chain on every update.
#[derive(Default)]
pub struct Follower {
    pub channels: std::collections::BTreeMap<String, (u64, Value)>,
    pub updates: usize,
}

impl Follower {
    /// Applies a snapshot or update; panics on a broken chain.
    pub fn apply(&mut self, message: &Value) {
        let channel = message["channel"].as_str().expect("channel").to_owned();
        let seq = message["seq"].as_u64().expect("seq");
        match message["type"].as_str() {
            Some("snapshot") => {
                self.channels
                    .insert(channel, (seq, message["data"].clone()));
            }
            Some("update") => {
                let prev = message["prev"].as_u64().expect("prev");
                let (held, state) = self
                    .channels
                    .get_mut(&channel)
                    .unwrap_or_else(|| panic!("update before snapshot on {channel}"));
                assert_eq!(prev, *held, "prev chain broken on {channel}: {message}");
                assert!(seq > prev, "seq must grow: {message}");
                merge(state, &message["data"]);
                *held = seq;
                self.updates += 1;
            }
            other => panic!("not a channel message: {other:?} in {message}"),
        }
    }
}

/// RFC 7396 merge patch on `serde_json::Value` (the test's own copy).
pub fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(patch) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let map = target.as_object_mut().unwrap();
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// GET a path over a plain HTTP/1.1 connection; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("response within deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A loopback address with a free port (bound, then released) for a
/// server process to listen on.
pub fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    probe.local_addr().expect("probe address")
}

/// The real `tickcast serve` binary listening on `addr`: no stats log,
/// warnings only, stdin and stdout closed, killed when the handle drops.
/// Add flags (and other stdio) before spawning.
pub fn tickcast_binary(addr: SocketAddr) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickcast"));
    command
        .arg("serve")
        .args(["--listen", &addr.to_string()])
        .args(["--stats-interval", "0", "--log", "warn"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Waits until the server process at `addr` answers `/healthz` with 200.
pub async fn wait_healthy(addr: SocketAddr) {
    wait_for(
        || async move {
            TcpStream::connect(addr).await.ok()?;
            (http_get(addr, "/healthz").await.0 == 200).then_some(())
        },
        "tickcast to answer /healthz",
    )
    .await
}
