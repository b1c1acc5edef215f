//! Soak: the real `tickcast` binary, a synthetic feed and a `tcp:` feed (good
//! lines and bad), and several hundred clients churning for about a minute
//! (`TICKCAST_SOAK_SECS`, default 60): readers that connect, subscribe
//! (names and patterns, some with `fields`, some with `max_hz`), unsubscribe,
//! disconnect and resume with `since` and `epoch`; stalled readers; clients
//! that send malformed frames. Then:
//!
//! - no client that follows the protocol's rule saw a wrong state: gaps are
//!   counted and resynced, and on the producer's channels every state a
//!   client held matched the oracle at its seq; every client still connected
//!   when the producer stops ends with the server's exact state there, and
//!   holds the server's state of the (never stopping) synthetic channels at
//!   the seq it holds; a resume with a foreign epoch gets a resync;
//! - every good producer line was accepted, every bad one rejected;
//! - nothing leaked: connections and subscriptions on `/stats` go back to 0;
//! - the server's resident memory comes back within 10 % of its baseline
//!   (taken after a warm-up, before the churn);
//! - `/healthz` answered throughout, and the process never died.
//!
//! The server is a child process, so that its allocator (mimalloc) and its
//! memory are what ships; the test speaks only the public protocol and HTTP.

#[path = "soak/churn.rs"]
mod churn;
mod common;
#[path = "soak/feed.rs"]
mod feed;
#[path = "soak/follower.rs"]
mod follower;
#[path = "soak/malformed.rs"]
mod malformed;
#[path = "soak/server.rs"]
mod server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use churn::Ctx;
use feed::Producer;
use server::ChildServer;

/// Concurrent clients of each kind. Sized for two cores shared by the
/// (debug-built) server and this test.
const READERS: u64 = 300;
const STALLED: u64 = 30;
const MALFORMED: u64 = 20;
/// Updates per second from the synthetic feed.
const SYNTHETIC_RATE: u32 = 50;
/// One record from the producer per this interval (100/s over its 20
/// channels), and one bad line per `BAD_EVERY` records.
const PRODUCER_EVERY: Duration = Duration::from_millis(10);
const BAD_EVERY: u64 = 20;
/// How much the resident memory may end above its baseline.
const RSS_SLACK: f64 = 0.10;
/// Longest wait for the server to settle after the churn (sessions gone,
/// memory returned).
const SETTLE: Duration = Duration::from_secs(30);

fn soak_duration() -> Duration {
    let secs = std::env::var("TICKCAST_SOAK_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("TICKCAST_SOAK_SECS is a number of seconds")
        })
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Counts of what happened, and every violation of what a client relies on.
#[derive(Default)]
pub struct Tally {
    pub connects: AtomicU64,
    pub updates: AtomicU64,
    pub resumes: AtomicU64,
    pub resyncs: AtomicU64,
    /// Resumed channels answered with the updates missed.
    pub replays: AtomicU64,
    /// Resumes sent with an epoch not the server's.
    pub foreign_epochs: AtomicU64,
    pub gaps: AtomicU64,
    pub unsubscribes: AtomicU64,
    pub abrupt: AtomicU64,
    pub slow_closes: AtomicU64,
    pub stalls: AtomicU64,
    pub settled: AtomicU64,
    /// Synthetic channels found equal to the server's snapshot at the end.
    pub synthetic_checked: AtomicU64,
    pub malformed: AtomicU64,
    pub stalled_dropped: AtomicU64,
    violation_count: AtomicU64,
    violations: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
}

impl Tally {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A stalled client dropped without a close frame: allowed (a peer that
    /// accepts nothing may be dropped), reported.
    pub fn bump_note(&self, note: String) {
        Self::bump(&self.stalled_dropped);
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < 5 {
            notes.push(note);
        }
    }

    /// Records a violation (the first hundred in full; a broken server can
    /// make one per message).
    pub fn violation(&self, what: String) {
        Self::bump(&self.violation_count);
        let mut violations = self.violations.lock().unwrap();
        if violations.len() < 100 {
            violations.push(what);
        }
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn summary(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "connects {}, updates applied {}, resumes {} ({} with a foreign epoch), replays {}, resyncs {}, gaps {}, unsubscribes {}, \
             abrupt disconnects {}, 1013 closes {}, stalls {}, stalled dropped {}, settled at the end {} ({} synthetic channels compared), \
             malformed sent {}; notes {:?}",
            n(&self.connects),
            n(&self.updates),
            n(&self.resumes),
            n(&self.foreign_epochs),
            n(&self.replays),
            n(&self.resyncs),
            n(&self.gaps),
            n(&self.unsubscribes),
            n(&self.abrupt),
            n(&self.slow_closes),
            n(&self.stalls),
            n(&self.stalled_dropped),
            n(&self.settled),
            n(&self.synthetic_checked),
            n(&self.malformed),
            self.notes.lock().unwrap(),
        )
    }
}

/// Asks `/healthz` every 200 ms until `stop`; returns the failures and the
/// slowest answer.
async fn probe_health(
    addr: std::net::SocketAddr,
    stop: CancellationToken,
) -> (Vec<String>, Duration) {
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    while !stop.is_cancelled() {
        every.tick().await;
        let started = Instant::now();
        match server::get(addr, "/healthz", Duration::from_secs(5)).await {
            Ok(body) if body.trim() == "ok" => slowest = slowest.max(started.elapsed()),
            Ok(body) => failures.push(format!("/healthz said {body:?}")),
            Err(e) => failures.push(format!("{e} ({:?})", started.elapsed())),
        }
    }
    (failures, slowest)
}

/// Polls `probe` every 50 ms until it yields `Some`, or `limit` passes.
async fn wait_until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Every good line the producer sent was accepted, every bad one rejected.
async fn check_feed_counts(server: &ChildServer, producer: &Producer) {
    let stats = server.stats().await;
    let tcp = stats["feeds"]
        .as_array()
        .and_then(|feeds| {
            feeds
                .iter()
                .find(|f| f["name"].as_str().is_some_and(|n| n.starts_with("tcp")))
        })
        .unwrap_or_else(|| panic!("no tcp feed in /stats: {stats}"))
        .clone();
    let rejected: u64 = tcp["rejected"]
        .as_object()
        .map(|r| r.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or_default();
    let good: u64 = producer.sent.values().sum();
    assert_eq!(tcp["accepted"], good, "good lines accepted: {tcp}");
    assert_eq!(rejected, producer.bad_lines(), "bad lines rejected: {tcp}");
}

/// `/stats` if it shows no connections and no subscriptions.
async fn back_to_zero(server: &ChildServer) -> Option<serde_json::Value> {
    let stats = server.stats().await;
    (stats["connections"] == 0 && stats["subscriptions"] == 0).then_some(stats)
}

/// Waits until the server has applied everything the producer sent; returns
/// each channel's final state.
async fn final_states(
    server: &ChildServer,
    sent: &feed::Sent,
) -> HashMap<String, serde_json::Value> {
    let mut finals = HashMap::new();
    for (channel, &last) in sent {
        let data = wait_until(SETTLE, || async {
            match server.channel(channel).await {
                Some((seq, data)) if seq == last => Some(data),
                _ => None,
            }
        })
        .await
        .unwrap_or_else(|| panic!("the server never reached seq {last} on {channel}"));
        assert_eq!(
            data,
            feed::state(channel, last),
            "the server's own state of {channel} at seq {last}"
        );
        finals.insert(channel.clone(), data);
    }
    finals
}

/// How long the warm-up round lasts: long enough for stalls to fill
/// outboxes and for every kind of client to come and go.
const WARM_UP: Duration = Duration::from_secs(8);

/// What one round of clients left behind.
struct Round {
    producer: Producer,
    ctx: Arc<Ctx>,
    peak_rss: u64,
}

/// One round: the producer runs and every kind of client churns for
/// `length`; then the producer stops and the readers still connected
/// settle on the server's final states before everyone leaves.
async fn round(
    server: &mut ChildServer,
    mut producer: Producer,
    length: Duration,
    seed: u64,
) -> Round {
    let (finals_tx, finals) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        addr: server.addr,
        tally: Tally::default(),
        stop: CancellationToken::new(),
        finals,
    });
    let producer_stop = CancellationToken::new();
    let producing = tokio::spawn({
        let stop = producer_stop.clone();
        async move {
            producer.run(PRODUCER_EVERY, BAD_EVERY, stop).await;
            producer
        }
    });
    let mut clients = Vec::new();
    for n in seed..seed + READERS {
        clients.push(tokio::spawn(churn::reader(ctx.clone(), n)));
    }
    for n in seed..seed + STALLED {
        clients.push(tokio::spawn(churn::stalled(ctx.clone(), n)));
    }
    for n in seed..seed + MALFORMED {
        clients.push(tokio::spawn(malformed::run(ctx.clone(), n)));
    }
    let mut peak_rss = 0;
    let end = Instant::now() + length;
    while Instant::now() < end {
        sleep(Duration::from_millis(500)).await;
        server.assert_running();
        peak_rss = peak_rss.max(server.rss_kib());
    }
    ctx.stop.cancel();
    producer_stop.cancel();
    let producer = producing.await.expect("the producer");
    let finals = final_states(server, &producer.sent).await;
    finals_tx.send(Some(Arc::new(finals))).unwrap();
    for client in clients {
        client.await.expect("a client task panicked");
    }
    Round {
        producer,
        ctx,
        peak_rss,
    }
}

/// Fails with the first violations a round's clients saw.
fn assert_no_violations(round: &Round, what: &str) {
    let tally = &round.ctx.tally;
    let violations = tally.violations();
    assert!(
        violations.is_empty(),
        "{what}: {} violations, the first: {:#?}\n{}",
        tally.violation_count.load(Ordering::Relaxed),
        &violations[..violations.len().min(10)],
        tally.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_churning_clients_leave_no_trace() {
    let churn_for = soak_duration();
    let mut server = ChildServer::start(SYNTHETIC_RATE).await;
    let addr = server.addr;
    let health_stop = CancellationToken::new();
    // On a thread of its own, so that the clients' load on this test's
    // runtime does not count as the server's slowness.
    let health = std::thread::spawn({
        let stop = health_stop.clone();
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the health probe")
                .block_on(probe_health(addr, stop))
        }
    });

    // Warm-up: histories full, and one short round of every kind of client
    // come and gone, so that the baseline is a server that has served at
    // the soak's peak (its maps and allocator sized for it), not a fresh one.
    let mut producer = Producer::connect(server.feed).await;
    producer.burst(300).await;
    let warm = round(&mut server, producer, WARM_UP, 1_000_000).await;
    assert_no_violations(&warm, "warm-up");
    wait_until(SETTLE, || back_to_zero(&server))
        .await
        .expect("the warm-up's sessions are gone");
    let baseline = server.rss_kib();

    // The churn.
    let churn = round(&mut server, warm.producer, churn_for, 0).await;
    let tally = &churn.ctx.tally;
    check_feed_counts(&server, &churn.producer).await;
    let stats = server.stats().await;
    eprintln!(
        "soak: server counted {} slow-consumer closes, {} held diffs, {} coalesced diffs, {} updates in",
        stats["slow_consumer_closes"], stats["slow_consumer_holds"], stats["coalesced_diffs"], stats["updates_in"]
    );
    eprintln!("soak: {}", tally.summary());
    assert_no_violations(&churn, "churn");
    assert!(
        tally.settled.load(Ordering::Relaxed) > 0
            && tally.synthetic_checked.load(Ordering::Relaxed) > 0,
        "some readers were connected at the end, and compared: {}",
        tally.summary()
    );

    // Nothing leaked.
    let last = wait_until(SETTLE, || back_to_zero(&server)).await;
    assert!(
        last.is_some(),
        "sessions or subscriptions left {SETTLE:?} after every client left: {}",
        server.stats().await
    );
    let rss_ok = wait_until(SETTLE, || async {
        let rss = server.rss_kib();
        (rss as f64 <= baseline as f64 * (1.0 + RSS_SLACK)).then_some(rss)
    })
    .await;
    let now = server.rss_kib();
    let peak = churn.peak_rss.max(now);
    eprintln!("soak: RSS baseline {baseline} KiB, peak {peak} KiB, after {now} KiB");
    assert!(
        rss_ok.is_some(),
        "RSS {now} KiB is more than {}% over its baseline {baseline} KiB (peak {peak} KiB)",
        RSS_SLACK * 100.0
    );

    health_stop.cancel();
    let (failures, slowest) = health.join().expect("health probe");
    eprintln!("soak: slowest /healthz answer {slowest:?}");
    assert!(failures.is_empty(), "/healthz failed: {failures:?}");
    server.assert_running();
}
