//! Test servers speaking the protocol subset the loadgen needs, on 127.0.0.1:0.
//!
//! - [`start_ticker`]: every connection gets its own updates on the channels it subscribed to,
//!   one per channel every `interval`, following a [`Script`] that can skip a seq, start with a
//!   snapshot, or close with 1013 and answer the resubscribe with a resync snapshot.
//! - [`start_hub`]: a miniature of the uWS peer: a TCP NDJSON ingest whose records are numbered
//!   per channel and fanned out to the subscribers, optionally dropping one seq for everybody.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastwebsockets::{upgrade, Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tickcast::config::Settings;
use tickcast::RunningServer;
use tokio::io::{AsyncBufReadExt, BufReader, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;

type Io = TokioIo<hyper::upgrade::Upgraded>;
type Writer = Arc<Mutex<WebSocketWrite<WriteHalf<Io>>>>;

/// What the ticker server does on each connection.
#[derive(Debug, Clone)]
pub struct Script {
    /// Send a snapshot at this seq before the updates (None: no snapshot, like the uWS peer).
    pub snapshot_seq: Option<u64>,
    /// Never send this seq; the update after it still names it as `prev`.
    pub skip_seq: Option<u64>,
    pub interval: Duration,
    /// On a connection without `since`, close with 1013 after sending this seq.
    pub close_1013_after: Option<u64>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            snapshot_seq: None,
            skip_seq: None,
            interval: Duration::from_millis(10),
            close_1013_after: None,
        }
    }
}

pub struct TestServer {
    pub url: String,
    /// The hub's feed ingest.
    pub ingest: Option<SocketAddr>,
    pub connections: Arc<AtomicUsize>,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Serves WebSocket connections on 127.0.0.1:0, handing each upgraded one to `session`.
async fn serve<F, Fut>(session: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(upgrade::UpgradeFut) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), WebSocketError>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Relaxed);
            let session = session.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let session = session.clone();
                    async move {
                        let (response, fut) = upgrade::upgrade(&mut req)?;
                        tokio::spawn(async move {
                            let _ = session(fut).await;
                        });
                        Ok::<Response<Empty<Bytes>>, WebSocketError>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (url, connections)
}

async fn send(writer: &Writer, text: String) -> Result<(), WebSocketError> {
    writer
        .lock()
        .await
        .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
}

/// Reads frames until the client closes, passing each subscribe request to `on_subscribe`.
async fn read_loop<F>(fut: upgrade::UpgradeFut, mut on_subscribe: F) -> Result<(), WebSocketError>
where
    F: FnMut(serde_json::Value, Writer),
{
    let ws = fut.await?;
    let (mut rx, tx) = ws.split(tokio::io::split);
    let writer: Writer = Arc::new(Mutex::new(tx));
    loop {
        let w = writer.clone();
        let frame = rx
            .read_frame(&mut move |f| {
                let w = w.clone();
                async move { w.lock().await.write_frame(f).await }
            })
            .await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text => {
                let msg: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
                if msg["op"] == "subscribe" {
                    let reply = serde_json::json!({"type":"subscribed","id":msg["id"],"channels":msg["channels"]});
                    send(&writer, reply.to_string()).await?;
                    on_subscribe(msg, writer.clone());
                }
            }
            _ => {}
        }
    }
}

fn channels_of(msg: &serde_json::Value) -> Vec<String> {
    msg["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn update(channel: &str, seq: u64, prev: u64, data: &str) -> String {
    format!(
        r#"{{"type":"update","channel":"{channel}","seq":{seq},"prev":{prev},"ts":{},"data":{data}}}"#,
        now_ns()
    )
}

pub async fn start_ticker(script: Script) -> TestServer {
    let (url, connections) = serve(move |fut| {
        let script = script.clone();
        read_loop(fut, move |msg, writer| {
            tokio::spawn(tick(script.clone(), msg, writer));
        })
    })
    .await;
    TestServer {
        url,
        ingest: None,
        connections,
    }
}

/// Sends the script's updates on every subscribed channel until the connection closes.
async fn tick(
    script: Script,
    msg: serde_json::Value,
    writer: Writer,
) -> Result<(), WebSocketError> {
    let channels = channels_of(&msg);
    let resume = msg.get("since").and_then(|s| s.as_object()).cloned();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for ch in &channels {
        let start = match (&resume, script.snapshot_seq) {
            // A resume: answered with a resync snapshot ten seqs on (history "lost").
            (Some(since), _) => {
                let seq = since.get(ch).and_then(|v| v.as_u64()).unwrap_or(0) + 10;
                send(&writer, format!(r#"{{"type":"snapshot","channel":"{ch}","seq":{seq},"epoch":"e1","resync":true,"data":{{}}}}"#)).await?;
                seq
            }
            (None, Some(seq)) => {
                send(&writer, format!(r#"{{"type":"snapshot","channel":"{ch}","seq":{seq},"epoch":"e1","data":{{}}}}"#)).await?;
                seq
            }
            (None, None) => 0,
        };
        seqs.insert(ch.clone(), start);
    }
    let mut held: HashMap<String, u64> = seqs.clone();
    loop {
        tokio::time::sleep(script.interval).await;
        for ch in &channels {
            let seq = seqs.get_mut(ch).unwrap();
            *seq += 1;
            if Some(*seq) == script.skip_seq {
                continue;
            }
            let prev = if Some(*seq - 1) == script.skip_seq {
                *seq - 1
            } else {
                held[ch]
            };
            send(&writer, update(ch, *seq, prev, r#"{"px":1.5}"#)).await?;
            held.insert(ch.clone(), *seq);
            if resume.is_none() && Some(*seq) == script.close_1013_after {
                let mut w = writer.lock().await;
                return w.write_frame(Frame::close(1013, b"slow consumer")).await;
            }
        }
    }
}

/// A hub: records arriving on the ingest are numbered per channel and fanned out; the record
/// that would get seq `drop_seq` (per channel) is dropped for every subscriber.
pub async fn start_hub(drop_seq: Option<u64>) -> TestServer {
    let (fanout, _) = broadcast::channel::<(String, String)>(1 << 16);
    let ingest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ingest_addr = ingest.local_addr().unwrap();
    let tx = fanout.clone();
    tokio::spawn(async move {
        let mut seqs: HashMap<String, u64> = HashMap::new();
        while let Ok((stream, _)) = ingest.accept().await {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let rec: serde_json::Value = serde_json::from_str(&line).unwrap();
                let ch = rec["channel"].as_str().unwrap().to_string();
                let seq = seqs.entry(ch.clone()).or_insert(0);
                *seq += 1;
                if Some(*seq) == drop_seq {
                    continue;
                }
                let _ = tx.send((
                    ch.clone(),
                    update(&ch, *seq, *seq - 1, &rec["data"].to_string()),
                ));
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (url, connections) = serve(move |fut| {
        let fanout = fanout.clone();
        let stop = stop.clone();
        read_loop(fut, move |msg, writer| {
            let channels = channels_of(&msg);
            let mut rx = fanout.subscribe();
            let stop = stop.clone();
            tokio::spawn(async move {
                while let Ok((ch, text)) = rx.recv().await {
                    if stop.load(Relaxed) {
                        return;
                    }
                    if channels.contains(&ch) && send(&writer, text).await.is_err() {
                        return;
                    }
                }
            });
        })
    })
    .await;
    TestServer {
        url,
        ingest: Some(ingest_addr),
        connections,
    }
}

/// A short publisher-mode run: `clients` clients each on `per_client` of `channels` channels
/// named `prefix0..`, picked uniformly, fed at `rate` records/s through `feed` for a 500 ms
/// window after a 100 ms warm-up.
pub fn publisher_config(
    url: &str,
    feed: SocketAddr,
    (clients, channels, per_client): (usize, usize, usize),
    prefix: &str,
    rate: f64,
) -> tickcast_loadgen::Config {
    let mut cfg = tickcast_loadgen::Config::new(url);
    cfg.clients = clients;
    cfg.mix.channels = channels;
    cfg.mix.per_client = per_client;
    cfg.mix.pick = tickcast_loadgen::Pick::Uniform;
    cfg.mix.prefix = prefix.into();
    cfg.publish = Some(tickcast_loadgen::Publish { addr: feed, rate });
    cfg.duration = Duration::from_millis(500);
    cfg.warmup = Duration::from_millis(100);
    cfg
}

/// Starts tickcast with one `tcp:` feed on a free port; returns the server and the feed address
/// once the feed is listening (bounded wait).
pub async fn start_tickcast() -> (RunningServer, SocketAddr) {
    let settings = Settings {
        feeds: vec!["tcp:127.0.0.1:0".parse().unwrap()],
        stats_interval: None,
        ..Settings::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tickcast::start(listener, settings, CancellationToken::new())
        .await
        .expect("tickcast starts");
    let feed = server.feeds[0].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut every = tokio::time::interval(Duration::from_millis(5));
    let addr = loop {
        every.tick().await;
        if let Some(addr) = feed.local_addr() {
            break addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tcp feed did not start listening within 10 s"
        );
    };
    (server, addr)
}
