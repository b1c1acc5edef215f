//! The TCP feed: a listener that producers connect to and write NDJSON feed
//! records to (one record per line, as in a replay file). Nothing is written
//! back except a refusal; rejected lines are counted (and logged within the
//! feed's log budget) with the producer's address.
//!
//! Each connection is read by its own task, so the records of one connection
//! reach the ring in the order they were written (records of different
//! connections interleave). Line numbers in rejections count per connection.
//!
//! Limits (`[limits]`, docs/architecture.md "Ingest limits"):
//! - At most `max_producers_per_feed` connections are served at once. The
//!   accept loop never waits for a slot: a connection past the limit is
//!   accepted, sent one line `{"error":"too many producers ..."}` and
//!   closed, so it learns why at once instead of hanging in the listen
//!   backlog behind connections that may never send anything again.
//! - A producer that completes no line for `producer_idle_timeout_ms` (it
//!   sends nothing, or trickles half a line) is closed, freeing its slot.
//! - Each served connection buffers at most one line (1 MiB,
//!   `record::MAX_LINE_BYTES`), so memory stays bounded.
//!
//! With a publish key configured (`--publish-key`), a producer's first
//! line must be `{"auth":"KEY"}`; one that sends anything else, or another
//! key, is sent an `{"error":...}` line and closed before any of its
//! records is taken. Line numbers in rejections then count from the line
//! after the auth line. Without a key the feed must listen on loopback
//! (start-up refuses anything else; see `auth::publish`).
//!
//! Bind to port 0 to get a free port; the bound address is logged and kept in
//! [`FeedStats::local_addr`](super::FeedStats::local_addr).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::log_budget::{LogBudget, Verdict};
use super::{FeedOutput, FeedStats};
use crate::auth::publish::{AuthLineError, MAX_AUTH_LINE};
use crate::auth::PublishKey;
use crate::record::{FeedRecord, LineReader, RawLine};

/// Pause after a failed `accept` (typically: out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long shutdown waits for connection tasks to finish their current
/// record before giving up on them (they stop at their next line anyway).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a refused connection is given to take its error line and
/// close: the refusal reads (and drops) what the producer already sent, so
/// closing does not reset the connection before the line arrives.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Listens on `addr` and ingests every producer's lines until `shutdown`.
pub async fn run(addr: SocketAddr, out: FeedOutput, shutdown: CancellationToken) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen for tcp producers on {addr}: {e}; pick a free port \
                 (tcp:127.0.0.1:0 takes any) or stop what holds this one"
            ),
        )
    })?;
    serve(listener, out, shutdown).await
}

/// Accepts producers on `listener`, serving at most the feed's
/// `max_producers` at once and refusing the rest.
async fn serve(
    listener: TcpListener,
    out: FeedOutput,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    out.stats().set_local_addr(local);
    let feed = out.stats().name.clone();
    let max_producers = out.limits().max_producers;
    let idle_ms = out.limits().producer_idle_timeout.as_millis() as u64;
    tracing::info!(feed = %feed, addr = %local, max_producers, idle_ms, "tcp feed listening");
    let slots = Arc::new(Semaphore::new(max_producers));
    // Refusals in progress are bounded too: past this, a connection is
    // simply closed (a flood of connects must not become a flood of tasks).
    let refusals = Arc::new(Semaphore::new(max_producers));
    let refusal_log = Arc::new(RefusalLog::new(out.limits().log_budget()));
    let producers = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(feed = %feed, "accepting a producer failed: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY_DELAY) => continue,
                }
            }
        };
        let span = tracing::info_span!("producer", feed = %feed, %peer);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let stats = out.stats().clone();
                let refusals = refusal_log.clone();
                let task = produce(stream, out.clone(), shutdown.clone(), slot, refusals);
                // A panic ends this producer's connection only.
                let contained = async move {
                    if let Err(panic) = crate::fault::contain(task).await {
                        stats.panicked("a producer connection", &panic);
                    }
                };
                producers.spawn(contained.instrument(span));
            }
            Err(_) => {
                out.stats()
                    .producers_refused
                    .fetch_add(1, Ordering::Relaxed);
                let verdict = refusal_log.admit();
                log_refusal(&feed, &peer, max_producers, verdict);
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    producers.spawn(refuse(stream, max_producers, permit).instrument(span));
                }
            }
        }
    }
    // Refuse new connections at once, then let the readers see the signal.
    drop(listener);
    producers.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, producers.wait())
        .await
        .is_err()
    {
        tracing::warn!(feed = %feed, left = producers.len(),
            "producer connections still busy after shutdown; leaving them");
    }
    Ok(())
}

/// The log budget shared by every refusal of one feed (too many
/// producers, no or a wrong publish key): a flood of connects cannot flood
/// the log.
struct RefusalLog {
    budget: Mutex<LogBudget>,
    started: Instant,
}

impl RefusalLog {
    fn new(budget: LogBudget) -> Self {
        Self {
            budget: Mutex::new(budget),
            started: Instant::now(),
        }
    }

    fn admit(&self) -> Verdict {
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.admit(now_ns)
    }
}

fn log_refusal(feed: &str, peer: &SocketAddr, max_producers: usize, verdict: Verdict) {
    match verdict {
        Verdict::Log { suppressed_before } => tracing::warn!(
            feed, %peer, max_producers, refused_unlogged_before = suppressed_before,
            "producer refused: all slots busy (limits.max_producers_per_feed)"
        ),
        Verdict::Suppress { first: true } => tracing::warn!(
            feed,
            "more producers refused; counting them without logging (see /metrics)"
        ),
        Verdict::Suppress { first: false } => {}
    }
}

/// The one line a refused producer gets.
pub fn refusal_line(max_producers: usize) -> String {
    format!(
        "{{\"error\":\"too many producers on this feed (limits.max_producers_per_feed = {max_producers})\"}}\n"
    )
}

/// Tells a producer past the limit why, then closes. Bounded by
/// [`REFUSAL_LINGER`]; what it sent is read and dropped meanwhile.
async fn refuse(stream: TcpStream, max_producers: usize, _permit: OwnedSemaphorePermit) {
    let line = refusal_line(max_producers);
    say_and_close(stream, &line).await;
}

/// Sends a refused producer `line`, closes its write side and drops what
/// it still sends, for at most [`REFUSAL_LINGER`] in all.
async fn say_and_close(mut stream: TcpStream, line: &str) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(line.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Reads one producer's lines until it closes, goes idle or `shutdown`;
/// `slot` is given back when this returns.
async fn produce(
    mut stream: TcpStream,
    out: FeedOutput,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
    refusal_log: Arc<RefusalLog>,
) {
    let _connected = Connected::count(out.stats().clone(), slot);
    let stats = out.stats().clone();
    tracing::info!("producer connected");
    let idle = out.limits().producer_idle_timeout;
    let mut input = BufReader::new(&mut stream);
    if let Some(key) = out.publish_key() {
        let checked = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            checked = tokio::time::timeout(idle, authenticate(&mut input, key)) => checked,
        };
        let refused = match checked {
            Ok(Ok(())) => None,
            Ok(Err(Some(why))) => Some(why),
            // The producer left, or sent no complete line in time.
            Ok(Err(None)) | Err(_) => Some(AuthLineError::NotAnAuthLine),
        };
        if let Some(why) = refused {
            drop(input);
            return refuse_unauthorized(stream, why, &stats, &refusal_log).await;
        }
    }
    let no_pacing = |_: &FeedRecord| std::future::ready(());
    let result = out
        .ingest_lines_with_timeout(input, &shutdown, no_pacing, idle)
        .await;
    match result {
        Ok(c) => tracing::info!(
            lines = c.lines,
            accepted = c.accepted,
            rejected = c.rejected,
            blank = c.blank,
            "producer disconnected"
        ),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            stats.producers_idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                idle_ms = idle.as_millis() as u64,
                "producer closed: no complete line within limits.producer_idle_timeout_ms"
            );
            // Best effort: the socket is fresh enough to take a short line.
            let line = format!(
                "{{\"error\":\"no complete line for {} ms (limits.producer_idle_timeout_ms); closing\"}}\n",
                idle.as_millis()
            );
            let _ = stream.try_write(line.as_bytes());
        }
        Err(e) => tracing::warn!("producer connection failed: {e}"),
    }
}

/// Reads the producer's first line and checks the key in it. `Err(None)`:
/// the connection ended or failed first.
async fn authenticate(
    input: &mut BufReader<&mut TcpStream>,
    key: &PublishKey,
) -> Result<(), Option<AuthLineError>> {
    // At most MAX_AUTH_LINE bytes are kept, whatever the producer sends.
    let mut lines = LineReader::with_max_line(input, MAX_AUTH_LINE);
    match lines.next_line().await {
        Ok(Some((_, RawLine::Bytes(line)))) => key.accepts_line(line).map_err(Some),
        Ok(Some((_, RawLine::TooLong))) => Err(Some(AuthLineError::NotAnAuthLine)),
        Ok(None) | Err(_) => Err(None),
    }
}

/// Tells a producer without the right key why, logs it (within the feed's
/// refusal log budget) and closes, bounded by [`REFUSAL_LINGER`].
async fn refuse_unauthorized(
    stream: TcpStream,
    why: AuthLineError,
    stats: &FeedStats,
    refusal_log: &RefusalLog,
) {
    stats.producers_unauthorized.fetch_add(1, Ordering::Relaxed);
    match refusal_log.admit() {
        Verdict::Log { suppressed_before } => tracing::warn!(
            refused_unlogged_before = suppressed_before,
            "producer refused: {why}"
        ),
        Verdict::Suppress { first: true } => {
            tracing::warn!("more producers refused; counting them without logging (see /metrics)")
        }
        Verdict::Suppress { first: false } => {}
    }
    let line = why.reply_line();
    say_and_close(stream, &line).await;
}

/// Counts an open producer connection and holds its slot while it lives.
struct Connected {
    stats: Arc<FeedStats>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Connected {
    fn count(stats: Arc<FeedStats>, slot: OwnedSemaphorePermit) -> Self {
        stats.producers.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            slot: Some(slot),
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        // The slot first: once the count drops, a new producer is served.
        drop(self.slot.take());
        self.stats.producers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{FeedLimits, RingItem};
    use crate::ring::{Consumer, Ring};

    /// Upper bound for anything a test waits for; never reached when it passes.
    const DEADLINE: Duration = Duration::from_secs(20);

    fn output() -> (FeedOutput, Consumer<RingItem>, Arc<FeedStats>) {
        let ring = Ring::with_capacity(256);
        let consumer = ring.consumer();
        let stats = Arc::new(FeedStats::new("tcp".into()));
        (
            FeedOutput::new(ring.producer(), stats.clone()),
            consumer,
            stats,
        )
    }

    fn line(tag: &str, n: u64) -> String {
        format!("{{\"channel\":\"t.{tag}\",\"data\":{{\"n\":{n}}}}}\n")
    }

    /// The next record as (channel, n), failing the test at the deadline.
    async fn next(consumer: &mut Consumer<RingItem>) -> (String, u64) {
        let record = tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .expect("a record before the deadline")
            .expect("ring open")
            .take()
            .expect("an untaken record");
        let n = record.data["n"].as_u64().expect("n");
        (record.channel.to_string(), n)
    }

    /// Serves on a fresh 127.0.0.1 port with `max` slots and producers
    /// closed after `idle`.
    async fn start(
        max: usize,
        idle: Duration,
        out: FeedOutput,
        shutdown: &CancellationToken,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let limits = FeedLimits {
            max_producers: max,
            producer_idle_timeout: idle,
            ..FeedLimits::default()
        };
        tokio::spawn(serve(listener, out.with_limits(limits), shutdown.clone()));
        addr
    }

    /// Everything the server sends `stream` until it closes the connection.
    async fn read_until_closed(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got))
            .await
            .expect("closed before the deadline")
            .expect("read");
        String::from_utf8(got).expect("utf-8")
    }

    const LONG: Duration = Duration::from_secs(300);

    #[tokio::test]
    async fn each_connection_keeps_its_order_and_bad_lines_are_counted() {
        let (out, mut consumer, stats) = output();
        let shutdown = CancellationToken::new();
        let addr = start(64, LONG, out, &shutdown).await;
        let mut a = TcpStream::connect(addr).await.expect("connect a");
        let mut b = TcpStream::connect(addr).await.expect("connect b");
        let (mut text_a, mut text_b) = (String::new(), String::new());
        for n in 0..200 {
            text_a += &line("a", n);
            text_b += &line("b", n);
            if n == 100 {
                text_a += "{\"channel\":\"t.*\",\"data\":{}}\r\n\n";
            }
        }
        let (wa, wb) = tokio::join!(
            a.write_all(text_a.as_bytes()),
            b.write_all(text_b.as_bytes())
        );
        wa.and(wb).expect("write");
        let mut last = [None, None];
        for _ in 0..400 {
            let (channel, n) = next(&mut consumer).await;
            let who = usize::from(channel == "t.b");
            assert_eq!(last[who].map_or(0, |l| l + 1), n, "{channel} out of order");
            last[who] = Some(n);
        }
        assert_eq!(stats.rejected_total(), 1);
        let rejection = &stats.recent_rejections()[0];
        assert_eq!(rejection.line, 102, "line numbers count per connection");
        shutdown.cancel();
    }

    /// Two silent producers hold both slots: a third is told why and
    /// closed at once (it used to wait in the backlog for as long as they
    /// stayed), and a slot given back serves the next producer.
    #[tokio::test]
    async fn a_producer_past_the_limit_is_refused_with_a_reason() {
        let (out, mut consumer, stats) = output();
        let shutdown = CancellationToken::new();
        let addr = start(2, LONG, out, &shutdown).await;
        let mut a = TcpStream::connect(addr).await.expect("connect a");
        let _b = TcpStream::connect(addr).await.expect("connect b");
        a.write_all(line("a", 1).as_bytes()).await.expect("write");
        assert_eq!(next(&mut consumer).await, ("t.a".into(), 1));
        let mut c = TcpStream::connect(addr).await.expect("connect c");
        let _ = c.write_all(line("c", 1).as_bytes()).await;
        assert_eq!(read_until_closed(&mut c).await, refusal_line(2));
        assert_eq!(stats.producers_refused(), 1);
        assert_eq!(stats.producers(), 2);
        drop(a);
        tokio::time::timeout(DEADLINE, async {
            while stats.producers() != 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a's slot is given back");
        let mut d = TcpStream::connect(addr).await.expect("connect d");
        d.write_all(line("d", 1).as_bytes()).await.expect("write");
        assert_eq!(next(&mut consumer).await, ("t.d".into(), 1));
        shutdown.cancel();
    }

    /// A producer that sends nothing, or half a line, is closed after the
    /// idle timeout and its slot serves the next one.
    #[tokio::test]
    async fn idle_and_half_line_producers_are_closed() {
        let (out, mut consumer, stats) = output();
        let shutdown = CancellationToken::new();
        let addr = start(2, Duration::from_millis(200), out, &shutdown).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"{\"channel\":\"t.h\",\"da")
            .await
            .expect("write");
        let said = read_until_closed(&mut silent).await;
        assert!(said.contains("producer_idle_timeout_ms"), "{said}");
        read_until_closed(&mut half).await;
        assert_eq!(stats.producers_idle_closed(), 2);
        let mut next_one = TcpStream::connect(addr).await.expect("connect");
        next_one
            .write_all(line("n", 1).as_bytes())
            .await
            .expect("write");
        assert_eq!(next(&mut consumer).await, ("t.n".into(), 1));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn run_on_port_zero_publishes_its_address_and_stops_on_shutdown() {
        let (out, mut consumer, stats) = output();
        let shutdown = CancellationToken::new();
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let task = tokio::spawn(run(any_port, out, shutdown.clone()));
        let addr = tokio::time::timeout(DEADLINE, async {
            loop {
                match stats.local_addr() {
                    Some(addr) => return addr,
                    None => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("bound before the deadline");
        assert_ne!(addr.port(), 0);
        // An idle open connection must not hold up shutdown.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(line("x", 7).as_bytes())
            .await
            .expect("write");
        assert_eq!(next(&mut consumer).await, ("t.x".into(), 7));
        shutdown.cancel();
        let stopped = tokio::time::timeout(DEADLINE, task).await.expect("stops");
        stopped.expect("no panic").expect("clean stop");
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error_naming_it() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("bound");
        let (out, _consumer, _) = output();
        let err = run(addr, out, CancellationToken::new())
            .await
            .expect_err("in use");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
