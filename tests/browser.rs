//! The live page in a real browser: headless Chromium loads `/`, connects
//! to the WebSocket and renders quotes and scores that keep changing.
//!
//! The test drives Chromium over the DevTools protocol (a WebSocket, spoken
//! with the same client the other tests use) and polls the page's DOM until
//! the condition holds or the deadline passes: no fixed waits, no virtual
//! time (which stalls while a page keeps streaming).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Finds a Chromium binary: `$CHROMIUM`, then the usual names.
fn chromium() -> String {
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
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
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
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "DevTools error: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
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
async fn open(url: &str, profile: &std::path::Path) -> (tokio::process::Child, Page) {
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
    (child, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_quotes_and_scores_changing() {
    let server = start_server(&["synthetic"], |_| {}).await;
    let profile = std::env::temp_dir().join(format!("tickcast-chromium-{}", std::process::id()));
    let (mut child, mut page) = open(&format!("http://{}/", server.addr), &profile).await;

    let probe = "JSON.stringify({rows: document.querySelectorAll('[id^=\"row-quotes.\"]').length, \
                 matches: document.querySelectorAll('[id^=\"match-scores.\"]').length, \
                 status: (document.getElementById('status') || {}).className, \
                 updates: Number(document.body && document.body.dataset.updates || 0)})";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut every = tokio::time::interval(Duration::from_millis(200));
    let mut first_updates = None;
    let seen = loop {
        every.tick().await;
        let state: Value = match page.eval(probe).await {
            Value::String(s) => serde_json::from_str(&s).unwrap(),
            _ => json!({}),
        };
        let updates = state["updates"].as_u64().unwrap_or(0);
        if state["rows"].as_u64() >= Some(40) && state["matches"] == 4 && state["status"] == "live"
        {
            // Two readings apart in time: the count must keep growing.
            match first_updates {
                None => first_updates = Some(updates),
                Some(first) if updates > first => break state,
                Some(_) => {}
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the page did not show live quotes and scores within 30 s; last state {state}");
        }
    };
    assert!(
        seen["rows"].as_u64().unwrap() <= 60,
        "about 50 quotes: {seen}"
    );
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    server.shutdown().await;
}
