//! Replay progress on stderr (`--progress`, on by default only when stderr
//! is a terminal): at most one line per [`EVERY`], with the records sent in
//! this pass, how much of the file has been read (bytes of the file as
//! stored, so also for `.gz`) and how far behind schedule the replay runs.
//! The total number of records is not known without reading the file
//! twice, so the share of bytes stands for it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Duration, Instant};

/// Least time between two progress lines.
pub const EVERY: Duration = Duration::from_secs(5);

/// Counts the bytes read through it, for [`Progress`].
pub struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R> CountingReader<R> {
    /// Wraps `inner` (of `size` bytes, if known) and gives the progress
    /// that reads its count.
    pub fn new(inner: R, size: Option<u64>) -> (Self, Progress) {
        let read = Arc::new(AtomicU64::new(0));
        let progress = Progress {
            read: read.clone(),
            size,
            sent: 0,
            next_line: None,
            shown: false,
        };
        (Self { inner, read }, progress)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(got as u64, Ordering::Relaxed);
        polled
    }
}

/// One pass's progress.
#[derive(Debug)]
pub struct Progress {
    read: Arc<AtomicU64>,
    size: Option<u64>,
    sent: u64,
    /// When the next line may be written; `None` until the first record.
    next_line: Option<Instant>,
    shown: bool,
}

impl Progress {
    /// Writes lines only if `shown`.
    pub fn shown(mut self, shown: bool) -> Self {
        self.shown = shown;
        self
    }

    /// One more record goes out at `now`; the line to write, if one is due.
    pub fn sent(&mut self, now: Instant, behind: Option<Duration>) -> Option<String> {
        self.sent += 1;
        if !self.shown {
            return None;
        }
        let next_line = *self.next_line.get_or_insert(now + EVERY);
        if now < next_line {
            return None;
        }
        self.next_line = Some(now + EVERY);
        Some(self.line(behind))
    }

    /// The text of a progress line.
    pub fn line(&self, behind: Option<Duration>) -> String {
        let read = self.read.load(Ordering::Relaxed);
        let share = match self.size {
            Some(size) if size > 0 => {
                format!(" ({:.1}% of the file)", read as f64 * 100.0 / size as f64)
            }
            _ => String::new(),
        };
        let schedule = match behind {
            Some(behind) => format!(", {:.1} s behind schedule", behind.as_secs_f64()),
            None => ", as fast as the engine takes them".to_owned(),
        };
        format!(
            "replay: {} records sent, {} bytes read{share}{schedule}",
            self.sent, read
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_line_every_few_seconds_with_the_share_read_and_the_lag() {
        let (mut reader, progress) = CountingReader::new(&b"0123456789"[..], Some(10));
        let mut half = [0u8; 5];
        reader.read_exact(&mut half).await.unwrap();
        let mut progress = progress.shown(true);
        let start = Instant::now();
        let behind = Some(Duration::from_millis(2500));
        assert_eq!(progress.sent(start, behind), None, "no line at once");
        let soon = start + EVERY / 2;
        assert_eq!(progress.sent(soon, behind), None, "nor before EVERY");
        assert_eq!(
            progress.sent(start + EVERY, behind).as_deref(),
            Some("replay: 3 records sent, 5 bytes read (50.0% of the file), 2.5 s behind schedule")
        );
        assert_eq!(
            progress.sent(start + EVERY, behind),
            None,
            "one line per EVERY"
        );
        let line = progress.sent(start + EVERY * 2, None).unwrap();
        assert!(line.ends_with("as fast as the engine takes them"), "{line}");
    }

    #[test]
    fn nothing_when_not_shown() {
        let (_, mut progress) = CountingReader::new(&b""[..], None);
        let start = Instant::now();
        for i in 0..4 {
            assert_eq!(progress.sent(start + EVERY * i, None), None);
        }
    }
}
