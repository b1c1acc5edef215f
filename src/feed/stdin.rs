//! The stdin feed (`--feed stdin`): NDJSON feed records piped into the
//! process, read by the same line reader and parser as every other feed.
//!
//! A bad line is rejected with its line number (counted, and logged within
//! the feed's log budget); the lines around it go through. The end of the
//! input ends the feed as **finished**, like a replay that reached the end
//! of its file: the channels keep their states, the server goes on serving
//! them, and `/healthz` stays `ok`. Only a read error (not UTF-8 trouble,
//! which is a rejected line, but the pipe itself failing) makes the feed
//! **failed**.
//!
//! tokio reads stdin on a blocking thread that cannot be interrupted; the
//! read waiting there is dropped when the process exits (see `main`).

use std::io;

use tokio::io::BufReader;
use tokio_util::sync::CancellationToken;

use super::FeedOutput;

/// Reads records from standard input until its end or `shutdown`.
pub async fn run(out: FeedOutput, shutdown: CancellationToken) -> io::Result<()> {
    read(BufReader::new(tokio::io::stdin()), out, shutdown).await
}

/// Ingests `input` as the stdin feed does (split out so it can be tested
/// without the process's stdin).
pub async fn read<R>(input: R, out: FeedOutput, shutdown: CancellationToken) -> io::Result<()>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let feed = out.stats().name.clone();
    tracing::info!(feed = %feed, "reading feed records from standard input");
    let counts = out
        .ingest_lines(input, &shutdown, |_| std::future::ready(()))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("reading standard input failed: {e}")))?;
    if !shutdown.is_cancelled() {
        tracing::info!(feed = %feed, lines = counts.lines, accepted = counts.accepted,
            rejected = counts.rejected,
            "standard input ended: the feed is finished, its channels are still served");
    }
    Ok(())
}
