//! Taking connections off the listener, including when the process has run
//! out of file descriptors.
//!
//! Once every descriptor is in use, accept(2) fails with EMFILE (or ENFILE
//! when the whole system is out). The connection stays in the kernel's
//! backlog and the listener stays readable, so retrying at once only spins,
//! and every newcomer (a health check too) waits in the backlog until some
//! connection closes. So here:
//!
//! - failed accepts back off ([`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`],
//!   back to the start after a success) and are logged at most once per
//!   [`LOG_EVERY`], with the count since the last line;
//! - [`SPARE_DESCRIPTORS`] descriptors (open `/dev/null` files) are held
//!   in reserve. When an accept fails for want of descriptors, the spares
//!   are closed, their numbers used to accept as many waiting connections,
//!   and those get a short answer, side by side ([`answer_at_limit`]:
//!   `/healthz` and `/metrics` still work, anything else is told to retry)
//!   and are closed; then the spares are taken again, before anything else
//!   is accepted (so a freed number is not taken by an ordinary connection).
//!   This drains the backlog a few connections at a time, so clients get an
//!   answer instead of hanging, and a few clients that connect and send
//!   nothing cannot hold it up for long.
//!
//! [`raise_fd_limit`] lifts the soft RLIMIT_NOFILE to the hard one at start.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{observe, AppState};

/// The first pause after a failed accept.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// The longest pause while accepts keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// At most one log line about failed accepts per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
// How long a connection taken with a spare may take to send its request
// head (`limits.at_limit_read_timeout_ms`, 200 ms) and to take the answer
// (`limits.at_limit_write_timeout_ms`, 500 ms). Each one holds up the
// backlog behind it, so both are short.
/// Spare descriptors held for answering at the limit: this many such
/// connections are answered at once.
pub const SPARE_DESCRIPTORS: usize = 4;
/// Most bytes of a request head read from such a connection.
const AT_LIMIT_HEAD_BYTES: usize = 4096;

/// EMFILE and ENFILE: the same numbers on Linux, macOS and the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Raises the soft limit on open files to the hard limit; returns the limit
/// now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The soft limit on open files, if the platform has one.
pub fn fd_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Hands out accepted connections; failures are dealt with here.
pub struct Acceptor {
    listener: TcpListener,
    state: Arc<AppState>,
    /// Descriptors given up to answer clients at the limit.
    spares: Vec<File>,
    backoff: Backoff,
    failures: FailureLog,
}

impl Acceptor {
    pub fn new(listener: TcpListener, state: Arc<AppState>) -> Self {
        let mut acceptor = Self {
            listener,
            state,
            spares: Vec::with_capacity(SPARE_DESCRIPTORS),
            backoff: Backoff::default(),
            failures: FailureLog::default(),
        };
        acceptor.take_spares();
        if acceptor.spares.is_empty() {
            tracing::warn!("cannot hold a spare descriptor: at the descriptor limit, new clients will wait instead of being answered");
        }
        acceptor
    }

    /// The next connection. Cancel-safe: dropping the future loses at most
    /// the connections being answered at the limit.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    self.take_spares();
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) => {
                    let metrics = &self.state.metrics;
                    metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let out_of_fds = is_out_of_descriptors(&e);
                    if out_of_fds {
                        metrics.accept_fd_exhausted.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(count) = self.failures.record(Instant::now()) {
                        tracing::warn!(
                            failures = count,
                            "accept failed: {e} ({count} failed since the last line like this one; backing off, logged at most once per {LOG_EVERY:?})"
                        );
                    }
                    if is_per_connection(&e) {
                        // The peer gave up before we took it; nothing to wait for.
                        continue;
                    }
                    if out_of_fds && self.answer_with_the_spares().await {
                        // Useful work was done: go on draining the backlog.
                        continue;
                    }
                    tokio::time::sleep(self.backoff.next_pause()).await;
                }
            }
        }
    }

    /// Opens spares up to [`SPARE_DESCRIPTORS`], as far as the limit allows.
    fn take_spares(&mut self) {
        while self.spares.len() < SPARE_DESCRIPTORS {
            match File::open("/dev/null") {
                Ok(file) => self.spares.push(file),
                Err(_) => return,
            }
        }
    }

    /// Closes the spares one by one, accepting a waiting connection with
    /// each number; answers those side by side, then takes the spares
    /// again. False if no connection was waiting (or no spare in hand).
    async fn answer_with_the_spares(&mut self) -> bool {
        self.take_spares();
        let mut answering = JoinSet::new();
        while let Some(spare) = self.spares.pop() {
            drop(spare);
            // Only a connection already waiting: never wait here.
            let waiting = std::future::poll_fn(|cx| match self.listener.poll_accept(cx) {
                Poll::Ready(result) => Poll::Ready(result.ok()),
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            let Some((stream, _peer)) = waiting else {
                break;
            };
            let state = self.state.clone();
            answering.spawn(async move { answer_at_limit(stream, &state).await });
        }
        let answered = answering.len();
        // Each task closes its connection when done; wait for all, so that
        // no freed number is taken by `accept` before the spares are back.
        while answering.join_next().await.is_some() {}
        self.take_spares();
        self.state
            .metrics
            .answered_at_fd_limit
            .fetch_add(answered as u64, Ordering::Relaxed);
        answered > 0
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Errors about one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Answers one connection taken at the descriptor limit and closes it:
/// `GET /metrics` gets the usual text, `GET /healthz` a 503 that says why,
/// anything else a 503 asking to retry. Bounded by the two timeouts.
async fn answer_at_limit(mut stream: TcpStream, state: &AppState) {
    let mut head = Vec::with_capacity(512);
    let limits = &state.session_limits;
    let reading = read_head(&mut stream, &mut head);
    let _ = tokio::time::timeout(limits.at_limit_read_timeout, reading).await;
    let (status, content_type, body) = match request_path(&head) {
        Some("/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            observe::prometheus(state),
        ),
        Some("/healthz") => (
            "503 Service Unavailable",
            "text/plain; charset=utf-8",
            at_limit_health(state),
        ),
        _ => (
            "503 Service Unavailable",
            "text/plain; charset=utf-8",
            "at the descriptor limit, retry later\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(limits.at_limit_write_timeout, write).await;
}

/// The `/healthz` body at the limit: what is wrong and how full we are.
fn at_limit_health(state: &AppState) -> String {
    let limit = fd_limit().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    format!(
        "at the descriptor limit ({limit} open files): {} WebSocket sessions open; new connections get this short answer and are closed, retry later\n",
        state.live_sessions()
    )
}

/// Reads until the end of the request head, [`AT_LIMIT_HEAD_BYTES`] or EOF.
/// The whole head is read (not just the first line) so that closing the
/// socket does not reset it under the answer because of unread bytes.
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) {
    let mut chunk = [0u8; 1024];
    while head.len() < AT_LIMIT_HEAD_BYTES && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let room = (AT_LIMIT_HEAD_BYTES - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The path of a `GET` request line, query removed.
fn request_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

/// Pauses between failed accepts: double each time, up to a cap.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        pause
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Counts failures and says when to log: the first at once, then at most
/// one line per [`LOG_EVERY`] carrying the count since the previous line.
#[derive(Debug, Default)]
struct FailureLog {
    unreported: u64,
    last_line: Option<Instant>,
}

impl FailureLog {
    /// Records one failure; returns the count to log if a line is due.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let pauses: Vec<_> = (0..10).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses[0], BACKOFF_FIRST);
        assert_eq!(pauses[1], BACKOFF_FIRST * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next_pause(), BACKOFF_FIRST);
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_their_count() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(
            log.record(start),
            Some(1),
            "the first failure is told at once"
        );
        // A thousand failures within the interval: no line.
        for i in 1..=1000 {
            let at = start + LOG_EVERY * i / 1001;
            assert_eq!(log.record(at), None);
        }
        assert_eq!(log.record(start + LOG_EVERY), Some(1001));
        assert_eq!(log.record(start + LOG_EVERY * 3 / 2), None);
    }

    #[test]
    fn request_paths_are_read_from_get_lines_only() {
        assert_eq!(
            request_path(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/healthz")
        );
        assert_eq!(
            request_path(b"GET /metrics?x=1 HTTP/1.1\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_path(b"POST /healthz HTTP/1.1\r\n"), None);
        assert_eq!(request_path(b"GE"), None);
        assert_eq!(request_path(b"\xff\xfe"), None);
        assert_eq!(request_path(b""), None);
    }

    #[test]
    fn out_of_descriptors_is_told_apart_from_other_failures() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(EMFILE)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(ENFILE)));
        assert!(!is_out_of_descriptors(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
