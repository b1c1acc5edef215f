//! Instructions per delivery, plain or compressed, for
//! `valgrind --tool=callgrind`: what permessage-deflate costs the server's
//! fanout, counted where a timing on a shared machine would only be noise.
//!
//! Delivers `UPDATES` market-board quote updates (the recorded quotes of
//! tests/fixtures/replay-mixed.ndjson, 150 to 200 bytes of JSON, all over
//! the 96-byte threshold) on one channel to `SESSIONS` subscribers, every
//! one compressed when the third argument is `deflate`, and drains their
//! outboxes as the session writers would (without the send(2), which
//! callgrind does not see: a compressed frame only makes that copy
//! smaller). Run it at two update counts and divide the difference by the
//! extra deliveries, so that set-up and exit cancel out
//! (`scripts/deflate-instructions.sh` does this).
//!
//! `fanout_count SESSIONS UPDATES plain|deflate` (criterion's `--bench`
//! flag is ignored).

use std::hint::black_box;

use futures_util::FutureExt;
use tickcast::deflate::Negotiated;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/quote_fanout.rs"]
mod quote_fanout;

/// Updates applied between two drains of every outbox.
const ROUND: usize = 100;

const USAGE: &str = "usage: fanout_count SESSIONS UPDATES plain|deflate";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [sessions, updates, mode] = &args[..] else {
        eprintln!("{USAGE}");
        return;
    };
    let (sessions, updates): (usize, usize) = (
        sessions.parse().expect(USAGE),
        updates.parse().expect(USAGE),
    );
    let deflate = match mode.as_str() {
        "plain" => None,
        // The defaults: a 32 KB window, 96-byte threshold.
        "deflate" => Some(Negotiated::new(15, 96)),
        _ => panic!("{USAGE}"),
    };

    let (mut engine, outboxes) = quote_fanout::subscribed_engine(sessions as u64, deflate);
    let quotes = quote_fanout::records(1024);

    let mut sink = Vec::with_capacity(2 * ROUND);
    let (mut frames, mut compressed) = (0u64, 0u64);
    for (i, record) in quotes.iter().cycle().take(updates).enumerate() {
        engine.apply(record, i as u64 + 1);
        if (i + 1) % ROUND == 0 || i + 1 == updates {
            for outbox in &outboxes {
                outbox
                    .take(&mut sink)
                    .now_or_never()
                    .expect("frames queued");
                frames += sink.len() as u64;
                compressed += sink.iter().filter(|f| f.bytes[0] & 0x40 != 0).count() as u64;
                black_box(&sink);
                sink.clear();
            }
        }
    }
    println!("{frames} frames to {sessions} sessions, {compressed} compressed ({mode})");
}
