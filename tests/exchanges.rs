//! Exchange feeds (`binance:`, `coinbase:`) against a fake exchange on
//! loopback that replays real recorded frames (tests/fixtures/exchanges/,
//! see its README): a WebSocket server and an HTTP server for the REST
//! depth snapshot, both real sockets, driven by a per-connection script.
//!
//! Every expected state is computed here from the raw frames by the test's
//! own straightforward book rebuild ([`Truth`]), not by tickcast's code.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::{http_get, start_server, try_wait_for, wait_for, wait_for_channel, Client, DEADLINE};
use tickcast::RunningServer;

// ---------------------------------------------------------------- fixtures

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/exchanges");

async fn gunzip_lines(name: &str) -> Vec<String> {
    let file = tokio::fs::File::open(format!("{FIXTURES}/{name}"))
        .await
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    let mut text = String::new();
    GzipDecoder::new(BufReader::new(file))
        .read_to_string(&mut text)
        .await
        .unwrap();
    text.lines().map(str::to_owned).collect()
}

/// One recorded Binance line: what the exchange sent, or a REST snapshot.
#[derive(Clone)]
enum Recorded {
    Frame(String),
    Snapshot { symbol: String, body: String },
}

/// The two hftbacktest captures merged by receive time.
async fn binance_recording() -> Vec<Recorded> {
    let mut timed = Vec::new();
    for symbol in ["BTCUSDT", "ETHUSDT"] {
        for line in gunzip_lines(&format!("binance-spot_2024-08-08_{symbol}.frames.gz")).await {
            let (ts, text) = line.split_once(' ').expect("`<ns> <text>`");
            let ts: u64 = ts.parse().unwrap();
            let item = if text.starts_with("{\"lastUpdateId\"") {
                Recorded::Snapshot {
                    symbol: symbol.to_owned(),
                    body: text.to_owned(),
                }
            } else {
                Recorded::Frame(text.to_owned())
            };
            timed.push((ts, item));
        }
    }
    timed.sort_by_key(|(ts, _)| *ts);
    timed.into_iter().map(|(_, item)| item).collect()
}

/// The cryptofeed Coinbase capture: `<ts>: <frame>` lines.
async fn coinbase_recording() -> Vec<String> {
    gunzip_lines("coinbase-pro_2021-04-17_4-products.capture.gz")
        .await
        .into_iter()
        .map(|l| l.split_once(": ").expect("`<ts>: <frame>`").1.to_owned())
        .collect()
}

/// The cryptofeed Coinbase Advanced Trade capture: the received frames of
/// its JSON lines.
async fn advanced_recording() -> Vec<String> {
    gunzip_lines("coinbase-advanced-trade_2026-08-09_ETH-USD.capture.jsonl.gz")
        .await
        .into_iter()
        .map(|l| serde_json::from_str::<Value>(&l).unwrap())
        .filter(|v| v["t"] == "recv")
        .map(|v| v["data"].as_str().unwrap().to_owned())
        .collect()
}

/// A decimal string as the record number the docs promise: the value,
/// trailing zeros gone, whole numbers as integers.
fn number(text: &str) -> Value {
    let v: f64 = text.parse().unwrap();
    if v.fract() == 0.0 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

// ------------------------------------------------------------------ truth

/// The order books as the raw frames say they are: price string -> size
/// string, rebuilt by the plainest rules (snapshot, then every later change).
#[derive(Default, Clone)]
struct Truth {
    books: BTreeMap<String, Book>,
}

#[derive(Default, Clone)]
struct Book {
    last_u: u64,
    bids: BTreeMap<String, String>,
    asks: BTreeMap<String, String>,
}

fn set_level(side: &mut BTreeMap<String, String>, price: &str, size: &str) {
    if size.parse::<f64>().unwrap() == 0.0 {
        side.remove(price);
    } else {
        side.insert(price.to_owned(), size.to_owned());
    }
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l[0].as_str().unwrap().to_owned(),
                l[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

impl Book {
    fn from_levels(last_u: u64, bids: &Value, asks: &Value) -> Self {
        let mut book = Book {
            last_u,
            ..Book::default()
        };
        for (p, q) in pairs(bids) {
            set_level(&mut book.bids, &p, &q);
        }
        for (p, q) in pairs(asks) {
            set_level(&mut book.asks, &p, &q);
        }
        book
    }

    /// The channel state tickcast must hold for this book.
    fn expected(&self) -> Value {
        let side = |levels: &BTreeMap<String, String>| -> Value {
            levels
                .iter()
                .map(|(p, q)| (p.clone(), number(q)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        json!({"bids": side(&self.bids), "asks": side(&self.asks)})
    }

    fn rest_body(&self) -> String {
        let side = |levels: &BTreeMap<String, String>| -> Value {
            levels.iter().map(|(p, q)| json!([p, q])).collect()
        };
        json!({"lastUpdateId": self.last_u, "bids": side(&self.bids), "asks": side(&self.asks)})
            .to_string()
    }

    fn advanced_snapshot(&self, product: &str) -> String {
        let side = |name: &str, levels: &BTreeMap<String, String>| -> Vec<Value> {
            levels
                .iter()
                .map(|(p, q)| json!({"side": name, "event_time": "2026-08-09T21:06:00Z", "price_level": p, "new_quantity": q}))
                .collect()
        };
        let mut updates = side("bid", &self.bids);
        updates.extend(side("offer", &self.asks));
        json!({"channel": "l2_data", "timestamp": "2026-08-09T21:06:00Z", "sequence_num": 0,
            "events": [{"type": "snapshot", "product_id": product, "updates": updates}]})
        .to_string()
    }

    fn coinbase_snapshot(&self, product: &str) -> String {
        let side = |levels: &BTreeMap<String, String>| -> Value {
            levels.iter().map(|(p, q)| json!([p, q])).collect()
        };
        json!({"type": "snapshot", "product_id": product, "bids": side(&self.bids), "asks": side(&self.asks)}).to_string()
    }
}

impl Truth {
    /// Binance: a REST snapshot starts a book; a diff newer than it changes it.
    fn binance(&mut self, item: &Recorded) {
        match item {
            Recorded::Snapshot { symbol, body } => {
                let v: Value = serde_json::from_str(body).unwrap();
                let book =
                    Book::from_levels(v["lastUpdateId"].as_u64().unwrap(), &v["bids"], &v["asks"]);
                self.books.insert(symbol.clone(), book);
            }
            Recorded::Frame(text) => {
                let v: Value = serde_json::from_str(text).unwrap();
                let d = &v["data"];
                if d["e"] != "depthUpdate" {
                    return;
                }
                let Some(book) = self.books.get_mut(d["s"].as_str().unwrap()) else {
                    return; // before its snapshot
                };
                if d["u"].as_u64().unwrap() <= book.last_u {
                    return;
                }
                for (p, q) in pairs(&d["b"]) {
                    set_level(&mut book.bids, &p, &q);
                }
                for (p, q) in pairs(&d["a"]) {
                    set_level(&mut book.asks, &p, &q);
                }
                book.last_u = d["u"].as_u64().unwrap();
            }
        }
    }

    /// Coinbase: a snapshot frame starts a book; l2updates change it.
    fn coinbase(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        let product = v["product_id"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("snapshot") => {
                self.books
                    .insert(product, Book::from_levels(0, &v["bids"], &v["asks"]));
            }
            Some("l2update") => {
                let book = self.books.get_mut(&product).expect("snapshot first");
                for change in v["changes"].as_array().unwrap() {
                    let side = if change[0] == "buy" {
                        &mut book.bids
                    } else {
                        &mut book.asks
                    };
                    set_level(
                        side,
                        change[1].as_str().unwrap(),
                        change[2].as_str().unwrap(),
                    );
                }
            }
            _ => {}
        }
    }

    /// Advanced Trade: `l2_data` snapshot and update events.
    fn advanced(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        if v["channel"] != "l2_data" {
            return;
        }
        for event in v["events"].as_array().unwrap() {
            let product = event["product_id"].as_str().unwrap().to_owned();
            if event["type"] == "snapshot" {
                self.books.insert(product.clone(), Book::default());
            }
            let book = self.books.get_mut(&product).expect("snapshot first");
            for u in event["updates"].as_array().unwrap() {
                let side = if u["side"] == "bid" {
                    &mut book.bids
                } else {
                    &mut book.asks
                };
                set_level(
                    side,
                    u["price_level"].as_str().unwrap(),
                    u["new_quantity"].as_str().unwrap(),
                );
            }
        }
    }
}

/// The last quote and trade per symbol, mapped as docs/feeds.md says.
fn binance_expected_quotes_and_trades(recording: &[Recorded]) -> BTreeMap<String, Value> {
    let mut expected = BTreeMap::new();
    for item in recording {
        let Recorded::Frame(text) = item else {
            continue;
        };
        let v: Value = serde_json::from_str(text).unwrap();
        let d = &v["data"];
        let symbol = d["s"].as_str().unwrap();
        if v["stream"].as_str().unwrap().ends_with("@bookTicker") {
            expected.insert(
                format!("quotes.{symbol}"),
                json!({"bid": number(d["b"].as_str().unwrap()), "bid_size": number(d["B"].as_str().unwrap()),
                       "ask": number(d["a"].as_str().unwrap()), "ask_size": number(d["A"].as_str().unwrap()),
                       "u": d["u"]}),
            );
        } else if d["e"] == "trade" {
            let side = if d["m"] == true { "sell" } else { "buy" };
            expected.insert(
                format!("trades.{symbol}"),
                json!({"price": number(d["p"].as_str().unwrap()), "size": number(d["q"].as_str().unwrap()),
                       "side": side, "id": d["t"], "exch_ts": d["T"].as_u64().unwrap() * 1_000_000}),
            );
        }
    }
    expected
}

// ---------------------------------------------------------- fake exchange

/// What one upstream connection does, step by step.
#[derive(Clone, Debug)]
enum Step {
    /// Send the recorded frames from where the last connection stopped up
    /// to (not including) this index (Binance: the REST snapshots among
    /// them are served by the HTTP side instead). A connection that drops
    /// early leaves the rest to the next one, so nothing is skipped.
    SendUntil(usize),
    /// The next frame is lost on the way: the raw book moves on, nothing is sent.
    Lose,
    /// Coinbase: send a snapshot of every product's raw book as it is now.
    Snapshots,
    /// Send a ping and wait for its pong.
    Ping,
    /// Send this text as a frame.
    Text(String),
    /// Read until the adapter sends a `subscribe`.
    AwaitSubscribe,
    /// Wait until the test calls [`Fake::proceed`].
    WaitProceed,
    /// Send one text frame of this many bytes.
    Huge(usize),
    /// Send the header of a 100-byte text frame and 10 bytes of it, then nothing.
    StallMidFrame,
    /// Keep the connection open and send nothing more.
    Hold,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Binance,
    Coinbase,
    /// Coinbase Advanced Trade: frames renumbered per connection.
    Advanced,
}

struct Fake {
    kind: Kind,
    binance: Vec<Recorded>,
    coinbase: Vec<String>,
    truth: Mutex<Truth>,
    scripts: Mutex<VecDeque<Vec<Step>>>,
    connections: AtomicUsize,
    rest_served: AtomicUsize,
    pongs: AtomicUsize,
    /// Connections that reached a `Hold` step (sent all they were to).
    held: AtomicUsize,
    /// The next recorded frame to send, over all connections.
    cursor: AtomicUsize,
    /// Coinbase subscribe messages received.
    subscribes: Mutex<Vec<Value>>,
    /// The REST paths asked for.
    rest_paths: Mutex<Vec<String>>,
    /// Advanced Trade: the `sequence_num` each recorded frame was sent with.
    numbered: Mutex<BTreeMap<usize, u64>>,
    ws_addr: Mutex<Option<SocketAddr>>,
    rest_addr: Mutex<Option<SocketAddr>>,
    /// Connections are accepted only once this is true, so a test can
    /// subscribe its client before the feed connects.
    gate: tokio::sync::watch::Sender<bool>,
    /// Opened by the test to let a `WaitProceed` step go on.
    proceed: tokio::sync::watch::Sender<bool>,
}

impl Fake {
    async fn start(kind: Kind, scripts: Vec<Vec<Step>>) -> Arc<Fake> {
        Self::start_gated(kind, scripts, false).await
    }

    /// With `closed`, no connection is accepted until [`Fake::open`].
    async fn start_gated(kind: Kind, scripts: Vec<Vec<Step>>, closed: bool) -> Arc<Fake> {
        let (binance, coinbase) = match kind {
            Kind::Binance => (binance_recording().await, Vec::new()),
            Kind::Coinbase => (Vec::new(), coinbase_recording().await),
            Kind::Advanced => (Vec::new(), advanced_recording().await),
        };
        let mut truth = Truth::default();
        // Binance's REST snapshots exist before the stream is read.
        for item in &binance {
            if let Recorded::Snapshot { .. } = item {
                truth.binance(item);
            }
        }
        let fake = Arc::new(Fake {
            kind,
            binance,
            coinbase,
            truth: Mutex::new(truth),
            scripts: Mutex::new(scripts.into()),
            connections: AtomicUsize::new(0),
            rest_served: AtomicUsize::new(0),
            pongs: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            subscribes: Mutex::new(Vec::new()),
            numbered: Mutex::new(BTreeMap::new()),
            rest_paths: Mutex::new(Vec::new()),
            ws_addr: Mutex::new(None),
            rest_addr: Mutex::new(None),
            gate: tokio::sync::watch::Sender::new(!closed),
            proceed: tokio::sync::watch::Sender::new(false),
        });
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        *fake.ws_addr.lock().unwrap() = Some(ws.local_addr().unwrap());
        *fake.rest_addr.lock().unwrap() = Some(rest.local_addr().unwrap());
        let f = fake.clone();
        let mut gate = fake.gate.subscribe();
        tokio::spawn(async move {
            let _ = gate.wait_for(|open| *open).await;
            while let Ok((tcp, _)) = ws.accept().await {
                let script = f
                    .scripts
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or_else(|| f.rest_of_recording());
                f.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(f.clone().serve_ws(tcp, script));
            }
        });
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = rest.accept().await {
                tokio::spawn(f.clone().serve_rest(tcp));
            }
        });
        fake
    }

    /// What a connection beyond the scripted ones does: what the exchange
    /// would (Coinbase: snapshots first), then the rest of the recording.
    fn rest_of_recording(&self) -> Vec<Step> {
        let n = match self.kind {
            Kind::Binance => self.binance.len(),
            Kind::Coinbase | Kind::Advanced => self.coinbase.len(),
        };
        match self.kind {
            Kind::Binance => vec![Step::SendUntil(n), Step::Hold],
            Kind::Coinbase | Kind::Advanced => {
                vec![Step::Snapshots, Step::SendUntil(n), Step::Hold]
            }
        }
    }

    /// Lets a `WaitProceed` step go on.
    fn proceed(&self) {
        self.proceed.send_replace(true);
    }

    /// Lets the feed connect.
    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// The feed spec pointing at this fake exchange.
    fn spec(&self, extra: &str) -> String {
        let ws = self.ws_addr.lock().unwrap().unwrap();
        let rest = self.rest_addr.lock().unwrap().unwrap();
        match self.kind {
            Kind::Binance => {
                format!("binance:BTCUSDT,ETHUSDT?ws_url=ws://{ws}&rest_url=http://{rest}{extra}")
            }
            Kind::Coinbase => {
                format!("coinbase:BAND-GBP,SKL-GBP,NU-GBP,NMR-EUR?ws_url=ws://{ws}{extra}")
            }
            Kind::Advanced => format!("coinbase:ETH-USD?api=advanced&ws_url=ws://{ws}{extra}"),
        }
    }

    /// Moves the raw books past frame `i`; returns the text to send, if any.
    fn advance(&self, i: usize) -> Option<String> {
        let mut truth = self.truth.lock().unwrap();
        match self.kind {
            Kind::Binance => match &self.binance[i] {
                Recorded::Snapshot { .. } => None,
                item @ Recorded::Frame(text) => {
                    truth.binance(item);
                    Some(text.clone())
                }
            },
            Kind::Coinbase => {
                truth.coinbase(&self.coinbase[i]);
                Some(self.coinbase[i].clone())
            }
            Kind::Advanced => {
                truth.advanced(&self.coinbase[i]);
                Some(self.coinbase[i].clone())
            }
        }
    }

    /// Advanced Trade numbers every message of a connection; the fake does
    /// too (a lost message takes its number with it).
    fn renumber(&self, text: String, counter: &mut u64, index: Option<usize>) -> String {
        if self.kind != Kind::Advanced {
            return text;
        }
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["sequence_num"] = json!(*counter);
        if let Some(i) = index {
            self.numbered.lock().unwrap().insert(i, *counter);
        }
        *counter += 1;
        v.to_string()
    }

    async fn serve_ws(self: Arc<Self>, tcp: TcpStream, script: Vec<Step>) {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        // Coinbase: the subscription comes first (Advanced Trade: one
        // message per channel).
        let subscriptions = match self.kind {
            Kind::Binance => 0,
            Kind::Coinbase => 1,
            Kind::Advanced => 4,
        };
        for _ in 0..subscriptions {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                return;
            };
            self.subscribes
                .lock()
                .unwrap()
                .push(serde_json::from_str(&text).unwrap());
        }
        let mut counter = 0u64;
        for step in script {
            let sent = match step {
                Step::SendUntil(end) => {
                    let mut ok = true;
                    while ok {
                        // Taken whether or not it gets through: the raw
                        // book has moved on either way.
                        let i = self.cursor.fetch_add(1, Ordering::SeqCst);
                        if i >= end {
                            self.cursor.fetch_sub(1, Ordering::SeqCst);
                            break;
                        }
                        if let Some(text) = self.advance(i) {
                            let text = self.renumber(text, &mut counter, Some(i));
                            ok = ws.send(Message::text(text)).await.is_ok();
                        }
                    }
                    ok
                }
                Step::Lose => {
                    let i = self.cursor.fetch_add(1, Ordering::SeqCst);
                    self.advance(i);
                    counter += 1;
                    true
                }
                Step::AwaitSubscribe => loop {
                    match tokio::time::timeout(DEADLINE, ws.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            self.subscribes.lock().unwrap().push(v.clone());
                            if v["type"] == "subscribe" {
                                break true;
                            }
                        }
                        Ok(Some(Ok(_))) => continue,
                        _ => return,
                    }
                },
                Step::WaitProceed => {
                    let mut proceed = self.proceed.subscribe();
                    let _ = proceed.wait_for(|go| *go).await;
                    true
                }
                Step::Snapshots => {
                    let books = self.truth.lock().unwrap().books.clone();
                    let mut ok = true;
                    for (product, book) in books {
                        let text = match self.kind {
                            Kind::Advanced => book.advanced_snapshot(&product),
                            _ => book.coinbase_snapshot(&product),
                        };
                        let text = self.renumber(text, &mut counter, None);
                        ok &= ws.send(Message::text(text)).await.is_ok();
                    }
                    ok
                }
                Step::Ping => {
                    if ws
                        .send(Message::Ping(b"are you there".to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // The adapter answers while it reads; it sends nothing else.
                    loop {
                        match tokio::time::timeout(DEADLINE, ws.next()).await {
                            Ok(Some(Ok(Message::Pong(payload)))) => {
                                assert_eq!(&payload[..], b"are you there");
                                self.pongs.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(Some(Ok(_))) => continue,
                            _ => return,
                        }
                    }
                    true
                }
                Step::Text(text) => ws.send(Message::text(text)).await.is_ok(),
                Step::Huge(bytes) => ws.send(Message::text("x".repeat(bytes))).await.is_ok(),
                Step::StallMidFrame => {
                    let raw = ws.get_mut();
                    // FIN + text, unmasked, length 100; then 10 bytes of it.
                    let _ = raw.write_all(&[0x81, 100]).await;
                    let _ = raw.write_all(b"{\"stream\":").await;
                    let _ = raw.flush().await;
                    // Hold the socket open until the adapter gives up on it.
                    let mut sink = [0u8; 64];
                    let _ = tokio::time::timeout(DEADLINE, raw.read(&mut sink)).await;
                    return;
                }
                Step::Hold => {
                    self.held.fetch_add(1, Ordering::SeqCst);
                    // Read (answering nothing) until the adapter closes.
                    while let Some(Ok(_)) = ws.next().await {}
                    return;
                }
            };
            if !sent {
                return;
            }
        }
        // The script's end: the connection drops (no close frame).
    }

    async fn serve_rest(self: Arc<Self>, mut tcp: TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let symbol = path
            .split("symbol=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .unwrap_or("")
            .to_owned();
        assert!(path.starts_with("/api/v3/depth?"), "{path}");
        self.rest_paths.lock().unwrap().push(path.clone());
        let body = self
            .truth
            .lock()
            .unwrap()
            .books
            .get(&symbol)
            .map(Book::rest_body);
        let response = match body {
            Some(body) => format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
            None => "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
        };
        let _ = tcp.write_all(response.as_bytes()).await;
        self.rest_served.fetch_add(1, Ordering::SeqCst);
    }
}

// ----------------------------------------------------------------- checks

async fn channel_data(server: &RunningServer, name: &str) -> Option<Value> {
    server
        .engine
        .snapshot(name)
        .await
        .unwrap()
        .map(|s| Value::Object(s.data))
}

/// Waits until channel `name` holds `expected`.
async fn wait_for_state(server: &RunningServer, name: &str, expected: &Value) {
    let found = try_wait_for(|| async {
        (channel_data(server, name).await.as_ref() == Some(expected)).then_some(())
    })
    .await;
    if found.is_none() {
        let held = channel_data(server, name).await.unwrap_or(Value::Null);
        panic!(
            "{name} never became the expected state: {}",
            differences(&held, expected, "")
        );
    }
}

/// The first few places where `held` and `expected` differ.
fn differences(held: &Value, expected: &Value, at: &str) -> String {
    match (held, expected) {
        (Value::Object(h), Value::Object(e)) => {
            let mut out = Vec::new();
            for key in h.keys().chain(e.keys().filter(|k| !h.contains_key(*k))) {
                let (hv, ev) = (
                    h.get(key).unwrap_or(&Value::Null),
                    e.get(key).unwrap_or(&Value::Null),
                );
                if hv != ev {
                    out.push(differences(hv, ev, &format!("{at}/{key}")));
                }
                if out.len() == 8 {
                    break;
                }
            }
            out.join("; ")
        }
        _ => format!("{at}: held {held}, expected {expected}"),
    }
}

/// Every book channel equals the raw book, and (Binance) the quotes and
/// trades equal the last recorded ones.
async fn check_books(server: &RunningServer, truth: &Truth) {
    for (symbol, book) in &truth.books {
        wait_for_state(server, &format!("book.{symbol}"), &book.expected()).await;
    }
}

async fn status(server: &RunningServer, name: &str) -> Value {
    wait_for_channel(server, &format!("feeds.{name}")).await;
    channel_data(server, &format!("feeds.{name}"))
        .await
        .unwrap()
}

async fn metrics(server: &RunningServer) -> String {
    http_get(server.addr, "/metrics").await.1
}

/// The count on /metrics of `reason` rejections of the feed named `feed`.
fn rejected(metrics: &str, feed: &str, reason: &str) -> u64 {
    let needle = format!("feed=\"{feed}\",result=\"rejected\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| {
            l.split_once(&needle)
                .map(|(_, n)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {needle} in /metrics"))
}

/// A per-feed figure on /metrics: `family` for the feed whose label
/// starts with `feed` (an exchange feed's label is its whole spec).
fn feed_figure(metrics: &str, family: &str, feed: &str) -> u64 {
    let start = format!("{family}{{feed=\"{feed}");
    metrics
        .lines()
        .find(|l| l.starts_with(&start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {start} in /metrics"))
}

fn fast_upstream_limits(settings: &mut tickcast::config::Settings) {
    settings.limits.upstream_backoff_base_ms = 10;
    settings.limits.upstream_backoff_max_ms = 50;
    settings.limits.upstream_silence_timeout_ms = 500;
    settings.limits.upstream_connect_timeout_ms = 5000;
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_books_quotes_and_trades_equal_the_raw_recording() {
    let n = binance_recording().await.len();
    let fake = Fake::start(
        Kind::Binance,
        vec![vec![Step::SendUntil(n), Step::Ping, Step::Hold]],
    )
    .await;
    let spec = fake.spec("");
    let server = start_server(&[&spec], |s| s.limits.upstream_silence_timeout_ms = 30_000).await;
    check_books(&server, &fake_final_truth(&fake).await).await;
    for (channel, expected) in binance_expected_quotes_and_trades(&fake.binance) {
        wait_for_state(&server, &channel, &expected).await;
    }
    // A ping from upstream is answered.
    let pongs = &fake.pongs;
    wait_for(
        || async { (pongs.load(Ordering::SeqCst) == 1).then_some(()) },
        "a pong",
    )
    .await;
    let status = status(&server, "binance").await;
    assert_eq!(status["state"], "up", "{status}");
    assert_eq!(status["exchange"], "binance");
    assert_eq!(status["rejects"], 0, "{status}");
    assert_eq!(fake.connections.load(Ordering::SeqCst), 1);
    // One snapshot per symbol was enough: no gap in this recording.
    assert_eq!(fake.rest_served.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_reconnects_after_a_drop_and_the_book_is_right_again() {
    let n = binance_recording().await.len();
    let half = n / 2;
    let scripts = vec![
        vec![Step::SendUntil(half)],
        vec![Step::SendUntil(n), Step::Hold],
    ];
    let fake = Fake::start(Kind::Binance, scripts).await;
    let server = start_server(&[&fake.spec("")], fast_upstream_limits_long_silence).await;
    check_books(&server, &fake_final_truth(&fake).await).await;
    assert_eq!(fake.connections.load(Ordering::SeqCst), 2);
    // A fresh snapshot per symbol on each connection.
    assert_eq!(fake.rest_served.load(Ordering::SeqCst), 4);
    let status = status(&server, "binance").await;
    assert_eq!(status["state"], "up");
    assert_eq!(status["reconnects"], 1, "{status}");
    let metrics = metrics(&server).await;
    assert_eq!(
        feed_figure(&metrics, "tickcast_feed_reconnects_total", "binance"),
        1
    );
    server.shutdown().await;
}

fn fast_upstream_limits_long_silence(settings: &mut tickcast::config::Settings) {
    fast_upstream_limits(settings);
    settings.limits.upstream_silence_timeout_ms = 30_000;
}

/// The raw books at the end of the recording.
async fn fake_final_truth(fake: &Arc<Fake>) -> Truth {
    let mut t = Truth::default();
    match fake.kind {
        Kind::Binance => binance_truth(&fake.binance).clone_into(&mut t),
        Kind::Coinbase => fake.coinbase.iter().for_each(|f| t.coinbase(f)),
        Kind::Advanced => fake.coinbase.iter().for_each(|f| t.advanced(f)),
    }
    t
}

/// Binance's books after `frames`: each symbol's REST snapshot first (the
/// recorder fetched it while diffs were already arriving, so diffs
/// recorded before it may be newer), then every diff newer than it.
fn binance_truth(frames: &[Recorded]) -> Truth {
    let mut t = Truth::default();
    for item in frames {
        if let Recorded::Snapshot { .. } = item {
            t.binance(item);
        }
    }
    for item in frames {
        if let Recorded::Frame(_) = item {
            t.binance(item);
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_gap_resyncs_and_clients_see_a_clear_then_the_raw_book() {
    let recording = binance_recording().await;
    let n = recording.len();
    let depth_of = |symbol: &str| -> Vec<usize> {
        (0..n)
            .filter(|&i| matches!(&recording[i], Recorded::Frame(t) if t.contains(&format!("{}@depth", symbol.to_lowercase()))))
            .collect()
    };
    let btc = depth_of("BTCUSDT");
    // Lose one BTCUSDT diff in the middle; the next one shows the gap.
    let (lost, next) = (btc[btc.len() / 2], btc[btc.len() / 2 + 1]);
    let scripts = vec![vec![
        Step::SendUntil(lost),
        Step::Lose,
        Step::SendUntil(next + 1),
        // Hold the stream until the client saw the re-synced book, so it
        // holds no diff sent after the snapshot (those would be applied
        // to it, rightly, before it is published).
        Step::WaitProceed,
        Step::SendUntil(n),
        Step::Hold,
    ]];
    let fake = Fake::start_gated(Kind::Binance, scripts, true).await;
    let server = start_server(&[&fake.spec("")], fast_upstream_limits_long_silence).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["book.*"]).await;
    fake.open();
    // The book at the re-sync point, by the test's own rebuild.
    let at_resync = { binance_truth(&recording[..=next]).books["BTCUSDT"].expected() };
    // The first sync creates the channel (a snapshot); the clear that
    // comes as an update is the re-sync's, and the next update on the
    // channel is the full book.
    let full = tokio::time::timeout(DEADLINE, async {
        let mut cleared = false;
        loop {
            let message = client.recv().await;
            if message["channel"] != "book.BTCUSDT" || message["type"] != "update" {
                continue;
            }
            if cleared {
                return message["data"].clone();
            }
            cleared = message["data"] == json!({"bids": null, "asks": null});
        }
    })
    .await
    .expect("a clear record after the gap");
    fake.proceed();
    assert!(
        full == at_resync,
        "the re-synced book is not the raw book at the re-sync point: {}",
        differences(&full, &at_resync, "")
    );
    check_books(&server, &fake_final_truth(&fake).await).await;
    let status = status(&server, "binance").await;
    assert_eq!(status["resyncs"], 1, "{status}");
    assert_eq!(status["reconnects"], 0, "{status}");
    let metrics = metrics(&server).await;
    assert_eq!(
        feed_figure(&metrics, "tickcast_feed_resyncs_total", "binance"),
        1
    );
    assert_eq!(
        feed_figure(&metrics, "tickcast_feed_reconnects_total", "binance"),
        0
    );
    assert_eq!(fake.rest_served.load(Ordering::SeqCst), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_silence_marks_the_feed_down_then_it_reconnects() {
    let n = binance_recording().await.len();
    let half = n / 2;
    let scripts = vec![
        // Sends half, then nothing while keeping the connection open.
        vec![Step::SendUntil(half), Step::Hold],
        vec![Step::SendUntil(n), Step::Hold],
    ];
    let fake = Fake::start_gated(Kind::Binance, scripts, true).await;
    let server = start_server(&[&fake.spec("")], fast_upstream_limits).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["feeds.*"]).await;
    fake.open();
    let down = tokio::time::timeout(DEADLINE, async {
        loop {
            let m = client.recv().await;
            if m["data"]["state"] == "down" {
                return m["data"].clone();
            }
        }
    })
    .await
    .expect("the status goes down");
    let reason = down["reason"].as_str().unwrap();
    assert!(reason.contains("nothing received for 500 ms"), "{reason}");
    // After the silent stretch, the last state stays, then it comes back.
    check_books(&server, &fake_final_truth(&fake).await).await;
    let status = status(&server, "binance").await;
    assert_eq!(status["state"], "up");
    assert!(status["reconnects"].as_u64().unwrap() >= 1, "{status}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_input_is_counted_and_nothing_else_stops() {
    let n = binance_recording().await.len();
    let scripts = vec![
        // Garbage is rejected and the connection goes on.
        vec![
            Step::SendUntil(100),
            Step::Text("this is not json".into()),
            Step::Text(r#"{"stream":"x","data":{"e":"kline"}}"#.into()),
            Step::SendUntil(200),
            // 10 MB in one frame: refused from its header, connection remade.
            Step::Huge(10 << 20),
        ],
        // A frame that never completes: the silence timeout ends it.
        vec![Step::SendUntil(300), Step::StallMidFrame],
        vec![Step::SendUntil(n), Step::Hold],
    ];
    let fake = Fake::start(Kind::Binance, scripts).await;
    // A second feed on the same server keeps flowing meanwhile.
    // A silence timeout well above the time the fake takes to make and
    // send the 10 MB frame on a loaded machine, so that frame is what ends
    // the first connection.
    let server = start_server(&[&fake.spec(""), "synthetic:200"], |s| {
        fast_upstream_limits(s);
        s.limits.upstream_silence_timeout_ms = 2000;
    })
    .await;
    check_books(&server, &fake_final_truth(&fake).await).await;
    let feed = fake.spec("");
    let m = metrics(&server).await;
    assert_eq!(rejected(&m, &feed, "invalid_json"), 1, "{m}");
    assert_eq!(rejected(&m, &feed, "unmapped"), 1);
    assert_eq!(rejected(&m, &feed, "too_long"), 1);
    // The 10 MB frame and the stall each cost a connection (and the
    // silence after the recording's end may cost more).
    assert!(fake.connections.load(Ordering::SeqCst) >= 3);
    let status = status(&server, "binance").await;
    assert_eq!(status["rejects"], 3, "{status}");
    assert!(status["reconnects"].as_u64().unwrap() >= 2, "{status}");
    // The synthetic feed was never held up: its records keep coming.
    let synthetic = server.feeds[1].clone();
    let before = synthetic.accepted();
    wait_for(
        || {
            let synthetic = synthetic.clone();
            async move { (synthetic.accepted() > before + 10).then_some(()) }
        },
        "the synthetic feed to go on",
    )
    .await;
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_books_quotes_and_trades_equal_the_raw_recording_across_a_reconnect() {
    let frames = coinbase_recording().await;
    let n = frames.len();
    let half = n / 2;
    let scripts = vec![
        vec![Step::SendUntil(half)],
        // As Coinbase does on subscribing: a snapshot of each book now.
        vec![Step::Snapshots, Step::SendUntil(n), Step::Ping, Step::Hold],
    ];
    let fake = Fake::start(Kind::Coinbase, scripts).await;
    let server = start_server(&[&fake.spec("&name=cb")], fast_upstream_limits_long_silence).await;
    check_books(&server, &fake_final_truth(&fake).await).await;
    // Quotes and trades: the last recorded ones, mapped by docs/feeds.md.
    let mut expected = BTreeMap::new();
    for text in &frames {
        let v: Value = serde_json::from_str(text).unwrap();
        let product = v["product_id"].as_str().unwrap_or_default();
        let exch_ts = || {
            // "2021-04-17T16:43:30.244075Z": whole seconds from the date, then the fraction.
            let t = v["time"].as_str().unwrap();
            let secs = 1_618_617_600 + // 2021-04-17T00:00:00Z
                t[11..13].parse::<u64>().unwrap() * 3600 + t[14..16].parse::<u64>().unwrap() * 60 + t[17..19].parse::<u64>().unwrap();
            let frac = format!("{:0<9}", &t[20..t.len() - 1]);
            secs * 1_000_000_000 + frac.parse::<u64>().unwrap()
        };
        let mut put = |channel: String, record: Value| {
            common::merge(expected.entry(channel).or_insert(json!({})), &record);
        };
        match v["type"].as_str().unwrap() {
            "ticker" => {
                put(
                    format!("quotes.{product}"),
                    json!({
                    "bid": number(v["best_bid"].as_str().unwrap()), "ask": number(v["best_ask"].as_str().unwrap()),
                    "sequence": v["sequence"], "exch_ts": exch_ts()}),
                );
            }
            kind @ ("match" | "last_match") => {
                let maker = v["side"].as_str().unwrap();
                let mut t = json!({"price": number(v["price"].as_str().unwrap()), "size": number(v["size"].as_str().unwrap()),
                    "side": if maker == "buy" { "sell" } else { "buy" }, "maker_side": maker,
                    "id": v["trade_id"], "sequence": v["sequence"], "exch_ts": exch_ts()});
                if kind == "last_match" {
                    t["last_match"] = json!(true);
                }
                put(format!("trades.{product}"), t);
            }
            _ => {}
        }
    }
    // Each record merges over the channel's state (so `last_match` stays
    // from the match replayed on subscribing).
    for (channel, want) in expected {
        wait_for_state(&server, &channel, &want).await;
    }
    let pongs = &fake.pongs;
    wait_for(
        || async { (pongs.load(Ordering::SeqCst) == 1).then_some(()) },
        "a pong",
    )
    .await;
    // Each connection subscribed to every product and channel.
    let subscribes = fake.subscribes.lock().unwrap().clone();
    assert_eq!(subscribes.len(), 2);
    for s in subscribes {
        assert_eq!(s["type"], "subscribe");
        assert_eq!(
            s["product_ids"],
            json!(["BAND-GBP", "SKL-GBP", "NU-GBP", "NMR-EUR"])
        );
        assert_eq!(
            s["channels"],
            json!(["level2_batch", "ticker", "matches", "heartbeat"])
        );
    }
    let status = status(&server, "cb").await;
    assert_eq!(status["exchange"], "coinbase");
    assert_eq!(status["reconnects"], 1, "{status}");
    assert_eq!(status["rejects"], 0, "{status}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_advanced_trade_books_quotes_and_trades_equal_the_raw_recording_across_a_gap() {
    let frames = advanced_recording().await;
    let n = frames.len();
    let l2: Vec<usize> = (0..n)
        .filter(|&i| frames[i].contains("\"l2_data\""))
        .collect();
    // Lose an l2 update in the middle; the next message shows the gap.
    let lost = l2[l2.len() / 2];
    let scripts = vec![vec![
        Step::SendUntil(lost),
        Step::Lose,
        Step::SendUntil(lost + 2),
        // The adapter resubscribes level2; the exchange answers with a snapshot.
        Step::AwaitSubscribe,
        Step::Snapshots,
        Step::SendUntil(n),
        Step::Hold,
    ]];
    let fake = Fake::start(Kind::Advanced, scripts).await;
    // The whole recorded book (23,334 levels at first) is kept.
    let spec = fake.spec("&depth=100000");
    let server = start_server(&[&spec], fast_upstream_limits_long_silence).await;
    // Big books (2.5 MB snapshot frames): let the fake finish sending
    // before comparing whole books.
    let held = &fake.held;
    wait_for(
        || async { (held.load(Ordering::SeqCst) == 1).then_some(()) },
        "the whole recording sent",
    )
    .await;
    check_books(&server, &fake_final_truth(&fake).await).await;
    // The last quote and trade, with the numbers the fake sent them under.
    let numbered = fake.numbered.lock().unwrap().clone();
    let (mut quote, mut trade) = (None, None);
    for (i, text) in frames.iter().enumerate() {
        let v: Value = serde_json::from_str(text).unwrap();
        let Some(&seq) = numbered.get(&i) else {
            continue;
        };
        let event = &v["events"][0];
        if v["channel"] == "ticker" {
            let t = &event["tickers"][0];
            let exch_ts = {
                // "2026-08-09T21:05:54.29826762Z"
                let ts = v["timestamp"].as_str().unwrap();
                let secs = 1_786_233_600 // 2026-08-09T00:00:00Z
                    + ts[11..13].parse::<u64>().unwrap() * 3600
                    + ts[14..16].parse::<u64>().unwrap() * 60
                    + ts[17..19].parse::<u64>().unwrap();
                secs * 1_000_000_000
                    + format!("{:0<9}", &ts[20..ts.len() - 1])
                        .parse::<u64>()
                        .unwrap()
            };
            quote = Some(json!({"bid": number(t["best_bid"].as_str().unwrap()),
                "bid_size": number(t["best_bid_quantity"].as_str().unwrap()),
                "ask": number(t["best_ask"].as_str().unwrap()),
                "ask_size": number(t["best_ask_quantity"].as_str().unwrap()),
                "sequence_num": seq, "exch_ts": exch_ts}));
        } else if v["channel"] == "market_trades" && event["type"] == "update" {
            let t = &event["trades"][0];
            let maker = t["side"].as_str().unwrap().to_lowercase();
            trade = Some((t["trade_id"].clone(), maker, seq));
        }
    }
    wait_for_state(&server, "quotes.ETH-USD", &quote.expect("a ticker")).await;
    let (id, maker, seq) = trade.expect("a trade");
    let held = channel_data(&server, "trades.ETH-USD").await.unwrap();
    assert_eq!(
        (
            &held["id"],
            held["maker_side"].as_str().unwrap(),
            held["sequence_num"].as_u64().unwrap()
        ),
        (&id, maker.as_str(), seq)
    );
    assert_eq!(held["side"], if maker == "buy" { "sell" } else { "buy" });
    let subscribes = fake.subscribes.lock().unwrap().clone();
    let channels: Vec<(String, String)> = subscribes
        .iter()
        .map(|s| {
            (
                s["type"].as_str().unwrap().to_owned(),
                s["channel"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        channels,
        pairs(&[
            ("subscribe", "level2"),
            ("subscribe", "ticker"),
            ("subscribe", "market_trades"),
            ("subscribe", "heartbeats"),
            ("unsubscribe", "level2"),
            ("subscribe", "level2")
        ])
    );
    let status = status(&server, "coinbase").await;
    assert_eq!(status["resyncs"], 1, "{status}");
    assert_eq!(status["reconnects"], 0, "{status}");
    assert_eq!(status["rejects"], 0, "{status}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binance_depth_caps_the_levels_kept_and_the_best_levels_stay_right() {
    let n = binance_recording().await.len();
    let fake = Fake::start(Kind::Binance, vec![vec![Step::SendUntil(n), Step::Hold]]).await;
    let server = start_server(
        &[&fake.spec("&depth=20")],
        fast_upstream_limits_long_silence,
    )
    .await;
    let held = &fake.held;
    wait_for(
        || async { (held.load(Ordering::SeqCst) == 1).then_some(()) },
        "the whole recording sent",
    )
    .await;
    let truth = fake_final_truth(&fake).await;
    for (symbol, book) in &truth.books {
        // The best five levels a side, by price, from the raw book.
        let best = |levels: &BTreeMap<String, String>, bids: bool| -> Vec<(String, Value)> {
            let mut sorted: Vec<_> = levels.iter().collect();
            sorted.sort_by(|a, b| {
                a.0.parse::<f64>()
                    .unwrap()
                    .total_cmp(&b.0.parse::<f64>().unwrap())
            });
            if bids {
                sorted.reverse();
            }
            sorted
                .into_iter()
                .take(5)
                .map(|(p, q)| (p.clone(), number(q)))
                .collect()
        };
        let expected = (best(&book.bids, true), best(&book.asks, false));
        let channel = format!("book.{symbol}");
        let found = try_wait_for(|| async {
            let held = channel_data(&server, &channel).await?;
            let side = |key: &str, bids: bool| -> Vec<(String, Value)> {
                let map = held[key].as_object().cloned().unwrap_or_default();
                assert!(
                    map.len() <= 20,
                    "{channel} {key}: {} levels kept",
                    map.len()
                );
                let strings: BTreeMap<String, String> = map
                    .iter()
                    .map(|(p, q)| (p.clone(), q.to_string()))
                    .collect();
                best(&strings, bids)
            };
            ((side("bids", true), side("asks", false)) == expected).then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "{channel}: the best levels never matched the raw book's"
        );
    }
    // The snapshots were asked for with the cap.
    let mut paths = fake.rest_paths.lock().unwrap().clone();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v3/depth?symbol=BTCUSDT&limit=20",
            "/api/v3/depth?symbol=ETHUSDT&limit=20"
        ]
    );
    server.shutdown().await;
}
