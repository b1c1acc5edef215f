//! The TCP feed: a listener that producers connect to and write NDJSON feed
//! records to (one record per line, as in a replay file). Nothing is written
//! back; rejected lines are logged with the producer's address and counted.
//!
//! Each connection is read by its own task, so the records of one connection
//! reach the ring in the order they were written (records of different
//! connections interleave). Line numbers in rejections count per connection.
//!
//! At most [`MAX_PRODUCERS`] connections are served at once. Further ones are
//! not accepted until a slot frees: they wait in the kernel's listen backlog
//! (their writes fill the socket buffers, then block), which loses nothing,
//! unlike accepting and closing them. Each served connection buffers at most
//! one line (1 MiB, `record::MAX_LINE_BYTES`), so memory stays bounded.
//!
//! Bind to port 0 to get a free port; the bound address is logged and kept in
//! [`FeedStats::local_addr`](super::FeedStats::local_addr).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::FeedOutput;
use crate::record::FeedRecord;

/// Most producer connections served at the same time. Generous for a few
/// upstream adapters and test tools; each one costs a task and up to a
/// 1 MiB line buffer.
pub const MAX_PRODUCERS: usize = 64;

/// Pause after a failed `accept` (typically: out of file descriptors), so
/// the loop does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long shutdown waits for connection tasks to finish their current
/// record before giving up on them (they stop at their next line anyway).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
    serve(listener, MAX_PRODUCERS, out, shutdown).await
}

/// Accepts producers on `listener`, at most `max_producers` at once.
async fn serve(
    listener: TcpListener,
    max_producers: usize,
    out: FeedOutput,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    out.stats().set_local_addr(local);
    let feed = out.stats().name.clone();
    tracing::info!(feed = %feed, addr = %local, max_producers, "tcp feed listening");
    let slots = Arc::new(Semaphore::new(max_producers));
    let producers = TaskTracker::new();
    loop {
        if slots.available_permits() == 0 {
            tracing::warn!(feed = %feed, max_producers,
                "all producer slots busy; new connections wait until one closes");
        }
        // Take a slot before accepting, so waiting connections stay queued.
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break }; // the semaphore is never closed
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
        let task = produce(stream, out.clone(), shutdown.clone(), slot);
        producers.spawn(task.instrument(span));
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

/// Reads one producer's lines until it closes or `shutdown`; `_slot` is
/// given back when this returns.
async fn produce(
    stream: TcpStream,
    out: FeedOutput,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    tracing::info!("producer connected");
    let no_pacing = |_: &FeedRecord| std::future::ready(());
    match out
        .ingest_lines(BufReader::new(stream), &shutdown, no_pacing)
        .await
    {
        Ok(c) => tracing::info!(
            lines = c.lines,
            accepted = c.accepted,
            rejected = c.rejected,
            blank = c.blank,
            "producer disconnected"
        ),
        Err(e) => tracing::warn!("producer connection failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::feed::{FeedStats, RingItem};
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
            .expect("ring open");
        let n = record.data["n"].as_u64().expect("n");
        (record.channel.to_string(), n)
    }

    /// Serves on a fresh 127.0.0.1 port with `max` slots.
    async fn start(max: usize, out: FeedOutput, shutdown: &CancellationToken) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, max, out, shutdown.clone()));
        addr
    }

    #[tokio::test]
    async fn each_connection_keeps_its_order_and_bad_lines_are_counted() {
        let (out, mut consumer, stats) = output();
        let shutdown = CancellationToken::new();
        let addr = start(MAX_PRODUCERS, out, &shutdown).await;
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

    #[tokio::test]
    async fn extra_connections_wait_for_a_free_slot() {
        let (out, mut consumer, _) = output();
        let shutdown = CancellationToken::new();
        let addr = start(1, out, &shutdown).await;
        let mut a = TcpStream::connect(addr).await.expect("connect a");
        a.write_all(line("a", 1).as_bytes()).await.expect("write");
        assert_eq!(next(&mut consumer).await, ("t.a".into(), 1));
        // b connects and writes, but is not served while a holds the slot:
        // a's later record arrives first.
        let mut b = TcpStream::connect(addr).await.expect("connect b");
        b.write_all(line("b", 1).as_bytes()).await.expect("write");
        a.write_all(line("a", 2).as_bytes()).await.expect("write");
        assert_eq!(next(&mut consumer).await, ("t.a".into(), 2));
        drop(a);
        assert_eq!(next(&mut consumer).await, ("t.b".into(), 1));
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
