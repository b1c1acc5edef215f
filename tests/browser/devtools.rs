//! Headless Chromium driven over the DevTools protocol (a WebSocket,
//! spoken with the same client the other tests use), and polling with a
//! deadline.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::DEADLINE;

/// Finds a Chromium binary: `$CHROMIUM`, then the usual names.
pub fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return name.to_owned();
        }
    }
    panic!("this test needs Chromium: `apt-get install chromium` (scripts/test.sh installs it), or set CHROMIUM=/path");
}

/// A DevTools connection attached to one page.
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    /// Uncaught exceptions and console errors the page reported.
    pub errors: Vec<String>,
}

impl Page {
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let reply = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools connection open")
                .unwrap();
            if let Message::Text(text) = reply {
                let v: Value = serde_json::from_str(&text).unwrap();
                self.note_error(&v);
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "DevTools error: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Keeps what a `Runtime` event says went wrong in the page.
    fn note_error(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                self.errors.push(format!(
                    "{} {}",
                    details["text"].as_str().unwrap_or(""),
                    details["exception"]["description"].as_str().unwrap_or("")
                ));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.errors.push(params["args"].to_string());
            }
            _ => {}
        }
    }

    /// Calls `method` on the attached page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(method, params, Some(&session)).await
    }

    /// Evaluates `expression` (which returns a JSON string) and parses it;
    /// `null` while the page is still loading (the expression throws).
    pub async fn probe(&mut self, expression: &str) -> Value {
        match self.eval(expression).await {
            Value::String(s) => serde_json::from_str(&s).unwrap(),
            _ => Value::Null,
        }
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url })).await;
    }

    /// Sizes the viewport: a desktop window, or a phone (touch, 3x pixels).
    pub async fn viewport(&mut self, width: u32, height: u32, phone: bool) {
        let scale = if phone { 3 } else { 1 };
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": phone}),
        )
        .await;
    }

    /// Saves a PNG of the page under target/browser-artifacts/.
    pub async fn screenshot(&mut self, name: &str) {
        let shot = self
            .page("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = artifacts();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Evaluates `expression` in the page and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
                Some(&session),
            )
            .await;
        r["result"]["value"].clone()
    }
}

/// Starts headless Chromium on `url`; returns the process and the page.
pub async fn open(url: &str, profile: &std::path::Path) -> (tokio::process::Child, Page) {
    let mut child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("ws://") {
                return line[at..].trim().to_owned();
            }
        }
        panic!("chromium exited without a DevTools endpoint");
    })
    .await
    .expect("chromium prints its DevTools endpoint within 60 s");
    // Keep draining stderr so Chromium never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
        .await
        .expect("DevTools connects");
    let mut page = Page {
        ws,
        session: String::new(),
        next_id: 0,
        errors: Vec::new(),
    };
    let target = page
        .call("Target.createTarget", json!({"url": url}), None)
        .await;
    let attached = page
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
            None,
        )
        .await;
    page.session = attached["sessionId"].as_str().unwrap().to_owned();
    page.page("Runtime.enable", json!({})).await;
    page.viewport(1280, 800, false).await;
    (child, page)
}

/// How long the browser may take to show an expected state: Chromium
/// starting, the page loading and a server restart with backoff included.
pub const BROWSER_DEADLINE: Duration = Duration::from_secs(45);

/// Where screenshots go: target/browser-artifacts/.
pub fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("browser-artifacts")
}

/// Standard base64 (the DevTools screenshot encoding), without a crate.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Polls with a deadline: `tick` waits for the next look, or fails the test
/// (with the last state seen) once the deadline has passed.
pub struct Poll {
    what: &'static str,
    deadline: tokio::time::Instant,
    every: tokio::time::Interval,
}

impl Poll {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            deadline: tokio::time::Instant::now() + BROWSER_DEADLINE,
            every: tokio::time::interval(Duration::from_millis(100)),
        }
    }

    pub async fn tick(&mut self, last: &dyn std::fmt::Display) {
        assert!(
            tokio::time::Instant::now() <= self.deadline,
            "timed out after {BROWSER_DEADLINE:?} waiting for: {}; last seen: {last}",
            self.what
        );
        self.every.tick().await;
    }
}
