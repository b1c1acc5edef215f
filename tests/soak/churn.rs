//! Churning WebSocket clients (tokio-tungstenite, independent of the
//! server's fastwebsockets): connect, subscribe, read, unsubscribe,
//! disconnect, reconnect and resume with `since` and `epoch`, until the churn
//! ends. A stalled client stops reading for seconds at a time, with a small
//! receive buffer so that the server's side backs up (as in
//! tests/slow_consumer.rs and the loadgen's `--stalled`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::feed::{merge_channel, stream_channel, MERGE_CHANNELS, STREAM_CHANNELS};
use super::follower::Follower;
use super::server;
use super::Tally;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server's final states of the producer's channels, published once the
/// producer has stopped and the server has applied all it sent.
pub type Finals = watch::Receiver<Option<Arc<HashMap<String, Value>>>>;

/// What every client shares.
pub struct Ctx {
    pub addr: SocketAddr,
    pub tally: Tally,
    /// The churn is over: connected clients settle, the others leave.
    pub stop: CancellationToken,
    pub finals: Finals,
}

/// Longest a connected client may take, after the feeds stop, to reach the
/// server's final state on every channel it subscribes to (`max_hz` holds
/// diffs back for up to a second).
const SETTLE: Duration = Duration::from_secs(20);

const SYNTHETIC_NAMES: [&str; 4] = ["quotes.AAPL", "quotes.MSFT", "quotes.BTC-USD", "scores.>"];
const PATTERNS: [&str; 3] = ["soak.*", "trades.*", "quotes.*"];
const FIELDS: [&str; 8] = ["n", "g", "f0", "f1", "o", "px", "bid", "ask"];

/// One subscribe: targets, `fields`, `max_hz`.
#[derive(Clone)]
struct Plan {
    targets: Vec<String>,
    fields: Option<Vec<String>>,
    max_hz: Option<f64>,
}

fn random_target(rng: &mut SmallRng) -> String {
    match rng.gen_range(0..10) {
        0..=4 => merge_channel(rng.gen_range(0..MERGE_CHANNELS)),
        5..=6 => stream_channel(rng.gen_range(0..STREAM_CHANNELS)),
        7..=8 => SYNTHETIC_NAMES.choose(rng).unwrap().to_string(),
        _ => PATTERNS.choose(rng).unwrap().to_string(),
    }
}

fn random_plan(rng: &mut SmallRng) -> Plan {
    let mut targets: Vec<String> = (0..rng.gen_range(1..=3))
        .map(|_| random_target(rng))
        .collect();
    targets.sort();
    targets.dedup();
    let fields = rng.gen_bool(0.3).then(|| {
        let count = rng.gen_range(1..=3);
        let mut f: Vec<String> = FIELDS
            .choose_multiple(rng, count)
            .map(|f| f.to_string())
            .collect();
        f.sort();
        f
    });
    // `max_hz` is refused on stream channels: only where none is named.
    let any_stream = targets.iter().any(|t| t.starts_with("trades."));
    let max_hz = (!any_stream && rng.gen_bool(0.3)).then(|| *[1.0, 2.0, 5.0].choose(rng).unwrap());
    Plan {
        targets,
        fields,
        max_hz,
    }
}

async fn connect(addr: SocketAddr, narrow: bool) -> Result<Ws, String> {
    let stream = if narrow {
        // A small receive buffer and a network-sized MSS: once this client
        // stops reading, the server's writes back up after some KB.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(4096)
            .map_err(|e| e.to_string())?;
        socket.set_tcp_mss(1460).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let socket = TcpSocket::from_std_stream(socket.into());
        socket.connect(addr).await.map_err(|e| e.to_string())?
    } else {
        TcpStream::connect(addr).await.map_err(|e| e.to_string())?
    };
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(stream))
            .await
            .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Connects within 10 s and counts it; a failure is a violation, reported
/// here (`None`: the client gives up).
async fn connect_counted(ctx: &Ctx, who: &str, narrow: bool) -> Option<Ws> {
    match timeout(Duration::from_secs(10), connect(ctx.addr, narrow)).await {
        Ok(Ok(ws)) => {
            Tally::bump(&ctx.tally.connects);
            Some(ws)
        }
        Ok(Err(e)) => {
            ctx.tally.violation(format!("{who}: connect failed: {e}"));
            None
        }
        Err(_) => {
            ctx.tally
                .violation(format!("{who}: connect took over 10 s"));
            None
        }
    }
}

/// How reading a connection ended.
enum End {
    /// The time asked for passed.
    Elapsed,
    /// The churn ended.
    Stopped,
    /// The server sent a close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Dropped(String),
}

/// Reads and applies messages until `until` (or `stop`, when given).
async fn pump(
    f: &mut Follower,
    ws: &mut Ws,
    until: Instant,
    stop: Option<&CancellationToken>,
    tally: &Tally,
) -> End {
    loop {
        let message = tokio::select! {
            _ = async { stop.unwrap().cancelled().await }, if stop.is_some() => return End::Stopped,
            _ = sleep_until(until) => return End::Elapsed,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if let Some(resubscribe) = f.on_text(text.as_str(), tally) {
                    if let Err(e) = ws.send(Message::text(resubscribe)).await {
                        return End::Dropped(format!("sending a resubscribe: {e}"));
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return End::Closed(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Some(Ok(Message::Binary(_))) => {
                tally.violation("the server sent a binary frame".into())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return End::Dropped(e.to_string()),
            None => return End::Dropped("end of stream".into()),
        }
    }
}

/// Sends a close (1000) and reads until the server's answer, bounded.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// A client that reads everything, churning until the churn ends, then
/// settling on the server's final state if it is connected at that moment.
pub async fn reader(ctx: Arc<Ctx>, n: u64) {
    let who = format!("reader {n}");
    let mut rng = SmallRng::seed_from_u64(n);
    let mut f = Follower::new(who.clone());
    let mut plans: Vec<Plan> = (0..rng.gen_range(1..=2))
        .map(|_| random_plan(&mut rng))
        .collect();
    // Spread the first connects over a second.
    sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
    while !ctx.stop.is_cancelled() {
        let Some(mut ws) = connect_counted(&ctx, &who, false).await else {
            return;
        };
        f.new_connection();
        if rng.gen_bool(0.25) {
            plans = (0..rng.gen_range(1..=2))
                .map(|_| random_plan(&mut rng))
                .collect();
        }
        if rng.gen_bool(0.1) {
            f.pretend_a_restart();
        }
        let mut sent_ok = true;
        for plan in &plans {
            let request = f.subscribe(&plan.targets, plan.fields.clone(), plan.max_hz, &ctx.tally);
            sent_ok &= ws.send(Message::text(request)).await.is_ok();
        }
        let end = if sent_ok {
            live(&ctx, &mut f, &mut ws, &mut rng).await
        } else {
            End::Dropped("sending the subscriptions failed".into())
        };
        match end {
            End::Elapsed => {
                if rng.gen_bool(0.5) {
                    close(&mut ws).await;
                } else {
                    Tally::bump(&ctx.tally.abrupt);
                }
            }
            End::Stopped => return settle(&ctx, &mut f, ws).await,
            End::Closed(1013) => Tally::bump(&ctx.tally.slow_closes),
            End::Closed(code) => {
                ctx.tally.violation(format!(
                    "{who}: the server closed a reading client with {code}"
                ));
            }
            End::Dropped(why) => {
                ctx.tally
                    .violation(format!("{who}: the server dropped a reading client: {why}"));
            }
        }
        drop(ws);
        sleep(Duration::from_millis(rng.gen_range(50..600))).await;
    }
}

/// One connection's life: read, and now and then unsubscribe, subscribe
/// more or ping, for one to six seconds.
async fn live(ctx: &Ctx, f: &mut Follower, ws: &mut Ws, rng: &mut SmallRng) -> End {
    let lifetime = Instant::now() + Duration::from_millis(rng.gen_range(1000..6000));
    loop {
        let next = (Instant::now() + Duration::from_millis(rng.gen_range(300..1500))).min(lifetime);
        match pump(f, ws, next, Some(&ctx.stop), &ctx.tally).await {
            End::Elapsed if next < lifetime => {}
            end => return end,
        }
        let request = match rng.gen_range(0..10) {
            0 | 1 => {
                let targets = f.targets();
                let Some(target) = targets.choose(rng) else {
                    continue;
                };
                Tally::bump(&ctx.tally.unsubscribes);
                f.unsubscribe(std::slice::from_ref(target))
            }
            2 | 3 => {
                let plan = random_plan(rng);
                f.subscribe(&plan.targets, plan.fields, plan.max_hz, &ctx.tally)
            }
            4 => f.ping(),
            _ => continue,
        };
        if let Err(e) = ws.send(Message::text(request)).await {
            return End::Dropped(format!("sending a request: {e}"));
        }
    }
}

/// After the churn: the producer's channels must reach the server's final
/// states; the synthetic feed never stops, so its channels are compared
/// with the server's snapshot whenever the client holds the same seq.
async fn settle(ctx: &Ctx, f: &mut Follower, mut ws: Ws) {
    if settle_ours(ctx, f, &mut ws).await && check_synthetic(ctx, f, &mut ws).await {
        Tally::bump(&ctx.tally.settled);
        close(&mut ws).await;
    }
}

/// Reads until `until`; false if the connection ended (recorded as a
/// violation, except a 1013 close, which a stream channel may bring).
async fn read_until(ctx: &Ctx, f: &mut Follower, ws: &mut Ws, until: Instant) -> bool {
    match pump(f, ws, until, None, &ctx.tally).await {
        End::Elapsed | End::Stopped => true,
        End::Closed(1013) => {
            Tally::bump(&ctx.tally.slow_closes);
            false
        }
        End::Closed(code) => {
            ctx.tally
                .violation(format!("closed with {code} while settling"));
            false
        }
        End::Dropped(why) => {
            ctx.tally
                .violation(format!("dropped while settling: {why}"));
            false
        }
    }
}

/// Once the final states are known, reads until every producer channel
/// subscribed to holds the server's final state.
async fn settle_ours(ctx: &Ctx, f: &mut Follower, ws: &mut Ws) -> bool {
    let deadline = Instant::now() + SETTLE;
    let mut finals = ctx.finals.clone();
    let mut left = Vec::new();
    while Instant::now() < deadline {
        let current = finals.borrow_and_update().clone();
        if let Some(finals) = current {
            left = f.unsettled(&finals);
            if left.is_empty() {
                return true;
            }
        }
        let next = (Instant::now() + Duration::from_millis(20)).min(deadline);
        if !read_until(ctx, f, ws, next).await {
            return false;
        }
    }
    let detail: Vec<String> = left
        .iter()
        .take(3)
        .map(|c| format!("{c}: {}", f.describe(c)))
        .collect();
    ctx.tally.violation(format!(
        "not at the server's final state {SETTLE:?} after the feeds stopped on {left:?}: {detail:?}"
    ));
    false
}

/// For up to two unfiltered synthetic channels: fetch the server's
/// snapshot, read until the client reaches its seq, and compare if it stops
/// there (with `max_hz`, or coalesced, it may pass over it: then try again).
/// With `fields` the client may never hold that seq: those are left out.
async fn check_synthetic(ctx: &Ctx, f: &mut Follower, ws: &mut Ws) -> bool {
    for channel in f.synthetic_channels().into_iter().take(2) {
        for _attempt in 0..3 {
            let path = format!("/channels/{channel}");
            let snapshot = match server::get(ctx.addr, &path, Duration::from_secs(10)).await {
                Ok(body) => serde_json::from_str::<Value>(&body).unwrap_or_default(),
                Err(e) => {
                    ctx.tally.violation(e);
                    return false;
                }
            };
            let Some(seq) = snapshot["seq"].as_u64() else {
                ctx.tally
                    .violation(format!("no snapshot of {channel}: {snapshot}"));
                return false;
            };
            // Held diffs go out within a second (max_hz >= 1).
            let until = Instant::now() + Duration::from_millis(1200);
            while f.held_seq(&channel).is_some_and(|held| held < seq) && Instant::now() < until {
                let next = Instant::now() + Duration::from_millis(20);
                if !read_until(ctx, f, ws, next).await {
                    return false;
                }
            }
            match f.matches_at(&channel, seq, &snapshot["data"]) {
                Some(true) => {
                    Tally::bump(&ctx.tally.synthetic_checked);
                    break;
                }
                Some(false) => {
                    ctx.tally.violation(format!(
                        "{channel} at seq {seq}: the server has {}, the client {}",
                        snapshot["data"],
                        f.describe(&channel)
                    ));
                    return false;
                }
                None => {}
            }
        }
    }
    true
}

/// A client that subscribes, then stops reading for seconds; afterwards it
/// either vanishes (an abrupt close) or reads again and follows the rule
/// (a stream channel will have closed it with 1013: it resumes with since).
pub async fn stalled(ctx: Arc<Ctx>, n: u64) {
    let who = format!("stalled {n}");
    let mut rng = SmallRng::seed_from_u64(1_000_000 + n);
    let mut f = Follower::new(who.clone());
    let targets: Vec<String> = vec!["soak.*".into(), "trades.*".into()];
    sleep(Duration::from_millis(rng.gen_range(0..2000))).await;
    while !ctx.stop.is_cancelled() {
        let Some(mut ws) = connect_counted(&ctx, &who, true).await else {
            return;
        };
        f.new_connection();
        let request = f.subscribe(&targets, None, None, &ctx.tally);
        if ws.send(Message::text(request)).await.is_err() {
            continue;
        }
        let read_for = Instant::now() + Duration::from_millis(rng.gen_range(100..800));
        if let End::Stopped = pump(&mut f, &mut ws, read_for, Some(&ctx.stop), &ctx.tally).await {
            return;
        }
        // The stall: nothing reads this socket (kept under the write timeout).
        Tally::bump(&ctx.tally.stalls);
        tokio::select! {
            _ = sleep(Duration::from_millis(rng.gen_range(3000..7000))) => {}
            _ = ctx.stop.cancelled() => return,
        }
        if rng.gen_bool(0.5) {
            Tally::bump(&ctx.tally.abrupt);
        } else {
            let until = Instant::now() + Duration::from_millis(rng.gen_range(1000..3000));
            match pump(&mut f, &mut ws, until, Some(&ctx.stop), &ctx.tally).await {
                End::Elapsed => close(&mut ws).await,
                End::Stopped => return,
                End::Closed(1013) => Tally::bump(&ctx.tally.slow_closes),
                End::Closed(code) => ctx
                    .tally
                    .violation(format!("{who}: closed with {code} after a stall")),
                // The server may drop a peer that accepted nothing for its
                // write timeout; the stall is kept shorter, but say so.
                End::Dropped(why) => Tally::bump_note(&ctx.tally, format!("{who}: dropped: {why}")),
            }
        }
        drop(ws);
        sleep(Duration::from_millis(rng.gen_range(100..800))).await;
    }
}
