//! Running out of file descriptors: the real `tickcast` binary under a low
//! limit (`prlimit`, util-linux), held past it by more connections than it
//! has descriptors for (some of them silent), still answers `/healthz` and
//! `/metrics`, logs a few lines instead of one per failed accept, and serves
//! normally once the connections close.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The soft and hard limits the server starts under: it should lift the
/// soft one to the hard one itself.
const SOFT_LIMIT: u64 = 64;
const HARD_LIMIT: u64 = 128;
/// Connections held open: well past the hard limit.
const HELD: usize = 200;
/// The last of them connect and send nothing: each answer at the limit
/// waits a little for a request, which must not hold up the rest for long.
const SILENT: usize = 20;

/// Every line the child prints (logs go to stdout, errors to stderr).
type Log = Arc<Mutex<Vec<String>>>;

fn collect_lines(from: impl AsyncRead + Unpin + Send + 'static, log: Log) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line);
        }
    });
}

fn lines_with(log: &Log, needle: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// `tickcast serve` on a free port under `prlimit`; killed when dropped
/// (`kill_on_drop`), so a failing assertion does not leave it running.
async fn start_limited_server() -> (Child, SocketAddr, Log) {
    let prlimit = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "this test needs prlimit (util-linux): apt-get install util-linux"
    );
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={SOFT_LIMIT}:{HARD_LIMIT}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tickcast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--feed", "synthetic"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit starts tickcast");
    let log: Log = Arc::default();
    collect_lines(child.stdout.take().unwrap(), log.clone());
    collect_lines(child.stderr.take().unwrap(), log.clone());
    let addr = wait_for(
        || {
            let line = lines_with(&log, "socket ws://").pop();
            async move {
                let rest = line?.split_once("ws://")?.1.to_owned();
                rest.split_once('/')?.0.parse::<SocketAddr>().ok()
            }
        },
        "tickcast to print its address",
    )
    .await;
    (child, addr, log)
}

/// A client that asks for a WebSocket (unless `silent`) and then just sits
/// on the connection.
async fn held_connection(addr: SocketAddr, silent: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    if silent {
        return stream;
    }
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// The value of an unlabelled Prometheus sample.
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[tokio::test]
async fn health_and_metrics_answer_at_the_descriptor_limit() {
    let (mut child, addr, log) = start_limited_server().await;
    assert!(
        !lines_with(&log, &format!("file descriptor limit: {HARD_LIMIT}")).is_empty(),
        "the soft limit is raised to the hard one and logged: {:?}",
        log.lock().unwrap()
    );

    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let silent = i >= HELD - SILENT;
        let connection = tokio::time::timeout(DEADLINE, held_connection(addr, silent))
            .await
            .expect("the kernel completes connects even past the server's limit");
        held.push(connection);
    }

    // Queued behind the held connections, past the limit: answered anyway
    // (http_get fails the test if no answer comes within DEADLINE).
    let asked = std::time::Instant::now();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("at the descriptor limit"), "{body}");
    assert!(body.contains("WebSocket sessions open"), "{body}");
    eprintln!("/healthz answered at the limit in {:?}", asked.elapsed());

    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(sample(&metrics, "tickcast_fd_limit"), HARD_LIMIT);
    assert!(sample(&metrics, "tickcast_accept_fd_exhausted_total") > 0);
    assert!(sample(&metrics, "tickcast_answered_at_fd_limit_total") >= 2);
    assert!(
        sample(&metrics, "tickcast_accept_errors_total")
            >= sample(&metrics, "tickcast_accept_fd_exhausted_total")
    );

    // A failed accept is logged at most once per interval, not each time.
    let accept_lines = lines_with(&log, "accept");
    assert!(
        (1..20).contains(&accept_lines.len()),
        "{} log lines about accept: {:?}",
        accept_lines.len(),
        &accept_lines[..accept_lines.len().min(5)]
    );

    // Once the connections close, the server serves as before.
    drop(held);
    wait_for(
        || async move {
            let (status, body) = http_get(addr, "/healthz").await;
            (status == 200 && body == "ok\n").then_some(())
        },
        "/healthz back to ok after the held connections closed",
    )
    .await;
    let mut client = Client::connect(addr).await;
    client.subscribe(1, &["quotes.>"]).await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");

    child.kill().await.expect("kill tickcast");
}
