//! TLS: with `--tls-cert`/`--tls-key` the one port serves wss and https
//! (with a self-signed certificate made here, trusted by the test client),
//! tells plaintext clients to use TLS, reloads the certificate on SIGHUP
//! while open connections go on, and refuses to start with half a setup or
//! an unusable file.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tickcast::tls::{Tls, TlsFiles};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A self-signed certificate for `localhost`, and its key, in PEM.
struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        Self {
            der: made.cert.der().clone(),
            cert_pem: made.cert.pem(),
            key_pem: made.key_pair.serialize_pem(),
        }
    }

    /// Writes both files (each replaced in one step) at `files`.
    fn write(&self, files: &TlsFiles) {
        for (path, text) in [(&files.cert, &self.cert_pem), (&files.key, &self.key_pem)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).expect("write a PEM file");
            std::fs::rename(&partial, path).expect("replace a PEM file");
        }
    }
}

/// File names of their own for each test (tests run side by side).
fn files(name: &str) -> TlsFiles {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let pid = std::process::id();
    TlsFiles {
        cert: dir.join(format!("tls-{name}-{pid}-cert.pem")),
        key: dir.join(format!("tls-{name}-{pid}-key.pem")),
    }
}

/// A client config that trusts exactly `certs`.
fn trusting(certs: &[&Cert]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.der.clone()).expect("a usable root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// The certificate a new TLS connection is served, if one can be made.
async fn served_cert(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Option<CertificateDer<'static>> {
    let tls = tls_connect(addr, config).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs.first()?.clone().into_owned())
}

async fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Wss {
    let tls = tls_connect(addr, config).await.expect("tls handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket over tls");
    ws
}

/// The next JSON message (control frames skipped), within the deadline.
async fn recv(ws: &mut Wss) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("connection still open")
            .expect("no websocket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn subscribe(ws: &mut Wss, channel: &str) {
    let request = json!({"op":"subscribe","id":1,"channels":[channel]});
    ws.send(Message::text(request.to_string())).await.unwrap();
    let reply = recv(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// Waits for an update on `channel` carrying `data`.
async fn expect_update(ws: &mut Wss, channel: &str, data: &Value) {
    loop {
        let message = recv(ws).await;
        if message["channel"] == channel && message["data"] == *data {
            return;
        }
    }
}

/// A whole HTTP/1.1 response to `GET path` on `stream` (Connection: close).
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // A TLS peer that closes without close_notify ends with an error; what
    // was read so far is the answer either way.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("a response within the deadline");
    String::from_utf8_lossy(&response).into_owned()
}

async fn start_tls_server(name: &str, cert: &Cert) -> (tickcast::RunningServer, SocketAddr) {
    let files = files(name);
    cert.write(&files);
    let tls = Arc::new(Tls::load(files).expect("the test certificate loads"));
    start_with_tcp_feed(|s| s.tls = Some(tls)).await
}

#[tokio::test]
async fn wss_subscribers_get_feed_updates() {
    let cert = Cert::new();
    let (server, feed) = start_tls_server("wss", &cert).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.TLS", json!({"bid": 1.0})).await;
    wait_for_channel(&server, "quotes.TLS").await;

    let mut ws = wss_connect(server.addr, &trusting(&[&cert])).await;
    subscribe(&mut ws, "quotes.TLS").await;
    let snapshot = recv(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["data"], json!({"bid": 1.0}));
    for i in 0..50 {
        producer.publish("quotes.TLS", json!({"bid": i})).await;
    }
    expect_update(&mut ws, "quotes.TLS", &json!({"bid": 49})).await;
    server.shutdown().await;
}

#[tokio::test]
async fn https_answers_plain_requests() {
    let cert = Cert::new();
    let (server, _feed) = start_tls_server("https", &cert).await;
    let tls = tls_connect(server.addr, &trusting(&[&cert])).await.unwrap();
    let response = get(tls, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");
    server.shutdown().await;
}

#[tokio::test]
async fn plaintext_on_the_tls_port_is_told_to_use_tls_and_the_server_lives() {
    let cert = Cert::new();
    let (server, _feed) = start_tls_server("plaintext", &cert).await;
    let plain = TcpStream::connect(server.addr).await.unwrap();
    let response = get(plain, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("https://"), "{response}");
    // A TLS client that does not trust the certificate is refused too.
    assert!(tls_connect(server.addr, &trusting(&[&Cert::new()]))
        .await
        .is_err());

    let tls = tls_connect(server.addr, &trusting(&[&cert])).await.unwrap();
    assert!(get(tls, "/healthz").await.starts_with("HTTP/1.1 200"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_starts_the_handshake_is_disconnected() {
    let cert = Cert::new();
    let files = files("silent");
    cert.write(&files);
    let tls = Arc::new(Tls::load(files).unwrap());
    let (server, _feed) = start_with_tcp_feed(|s| {
        s.tls = Some(tls);
        s.limits.handshake_timeout_ms = 200;
    })
    .await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
        .await
        .expect("disconnected within the deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.shutdown().await;
}

/// The real binary, started with `args`.
fn tickcast(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickcast"));
    command
        .arg("serve")
        .args(["--stats-interval", "0", "--engine-shards", "1"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Sends SIGHUP to `child`.
fn hang_up(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_go_on() {
    let (a, b) = (Cert::new(), Cert::new());
    let files = files("sighup");
    a.write(&files);
    let (addr, feed) = (free_port(), free_port());
    let mut child = tickcast(&["--log", "info"])
        .args([
            "--listen",
            &addr.to_string(),
            "--feed",
            &format!("tcp:{feed}"),
        ])
        .args(["--tls-cert".as_ref(), files.cert.as_os_str()])
        .args(["--tls-key".as_ref(), files.key.as_os_str()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the tickcast binary starts");
    // The log, line by line, for the reload messages.
    let mut log = BufReader::new(child.stdout.take().unwrap()).lines();
    let either = trusting(&[&a, &b]);
    let first = wait_for(|| served_cert(addr, &either), "the server to serve TLS").await;
    assert_eq!(first, a.der);

    let producer = wait_for(
        || async move { TcpStream::connect(feed).await.ok() },
        "the tcp feed to take connections",
    )
    .await;
    let mut producer = Producer(producer);
    let mut old = wss_connect(addr, &either).await;
    subscribe(&mut old, "scores.hup").await;

    b.write(&files);
    hang_up(&child);
    wait_for(
        || async { (served_cert(addr, &either).await? == b.der).then_some(()) },
        "new connections to be served certificate B",
    )
    .await;
    // The connection opened under A is still served.
    producer.publish("scores.hup", json!({"home": 1})).await;
    expect_update(&mut old, "scores.hup", &json!({"home": 1})).await;

    // A broken certificate is logged and B stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    hang_up(&child);
    let why = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("keeping the TLS certificate in force") {
                return line;
            }
        }
        panic!("the log ended without the failed reload");
    })
    .await
    .expect("the failed reload logged within the deadline");
    assert!(why.contains(&files.cert.display().to_string()), "{why}");
    assert_eq!(served_cert(addr, &either).await, Some(b.der.clone()));
    producer.publish("scores.hup", json!({"home": 2})).await;
    expect_update(&mut old, "scores.hup", &json!({"home": 2})).await;

    // SIGTERM: the TLS client gets its close 1001 (through the bridge)
    // before the process exits.
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(status.expect("kill runs").success());
    let close = loop {
        let message = tokio::time::timeout(DEADLINE, old.next())
            .await
            .expect("a close within the deadline")
            .expect("a close frame before the end")
            .expect("no websocket error");
        if let Message::Close(frame) = message {
            break frame.expect("a close code");
        }
    };
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    let exited = tokio::time::timeout(DEADLINE, child.wait()).await;
    assert!(exited
        .expect("exits within the deadline")
        .unwrap()
        .success());
}

/// Runs the binary expecting it to refuse to start: exit status 2 and a
/// message on stderr, which is returned.
async fn refused(args: &[&std::ffi::OsStr]) -> String {
    let listen = free_port().to_string();
    let output = tickcast(&["--listen", &listen])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("tickcast refuses at once instead of serving")
        .expect("tickcast runs");
    assert_eq!(output.status.code(), Some(2));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn os(path: &Path) -> &std::ffi::OsStr {
    path.as_os_str()
}

#[tokio::test]
async fn half_a_tls_setup_is_refused_at_start_up() {
    let files = files("half");
    Cert::new().write(&files);
    let cert_flag = "--tls-cert".as_ref();
    let key_flag = "--tls-key".as_ref();
    let why = refused(&[cert_flag, os(&files.cert)]).await;
    assert!(why.contains("certificate is set"), "{why}");
    assert!(why.contains("add --tls-key"), "{why}");
    let why = refused(&[key_flag, os(&files.key)]).await;
    assert!(why.contains("key is set"), "{why}");
    assert!(why.contains("add --tls-cert"), "{why}");
}

#[tokio::test]
async fn unusable_tls_files_are_refused_at_start_up() {
    let (a, b) = (Cert::new(), Cert::new());
    let files = files("unusable");
    a.write(&files);
    let (cert_flag, key_flag) = ("--tls-cert".as_ref(), "--tls-key".as_ref());
    let missing = files.cert.with_extension("missing");

    let why = refused(&[cert_flag, os(&missing), key_flag, os(&files.key)]).await;
    assert!(why.contains("cannot read the TLS certificate"), "{why}");
    assert!(why.contains(&missing.display().to_string()), "{why}");

    // The certificate given as the key, and a key that is not the
    // certificate's.
    let why = refused(&[cert_flag, os(&files.cert), key_flag, os(&files.cert)]).await;
    assert!(why.contains("no usable PEM private key"), "{why}");
    let other_key = files.key.with_extension("other");
    std::fs::write(&other_key, &b.key_pem).unwrap();
    let why = refused(&[cert_flag, os(&files.cert), key_flag, os(&other_key)]).await;
    assert!(why.contains("cannot serve the certificate"), "{why}");
}
