//! The replay feed: plays an NDJSON recording (gzip if the name ends in
//! `.gz`) into tickcast, paced by each record's `ts`.
//!
//! Pacing: the first record that has a `ts` goes at once and fixes the
//! mapping from recording time to wall time; a record with `ts` t is then due
//! at `wall_start + (t - first_ts) / speed`. Due times are computed from that
//! start, never by adding up gaps, so waits that run late (a busy runtime, a
//! full ring) do not make the replay drift: it catches up instead. Records
//! without `ts`, records whose `ts` goes backwards and `Speed::Max` never
//! wait. With `looped` the file starts over at its end and the next pass's
//! first record is due right after the last one of the pass before.
//!
//! All waits use `tokio::time`, so tests can drive them with paused time.
//!
//! `--from` ([`ReplayFrom`]) skips the records before it, unsent and
//! unpaced, in every pass. `--progress` ([`progress`]) writes a line to
//! stderr at most every few seconds.

mod from;
mod progress;

use std::io::{self, IsTerminal};
use std::path::Path;

use async_compression::tokio::bufread::GzipDecoder;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::time::{sleep_until, Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use from::ReplayFrom;
use progress::{CountingReader, Progress};

use super::{FeedOutput, LineCounts, Paced, ReplayOptions, Speed};

/// Read buffer for the file and for the decompressed stream. Larger than
/// tokio's default so each blocking file read moves more bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Maps recording time (`ts`) to wall-clock due times for one replay, across
/// every pass of a looped replay.
#[derive(Debug)]
pub struct Pacer {
    /// Wall nanoseconds per recording nanosecond (1 / speed); `None` for
    /// `Speed::Max`.
    scale: Option<f64>,
    /// When the first timed record went out.
    wall_start: Option<Instant>,
    /// Recording position of the current pass's first timed record, and
    /// where that pass starts on the replay's own timeline (ns).
    pass_first_ts: Option<u64>,
    pass_offset: u64,
    /// Furthest point reached on the replay's timeline (ns).
    high_water: u64,
    /// How late the last record that had a due time went out.
    behind: Duration,
}

impl Pacer {
    pub fn new(speed: Speed) -> Self {
        let scale = match speed {
            Speed::Factor(f) if f.is_finite() && f > 0.0 => Some(1.0 / f),
            // A bad factor cannot come through `Speed::from_str`; treat it as
            // "no pacing" rather than dividing by zero.
            Speed::Factor(_) | Speed::Max => None,
        };
        Self {
            scale,
            wall_start: None,
            pass_first_ts: None,
            pass_offset: 0,
            high_water: 0,
            behind: Duration::ZERO,
        }
    }

    /// How far behind schedule the replay is (the last paced record's
    /// lateness); `None` at `Speed::Max`, which has no schedule.
    pub fn behind(&self) -> Option<Duration> {
        self.scale.map(|_| self.behind)
    }

    /// Starts another pass over the same recording: its first timed record
    /// is due right after the furthest one so far.
    pub fn next_pass(&mut self) {
        self.pass_first_ts = None;
        self.pass_offset = self.high_water;
    }

    /// When a record with this `ts` is due, given that it is `now`; `None`
    /// means "send it now".
    pub fn due(&mut self, ts: Option<u64>, now: Instant) -> Option<Instant> {
        let scale = self.scale?;
        let ts = ts?;
        let first = *self.pass_first_ts.get_or_insert(ts);
        let wall_start = *self.wall_start.get_or_insert(now);
        let position = self.pass_offset.saturating_add(ts.saturating_sub(first));
        if position <= self.high_water {
            // The same time as before, or back in time: no wait.
            return None;
        }
        self.high_water = position;
        let wait = Duration::from_nanos((position as f64 * scale) as u64);
        let due = wall_start.checked_add(wait)?;
        self.behind = now.saturating_duration_since(due);
        (due > now).then_some(due)
    }
}

/// Replays `path` until its end (every pass, with `opts.looped`) or until
/// `shutdown`.
pub async fn run(
    path: &Path,
    opts: ReplayOptions,
    out: FeedOutput,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut pacer = Pacer::new(opts.speed);
    let show_progress = opts.progress.unwrap_or_else(|| io::stderr().is_terminal());
    let mut pass = 0u64;
    loop {
        pass += 1;
        let (input, progress) = open(path).await?;
        let progress = progress.shown(show_progress);
        let counts = replay_pass(input, &mut pacer, opts.from, progress, &out, &shutdown)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("reading replay file {}: {e}", path.display()),
                )
            })?;
        tracing::info!(
            feed = %out.stats().name, path = %path.display(), pass,
            lines = counts.lines, accepted = counts.accepted,
            rejected = counts.rejected, blank = counts.blank, skipped = counts.skipped,
            cut_short = shutdown.is_cancelled(),
            "replay pass done"
        );
        if shutdown.is_cancelled() || !opts.looped {
            return Ok(());
        }
        if counts.accepted == 0 {
            // Looping over nothing would spin; there is nothing to show.
            tracing::warn!(feed = %out.stats().name, path = %path.display(),
                "replay file has no valid record; not looping");
            return Ok(());
        }
        pacer.next_pass();
    }
}

/// One pass over `input`: records before `from` are skipped; each other
/// record waits for its due time (or for shutdown) and is then sent.
async fn replay_pass(
    input: impl AsyncBufRead + Unpin,
    pacer: &mut Pacer,
    from: Option<ReplayFrom>,
    mut progress: Progress,
    out: &FeedOutput,
    shutdown: &CancellationToken,
) -> io::Result<LineCounts> {
    let mut record_no = 0u64;
    let mut started = from.is_none();
    // The future returned for each record owns only the due time and a
    // borrow of the token, so it can outlive the record it was made for.
    let pace = |record: &crate::record::FeedRecord| {
        record_no += 1;
        started = started || from.is_some_and(|from| from.reached(record_no, record.ts));
        let skip = !started;
        let now = Instant::now();
        let due = if skip {
            None
        } else {
            pacer.due(record.ts, now)
        };
        if !skip {
            if let Some(line) = progress.sent(now, pacer.behind()) {
                // A line every few seconds at most, to a terminal as a rule.
                eprintln!("{line}");
            }
        }
        async move {
            if skip {
                return Paced::Skip;
            }
            if let Some(due) = due {
                tokio::select! {
                    _ = sleep_until(due) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Paced::Send
        }
    };
    out.ingest_lines(input, shutdown, pace).await
}

/// Input of one pass.
type ReplayInput = Box<dyn AsyncBufRead + Unpin + Send>;

/// Opens the recording, decompressing when the name ends in `.gz`, with
/// the progress of reading it (bytes of the file, compressed or not).
async fn open(path: &Path) -> io::Result<(ReplayInput, Progress)> {
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot open replay file {}: {e}; check the path after `replay:` \
                 (relative paths start from the current directory)",
                path.display()
            ),
        )
    })?;
    let size = file.metadata().await.ok().map(|m| m.len());
    let (file, progress) = CountingReader::new(file, size);
    let file = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let gzip = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gz"));
    let input: ReplayInput = if gzip {
        let mut decoder = GzipDecoder::new(file);
        // `cat a.gz b.gz` is a valid gzip file too.
        decoder.multiple_members(true);
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
    } else {
        Box::new(file)
    };
    Ok((input, progress))
}

#[cfg(test)]
mod tests;
