//! The browser side in a real browser: headless Chromium loads `/` (which
//! talks to the server only through `/tickcast.js`) and `/dashboard`, and
//! what they show is compared with what the server holds
//! (`/channels/<name>`), before and after the server restarts.
//!
//! The test drives Chromium over the DevTools protocol (a WebSocket, spoken
//! with the same client the other tests use) and polls the page's DOM until
//! the condition holds or the deadline passes: no fixed waits, no virtual
//! time (which stalls while a page keeps streaming).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Uncaught exceptions and console errors the page reported.
    errors: Vec<String>,
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
    async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(method, params, Some(&session)).await
    }

    /// Evaluates `expression` (which returns a JSON string) and parses it;
    /// `null` while the page is still loading (the expression throws).
    async fn probe(&mut self, expression: &str) -> Value {
        match self.eval(expression).await {
            Value::String(s) => serde_json::from_str(&s).unwrap(),
            _ => Value::Null,
        }
    }

    /// Loads `url` in the page.
    async fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({ "url": url })).await;
    }

    /// Sizes the viewport: a desktop window, or a phone (touch, 3x pixels).
    async fn viewport(&mut self, width: u32, height: u32, phone: bool) {
        let scale = if phone { 3 } else { 1 };
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": phone}),
        )
        .await;
    }

    /// Saves a PNG of the page under target/browser-artifacts/.
    async fn screenshot(&mut self, name: &str) {
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
const BROWSER_DEADLINE: Duration = Duration::from_secs(45);

/// Where screenshots go: target/browser-artifacts/.
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("browser-artifacts")
}

/// Standard base64 (the DevTools screenshot encoding), without a crate.
fn base64_decode(text: &str) -> Vec<u8> {
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
struct Poll {
    what: &'static str,
    deadline: tokio::time::Instant,
    every: tokio::time::Interval,
}

impl Poll {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            deadline: tokio::time::Instant::now() + BROWSER_DEADLINE,
            every: tokio::time::interval(Duration::from_millis(100)),
        }
    }

    async fn tick(&mut self, last: &dyn std::fmt::Display) {
        assert!(
            tokio::time::Instant::now() <= self.deadline,
            "timed out after {BROWSER_DEADLINE:?} waiting for: {}; last seen: {last}",
            self.what
        );
        self.every.tick().await;
    }
}

/// What the ticker shows: quote rows (cell text by field), the ladder,
/// the trades, the status and counters.
const SHOWN: &str = r#"JSON.stringify((() => {
  const rows = {};
  for (const row of document.querySelectorAll('#quotes tr[id^="row-quotes."]')) {
    const cells = { seq: row.children[7].textContent };
    for (const td of row.querySelectorAll('td[data-field]')) cells[td.dataset.field] = td.textContent;
    rows[row.id.slice(4)] = cells;
  }
  const ladder = { asks: [], bids: [] };
  for (const tr of document.querySelectorAll('#ladder tr.ask, #ladder tr.bid')) {
    ladder[tr.classList.contains('ask') ? 'asks' : 'bids'].push([tr.dataset.price, tr.querySelector('td.size span').textContent]);
  }
  const trades = [...document.querySelectorAll('#trades tr[data-id]')].map(tr =>
    ({ id: tr.dataset.id, price: tr.children[1].textContent, size: tr.children[2].textContent, side: tr.children[3].textContent }));
  const matches = document.querySelectorAll('[id^="match-scores."]').length;
  return { rows, ladder, trades, matches, search: location.search,
    status: document.getElementById('status').dataset.state,
    latency: document.getElementById('latency').textContent, rate: document.getElementById('rate').textContent,
    connects: Number(document.body.dataset.connects || 0),
    updates: Number(document.body.dataset.updates || 0) };
})())"#;

/// Levels the ladder shows a side (web/app.js `LADDER_LEVELS`).
const LADDER_LEVELS: usize = 10;

/// A shown number equals the server's value.
fn same_number(shown: &Value, server: &Value) -> bool {
    match (
        shown.as_str().and_then(|s| s.parse::<f64>().ok()),
        server.as_f64(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The server's state of `channel` over HTTP: (seq, data).
async fn server_state(addr: SocketAddr, channel: &str) -> Option<(u64, Value)> {
    let (status, body) = http_get(addr, &format!("/channels/{channel}")).await;
    if status != 200 {
        return None;
    }
    let snapshot: Value = serde_json::from_str(&body).unwrap();
    Some((snapshot["seq"].as_u64()?, snapshot["data"].clone()))
}

/// Whether the quote row of `symbol` shows the server's state and seq.
async fn quote_row_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((seq, data)) = server_state(addr, &format!("quotes.{symbol}")).await else {
        return false;
    };
    let row = &shown["rows"][format!("quotes.{symbol}")];
    row["seq"] == json!(seq.to_string())
        && ["bid", "ask", "bid_size", "ask_size"]
            .iter()
            .all(|f| same_number(&row[*f], &data[*f]))
}

/// The best `LADDER_LEVELS` levels a side of a book state, best first:
/// (price key, size).
fn best_levels(side: &Value, ascending: bool) -> Vec<(String, f64)> {
    let mut levels: Vec<(String, f64)> = side
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, s)| Some((p.clone(), s.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    levels.sort_by(|a, b| {
        let (x, y) = (a.0.parse::<f64>().unwrap(), b.0.parse::<f64>().unwrap());
        if ascending {
            x.total_cmp(&y)
        } else {
            y.total_cmp(&x)
        }
    });
    levels.truncate(LADDER_LEVELS);
    levels
}

/// Whether the ladder shows the server's book of `symbol`, level by level.
async fn ladder_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((_, book)) = server_state(addr, &format!("book.{symbol}")).await else {
        return false;
    };
    let side = |name: &str, best_first_is_last: bool| -> Vec<(String, Value)> {
        let mut rows: Vec<(String, Value)> = shown["ladder"][name]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| (r[0].as_str().unwrap_or("").to_owned(), r[1].clone()))
                    .collect()
            })
            .unwrap_or_default();
        if best_first_is_last {
            rows.reverse();
        }
        rows
    };
    let same = |shown: Vec<(String, Value)>, server: Vec<(String, f64)>| {
        shown.len() == server.len()
            && shown
                .iter()
                .zip(&server)
                .all(|((p, s), (q, t))| p == q && same_number(s, &json!(t)))
    };
    // Asks are drawn best (lowest) at the bottom, bids best at the top.
    same(side("asks", true), best_levels(&book["asks"], true))
        && same(side("bids", false), best_levels(&book["bids"], false))
        && !book["bids"].as_object().is_none_or(|m| m.is_empty())
}

/// Whether the newest trade shown is the server's trades.<symbol> state.
async fn last_trade_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((_, trade)) = server_state(addr, &format!("trades.{symbol}")).await else {
        return false;
    };
    let first = &shown["trades"][0];
    first["id"] == json!(trade["id"].to_string())
        && same_number(&first["price"], &trade["price"])
        && same_number(&first["size"], &trade["size"])
        && first["side"] == trade["side"]
}

/// `/stats` of the server at `addr`.
async fn stats(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// POST one feed record (loopback needs no key).
async fn publish(addr: SocketAddr, record: &Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = record.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("publish answered")
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// The fixture replay (tests/fixtures/browser/README.md).
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/browser/binance-btcusdt-ethusdt-2024-08-08.ndjson"
);

/// The real binary on `addr`, replaying the fixture at a quarter of its
/// pace (about 3.4 s), with a short restart spread so the page comes back
/// quickly; returns once it answers `/healthz`.
async fn start_replay(addr: SocketAddr, config: &std::path::Path) -> tokio::process::Child {
    let child = tickcast_binary(addr)
        .args(["--feed", &format!("replay:{FIXTURE}"), "--speed", "0.25"])
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn()
        .expect("the tickcast binary starts");
    wait_healthy(addr).await;
    child
}

/// Waits until the replay has played every record.
async fn replay_finished(addr: SocketAddr) {
    let mut poll = Poll::new("the fixture replay to finish");
    loop {
        let feeds = stats(addr).await["feeds"].clone();
        let replay = feeds
            .as_array()
            .and_then(|f| {
                f.iter()
                    .find(|f| f["name"].as_str().is_some_and(|n| n.starts_with("replay")))
            })
            .cloned()
            .unwrap_or_default();
        if replay["status"] == "finished" {
            assert_eq!(replay["accepted"], 600, "every fixture record taken");
            return;
        }
        poll.tick(&replay).await;
    }
}

/// Waits until the page shows the server's quotes for both symbols, and
/// the ladder and last trade of `selected` (if given).
async fn page_matches_server(
    page: &mut Page,
    addr: SocketAddr,
    selected: Option<&str>,
    what: &'static str,
) -> Value {
    let mut poll = Poll::new(what);
    loop {
        let shown = page.probe(SHOWN).await;
        let mut ok = shown["status"] == "open";
        for symbol in ["BTCUSDT", "ETHUSDT"] {
            ok = ok && quote_row_matches(addr, &shown, symbol).await;
        }
        if let Some(symbol) = selected {
            ok = ok && last_trade_matches(addr, &shown, symbol).await;
        }
        if selected == Some("BTCUSDT") {
            ok = ok && ladder_matches(addr, &shown, "BTCUSDT").await;
        }
        if ok {
            return shown;
        }
        poll.tick(&format!("{shown} (page errors {:?})", page.errors))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_servers_states_and_resyncs_after_a_restart() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let config = tmp.join(format!("browser-{}.toml", std::process::id()));
    std::fs::write(&config, "[limits]\nshutdown_reconnect_spread_ms = 300\n").unwrap();
    let addr = free_port();
    let mut server = start_replay(addr, &config).await;
    let profile = tmp.join(format!("chromium-replay-{}", std::process::id()));
    let (mut chromium, mut page) =
        open(&format!("http://{addr}/?symbols=BTCUSDT,ETHUSDT"), &profile).await;

    // The first row to show is selected by itself; pick ETHUSDT (no book),
    // then BTCUSDT, as a user clicks rows.
    replay_finished(addr).await;
    page_matches_server(
        &mut page,
        addr,
        None,
        "the page to show the replayed states",
    )
    .await;
    page.eval("document.getElementById('row-quotes.ETHUSDT').click()")
        .await;
    let shown = page_matches_server(&mut page, addr, Some("ETHUSDT"), "ETHUSDT's trades").await;
    assert_eq!(
        shown["ladder"],
        json!({"asks": [], "bids": []}),
        "ETHUSDT has no book"
    );
    assert!(
        shown["search"]
            .as_str()
            .unwrap()
            .contains("symbols=BTCUSDT,ETHUSDT")
            && shown["search"].as_str().unwrap().contains("sym=ETHUSDT"),
        "filter and selection are kept in the URL: {shown}"
    );
    page.eval("document.getElementById('row-quotes.BTCUSDT').click()")
        .await;
    // At most 2 updates/s per channel from now on, resumed with it too.
    page.eval("const s = document.getElementById('maxhz'); s.value = '2'; s.dispatchEvent(new Event('change'))")
        .await;
    let shown =
        page_matches_server(&mut page, addr, Some("BTCUSDT"), "BTCUSDT's book ladder").await;
    assert_eq!(
        shown["ladder"]["bids"].as_array().unwrap().len(),
        LADDER_LEVELS
    );
    assert!(
        shown["search"].as_str().unwrap().contains("hz=2"),
        "max_hz in the URL: {shown}"
    );
    assert_eq!(shown["connects"], 1);
    page.screenshot("ticker-replay-desktop.png").await;

    // Restart on the same port: SIGTERM (close 1001 with a reconnect hint),
    // then a new process, a new epoch and seqs from 1 again.
    let epoch_before = stats(addr).await["epoch"].clone();
    let pid = server.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::time::timeout(BROWSER_DEADLINE, server.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(status)) if status.success()),
        "{exited:?}"
    );
    let mut server = start_replay(addr, &config).await;
    assert_ne!(stats(addr).await["epoch"], epoch_before, "a new epoch");
    replay_finished(addr).await;
    // Something the first run never had, so only a resync can show it.
    let (_, book) = server_state(addr, "book.BTCUSDT").await.expect("the book");
    let best_bid = best_levels(&book["bids"], false)[0].0.clone();
    publish(
        addr,
        &json!({"channel": "quotes.BTCUSDT", "data": {"bid_size": 12.345}}),
    )
    .await;
    publish(
        addr,
        &json!({"channel": "book.BTCUSDT", "data": {"bids": {best_bid.as_str(): 12.345}}}),
    )
    .await;
    publish(addr, &json!({"channel": "trades.BTCUSDT", "data": {"id": 1, "price": 61000.5, "size": 0.5, "side": "buy"}})).await;
    let shown = page_matches_server(
        &mut page,
        addr,
        Some("BTCUSDT"),
        "the page to resync after the restart",
    )
    .await;
    assert_eq!(shown["connects"], 2, "reconnected once: {shown}");
    assert_eq!(shown["rows"]["quotes.BTCUSDT"]["bid_size"], "12.345");

    // The dashboard: its charts fill from /stats and /metrics.
    page.navigate(&format!("http://{addr}/dashboard")).await;
    let mut poll = Poll::new("the dashboard charts to receive data");
    let probe = r#"JSON.stringify(Object.fromEntries([...document.querySelectorAll('canvas[id^="chart-"]')]
        .map(c => [c.id.slice(6), { points: Number(c.dataset.points), last: JSON.parse(c.dataset.last || 'null') }])
        .concat([['feeds', [...document.querySelectorAll('#feeds tr')].map(r => [...r.children].map(td => td.textContent))]])))"#;
    let mut bid = 0.0;
    let charts = loop {
        // Records keep arriving, so rates and latencies move.
        bid += 0.01;
        publish(
            addr,
            &json!({"channel": "quotes.BTCUSDT", "data": {"bid": 61000.0 + bid}}),
        )
        .await;
        let charts = page.probe(probe).await;
        let filled = charts.as_object().is_some_and(|c| {
            c.len() == 11
                && c.iter()
                    .filter(|(name, _)| *name != "feeds")
                    .all(|(_, c)| c["points"].as_u64() >= Some(3))
        });
        let moving = charts["throughput"]["last"][0]
            .as_f64()
            .is_some_and(|v| v > 0.0)
            && charts["latency-ring_to_engine"]["last"][0]
                .as_f64()
                .is_some();
        if filled && moving {
            break charts;
        }
        poll.tick(&format!("{charts} (page errors {:?})", page.errors))
            .await;
    };
    assert!(
        charts["sessions"]["last"][0].is_u64(),
        "connections charted: {charts}"
    );
    // The feeds table: the replay (finished, 600 records) and the publish API.
    let feeds = charts["feeds"].as_array().unwrap();
    let replay_row = |row: &Value| {
        row[0].as_str().unwrap_or("").starts_with("replay:")
            && row[1] == "finished"
            && row[2] == "600"
    };
    assert!(feeds.iter().any(replay_row), "{charts}");
    page.screenshot("dashboard-desktop.png").await;
    page.viewport(390, 844, true).await;
    page.screenshot("dashboard-phone.png").await;

    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = chromium.kill().await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_quotes_scores_a_book_and_trades_changing() {
    let server = start_server(&["synthetic"], |_| {}).await;
    let addr = server.addr;
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-demo-{}", std::process::id()));
    let (mut child, mut page) = open(&format!("http://{addr}/?sym=BTC-USD"), &profile).await;

    let mut poll = Poll::new("live quotes, scores, the BTC-USD book and its trades");
    let mut first_updates = None;
    let seen = loop {
        let shown = page.probe(SHOWN).await;
        let updates = shown["updates"].as_u64().unwrap_or(0);
        let rows = shown["rows"].as_object().map_or(0, |r| r.len());
        let ready = rows >= 40
            && shown["matches"] == 4
            && shown["status"] == "open"
            && shown["ladder"]["asks"].as_array().map_or(0, Vec::len) == LADDER_LEVELS
            && shown["ladder"]["bids"].as_array().map_or(0, Vec::len) == LADDER_LEVELS
            && !shown["trades"].as_array().is_none_or(Vec::is_empty);
        if ready {
            // Two readings apart in time: the count must keep growing.
            match first_updates {
                None => first_updates = Some(updates),
                Some(first) if updates > first => break shown,
                Some(_) => {}
            }
        }
        poll.tick(&format!("{shown} (page errors {:?})", page.errors))
            .await;
    };
    let rows = seen["rows"].as_object().unwrap().len();
    assert!(rows <= 60, "about 50 quotes: {rows}");
    // The ladder is a book: asks above bids, best ask over best bid.
    let price = |side: &str, i: usize| {
        seen["ladder"][side][i][0]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        price("asks", LADDER_LEVELS - 1) > price("bids", 0),
        "{seen}"
    );
    // The status bar counts updates per second and measures latency.
    let mut poll = Poll::new("the status bar to show updates/s and latency");
    loop {
        let shown = page.probe(SHOWN).await;
        let rate = shown["rate"].as_str().unwrap_or("");
        let latency = shown["latency"].as_str().unwrap_or("");
        let per_sec = rate
            .strip_suffix(" upd/s")
            .and_then(|n| n.parse::<u64>().ok());
        if per_sec.is_some_and(|n| n > 0)
            && latency.starts_with("latency ")
            && latency.ends_with(" ms")
        {
            eprintln!("demo page status bar: {rate}, {latency}");
            break;
        }
        poll.tick(&shown).await;
    }
    page.screenshot("ticker-demo-desktop.png").await;
    // A phone, in the other theme.
    page.viewport(390, 844, true).await;
    page.eval("document.getElementById('theme').click()").await;
    page.screenshot("ticker-demo-phone.png").await;

    // The filter box narrows the quotes to the symbols typed, kept in the URL.
    page.eval("const f = document.getElementById('filter'); f.value = 'aapl, BTC-USD'; f.dispatchEvent(new Event('change'))")
        .await;
    let mut poll = Poll::new("the filter to leave AAPL and BTC-USD");
    loop {
        let shown = page.probe(SHOWN).await;
        let mut rows: Vec<&String> = shown["rows"]
            .as_object()
            .map(|r| r.keys().collect())
            .unwrap_or_default();
        rows.sort();
        if rows == ["quotes.AAPL", "quotes.BTC-USD"]
            && shown["search"]
                .as_str()
                .is_some_and(|s| s.contains("symbols=AAPL,BTC-USD"))
        {
            break;
        }
        poll.tick(&shown).await;
    }

    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    server.shutdown().await;
}

/// The page docs/client.md tells people to copy, as written there.
fn docs_example() -> String {
    let doc = include_str!("../docs/client.md");
    let start = doc
        .find("```html\n")
        .expect("docs/client.md has an html example")
        + 8;
    let len = doc[start..].find("```").expect("the example ends");
    doc[start..start + len].to_owned()
}

/// Serves `page` to every request on `listener` (a site other than
/// tickcast), until the test ends.
fn serve_page(listener: tokio::net::TcpListener, page: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = tokio::time::timeout(DEADLINE, stream.read(&mut head)).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_example_page_works_from_another_site() {
    // The example's site, on its own port: a different origin.
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_addr = site.local_addr().unwrap();
    let (addr, feed) = (free_port(), free_port());
    let mut server = tickcast_binary(addr)
        .args(["--feed", &format!("tcp:{feed}")])
        .args(["--allowed-origin", &format!("http://{site_addr}")])
        .spawn()
        .expect("the tickcast binary starts");
    wait_healthy(addr).await;
    let example = docs_example().replace("127.0.0.1:8080", &addr.to_string());
    assert!(example.contains(&format!("ws://{addr}/ws")), "{example}");
    serve_page(site, example);
    let mut producer = wait_for(
        || async move { tokio::net::TcpStream::connect(feed).await.ok() },
        "the tcp feed to take connections",
    )
    .await;

    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-example-{}", std::process::id()));
    let (mut chromium, mut page) = open(&format!("http://{site_addr}/"), &profile).await;
    let probe = "JSON.stringify({status: document.getElementById('status').textContent, \
                 bid: document.getElementById('bid').textContent, ask: document.getElementById('ask').textContent})";
    for (bid, ask) in [(101.25, 101.5), (101.5, 101.75)] {
        let line = json!({"channel": "quotes.AAPL", "data": {"bid": bid, "ask": ask, "volume": 7}});
        tokio::io::AsyncWriteExt::write_all(&mut producer, format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut poll = Poll::new("the docs example to show the published quote");
        loop {
            let shown = page.probe(probe).await;
            if shown == json!({"status": "open", "bid": bid.to_string(), "ask": ask.to_string()}) {
                break;
            }
            poll.tick(&format!("{shown} (page errors {:?})", page.errors))
                .await;
        }
    }
    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = chromium.kill().await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}
