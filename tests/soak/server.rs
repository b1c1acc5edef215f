//! The server under soak: the real `tickcast` binary as a child process, so
//! its allocator (mimalloc) and its resident memory are the shipped ones.
//! Only its public surface is used: flags, a config file, HTTP and `/ws`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Namespace policy and limits for the soak. `trades` is a stream namespace
/// (a reader that falls behind is closed with 1013 and resumes); the small
/// outbox makes stalled readers reach that bound in seconds.
///
/// The memory baseline must not move for reasons other than clients, so
/// what the server keeps of its feeds is full by the end of the warm-up:
/// short histories, and a small feed ring (its slots' empty shells and
/// their allocations settle within the warm-up).
const CONFIG: &str = r#"
[limits]
outbox_bytes = 32768
ring_capacity = 1024

[namespace_defaults]
history = 16

[namespaces.soak]
history = 256

[namespaces.trades]
mode = "stream"
history = 256
"#;

pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    pub feed: SocketAddr,
    pub log: PathBuf,
}

/// A port nothing listens on right now (the kernel's pick for port 0).
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    probe.local_addr().expect("probe address")
}

impl ChildServer {
    /// Starts `tickcast serve` with a synthetic feed at `synthetic_rate`
    /// updates/s and a `tcp:` feed; returns once `/healthz` answers and the
    /// feed accepts connections.
    pub async fn start(synthetic_rate: u32) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let config = dir.join(format!("soak-{}.toml", std::process::id()));
        std::fs::write(&config, CONFIG).expect("write the soak config");
        let log = dir.join(format!("soak-server-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create the server log");
        let (addr, feed) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tickcast"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--feed", &format!("synthetic:{synthetic_rate}")])
            .args(["--feed", &format!("tcp:{feed}")])
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--stats-interval", "0", "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("the tickcast binary starts");
        let mut server = Self {
            child,
            addr,
            feed,
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Poll until it answers, within the deadline.
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            poll.tick().await;
            server.assert_running();
            let healthy = get(addr, "/healthz", Duration::from_secs(1)).await.is_ok();
            if healthy && TcpStream::connect(feed).await.is_ok() {
                return server;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tickcast did not come up within 30 s; log: {}",
                server.log.display()
            );
        }
    }

    /// Panics if the process has exited (a crash, an abort).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("child status") {
            panic!("tickcast exited: {status}; log: {}", self.log.display());
        }
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("child still running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// `GET /stats` as JSON.
    pub async fn stats(&self) -> Value {
        let body = get(self.addr, "/stats", Duration::from_secs(10))
            .await
            .expect("/stats answers");
        serde_json::from_str(&body).expect("/stats is JSON")
    }

    /// `GET /channels/<name>`: (seq, data), or None if the server has no
    /// such channel.
    pub async fn channel(&self, name: &str) -> Option<(u64, Value)> {
        let body = get(
            self.addr,
            &format!("/channels/{name}"),
            Duration::from_secs(10),
        )
        .await
        .expect("/channels/<name> answers");
        let snapshot: Value = serde_json::from_str(&body).expect("snapshot is JSON");
        let seq = snapshot["seq"].as_u64()?;
        Some((seq, snapshot["data"].clone()))
    }
}

/// One HTTP/1.1 GET; the body if the status is 200 or 404, else an error.
/// Bounded by `limit` as a whole.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within {limit:?}"))??;
    let status = text.get(9..12).unwrap_or("");
    if status != "200" && status != "404" {
        return Err(format!("GET {path}: status {status:?}"));
    }
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
