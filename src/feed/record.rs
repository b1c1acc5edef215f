//! The recorder (`--record FILE`): every record the state stage accepts,
//! written as a feed record (PROTOCOL.md) to NDJSON, gzip when the name
//! ends in `.gz`, so that `--feed replay:FILE --speed max` rebuilds the
//! same channel states and seqs.
//!
//! Each line's `ts` is the record's ingest time (when tickcast took it in),
//! so a replay at speed 1 keeps the pace it arrived at; a `ts` the producer
//! sent is kept as `event_ts`, which the replay ignores.
//!
//! The state stage only offers each accepted record to a bounded queue
//! ([`RecordTap::offer`], never waiting); one writer task drains it. When
//! the disk cannot keep up and the queue is full, the record is dropped from
//! the recording (not from the engine), counted (`recorder.dropped` on
//! /stats, `tickcast_record_dropped_total` on /metrics) and the writer logs
//! how many at its next flush. The writer flushes every `record_flush_ms`
//! and at shutdown, so a crash loses at most that interval (plus what sat in
//! the queue). An appended `.gz` recording gets a new gzip member per run,
//! which the replay reads through; a crash leaves the last member without
//! its trailer, and the replay then stops with an error after the records
//! that were flushed.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::write::GzipEncoder;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::engine::EngineStats;
use crate::record::{FeedRecord, JsonMap};

/// Bytes buffered before the file (and before the gzip encoder) is written.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// What `--record` and its config keys resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOptions {
    /// The recording; appended to, created if missing.
    pub path: PathBuf,
    /// How often the writer flushes (`record_flush_ms`): what a crash loses.
    pub flush_interval: Duration,
    /// Records queued for the writer before new ones are dropped from the
    /// recording (`limits.record_queue`).
    pub queue: usize,
}

/// The state stage's end of the recorder: cheap to offer to, never waits.
#[derive(Debug, Clone)]
pub struct RecordTap {
    queue: mpsc::Sender<Arc<FeedRecord>>,
    stats: Arc<EngineStats>,
}

impl RecordTap {
    /// Queues an accepted record for the writer; if the queue is full (or
    /// the writer has stopped), counts it as dropped instead.
    pub fn offer(&self, record: &Arc<FeedRecord>) {
        match self.queue.try_send(record.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.stats.record_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Opens (creates or appends to) the recording and starts its writer.
/// Fails at once if the file cannot be opened, so a typo stops start-up.
/// The writer ends once every [`RecordTap`] is dropped and it has written
/// and flushed what was queued.
pub async fn start(
    opts: &RecordOptions,
    stats: Arc<EngineStats>,
) -> io::Result<(RecordTap, tokio::task::JoinHandle<()>)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.path)
        .await?;
    let file = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let gzip = opts
        .path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gz"));
    let out: Box<dyn AsyncWrite + Unpin + Send> = if gzip {
        Box::new(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            GzipEncoder::new(file),
        ))
    } else {
        Box::new(file)
    };
    let (queue, records) = mpsc::channel(opts.queue.max(1));
    let writer = Writer {
        out,
        path: opts.path.display().to_string(),
        stats: stats.clone(),
        dropped_seen: stats.record_dropped.load(Ordering::Relaxed),
    };
    let task = tokio::spawn(writer.run(records, opts.flush_interval));
    Ok((RecordTap { queue, stats }, task))
}

/// One line of the recording.
#[derive(Serialize)]
struct Line<'a> {
    channel: &'a str,
    data: &'a JsonMap,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_ts: Option<u64>,
}

/// Encodes `record` as one NDJSON line (with its LF) into `buf`.
pub fn encode(record: &FeedRecord, buf: &mut Vec<u8>) {
    let line = Line {
        channel: record.channel.as_str(),
        data: &record.data,
        ts: record.ingest_ns,
        event_ts: record.ts,
    };
    // Serialising a map of JSON values into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, &line).is_ok() {
        buf.push(b'\n');
    }
}

struct Writer {
    out: Box<dyn AsyncWrite + Unpin + Send>,
    path: String,
    stats: Arc<EngineStats>,
    /// The dropped count at the last flush, to log only what is new.
    dropped_seen: u64,
}

impl Writer {
    async fn run(mut self, mut records: mpsc::Receiver<Arc<FeedRecord>>, every: Duration) {
        let mut flush = tokio::time::interval(every.max(Duration::from_millis(1)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut line = Vec::new();
        let result: io::Result<()> = async {
            loop {
                tokio::select! {
                    record = records.recv() => {
                        let Some(record) = record else { break };
                        line.clear();
                        encode(&record, &mut line);
                        self.out.write_all(&line).await?;
                        self.stats.records_recorded.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = flush.tick() => self.flush().await?,
                }
            }
            // Shutdown: everything queued is written; end the gzip member.
            self.out.shutdown().await
        }
        .await;
        self.report_drops();
        match result {
            Ok(()) => tracing::info!(path = %self.path, "recording flushed and closed"),
            Err(e) => {
                // Offers now fail and are counted as dropped: the engine goes on.
                tracing::error!(path = %self.path,
                    "cannot write the recording: {e}; recording stops, serving goes on");
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.report_drops();
        self.out.flush().await
    }

    fn report_drops(&mut self) {
        let dropped = self.stats.record_dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_seen {
            tracing::warn!(path = %self.path, dropped = dropped - self.dropped_seen,
                "records left out of the recording: the disk fell behind and the \
                 recorder's queue (limits.record_queue) was full; serving was not slowed");
            self.dropped_seen = dropped;
        }
    }
}
