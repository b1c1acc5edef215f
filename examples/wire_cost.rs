//! Bytes on the wire per update, for recorded feeds: what a subscriber
//! receives with full-state push, with tickcast's diffs, with diffs under a
//! typical field filter, and each of those with permessage-deflate.
//!
//! Every record of each NDJSON feed goes through tickcast's own engine to
//! real outboxes (one plain and one compressed subscriber per mode), as
//! fast as it can apply them; the frames are counted as the server would
//! write them (frame headers included) and every compressed one is
//! inflated and checked against its plain twin. Full-state push is
//! computed: after each update the whole channel state in the same
//! envelope, compressed the same way. Byte counts are deterministic.
//!
//! `cargo run --release --example wire_cost -- [--json OUT] [--measure]
//!  [--fields NS=a,b ...] FEED...` (scripts/wire-cost.sh runs it.)
//! `--measure` adds what the compression defaults were chosen from: savings
//! by frame size (compression.min_bytes), by window (server_max_window_bits),
//! by level, and the memory the compressor and inflater take.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use serde_json::Value;
use tickcast::channel::Pattern;
use tickcast::deflate::{deflate_frame, inflate, CompressionConfig, Negotiated};
use tickcast::engine::patch::merge_patch;
use tickcast::engine::{Engine, EngineLimits, EngineStats};
use tickcast::record::{record_from_value, FeedRecord, JsonMap};
use tickcast::session::outbox::{Outbox, QueuedFrame};
use tickcast::session::protocol::SubscribeOptions;
use tickcast::wire;

/// Counts live heap bytes and their peak, for the memory figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Field filters a typical screen asks for, by namespace.
const DEFAULT_FIELDS: &[(&str, &[&str])] = &[
    ("quotes", &["bid", "ask"]),
    ("trades", &["price", "size"]),
    ("book", &["bids", "asks"]),
    ("scores", &["home_score", "away_score", "minute"]),
    ("events", &["type", "team", "minute"]),
];

/// The six ways a subscriber may be sent the same updates.
const MODES: [&str; 6] = [
    "full state",
    "full state + deflate",
    "diffs",
    "diffs + deflate",
    "filtered diffs",
    "filtered diffs + deflate",
];

#[derive(Default, Clone, Copy)]
struct Tally {
    messages: u64,
    payload: u64,
    wire: u64,
}

impl Tally {
    fn add(&mut self, frame: &[u8]) {
        self.messages += 1;
        self.wire += frame.len() as u64;
        self.payload += (frame.len() - header_len(frame)) as u64;
    }
}

/// One feed's namespace: updates applied, and what each mode sent.
#[derive(Default)]
struct Row {
    updates: u64,
    modes: [Tally; 6],
    filter: Option<Vec<String>>,
}

fn header_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// A frame's JSON text, inflated if it came compressed.
fn text_of(frame: &[u8]) -> Vec<u8> {
    let payload = &frame[header_len(frame)..];
    if frame[0] & 0x40 != 0 {
        inflate(payload, 1 << 30).expect("the server's own compressed frame inflates")
    } else {
        payload.to_vec()
    }
}

fn namespace(channel: &str) -> &str {
    channel.split('.').next().unwrap_or(channel)
}

fn read_feed(path: &str) -> Vec<FeedRecord> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > tickcast::record::MAX_LINE_BYTES {
                return None; // A replay feed rejects it unread.
            }
            let value: Value = serde_json::from_slice(line).ok()?;
            record_from_value(value).ok()
        })
        .collect()
}

struct Subscriber {
    outbox: Arc<Outbox>,
    mode: usize,
}

/// Runs one feed through the engine; what each mode sent, by namespace.
fn measure_feed(
    records: &[FeedRecord],
    fields: &HashMap<String, Vec<String>>,
    agreed: Negotiated,
    diffs: &mut Vec<Vec<u8>>,
) -> BTreeMap<String, Row> {
    let limits = EngineLimits {
        max_targets_per_session: 1024,
        max_channels: 1 << 20,
    };
    let mut engine = Engine::new(Arc::from("wire"), limits, Arc::new(EngineStats::default()));
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for record in records {
        rows.entry(namespace(record.channel.as_str()).to_owned())
            .or_default();
    }
    let mut subscribers = Vec::new();
    let mut subscribe = |engine: &mut Engine, pattern: &str, filter: Option<Vec<String>>| {
        for (mode, deflate) in [(2, None), (3, Some(agreed))] {
            let mode = if filter.is_some() { mode + 2 } else { mode };
            let id = subscribers.len() as u64 + 1;
            let outbox = Arc::new(Outbox::new(1 << 30).with_deflate(deflate));
            engine.register(id, outbox.clone());
            let options = SubscribeOptions {
                fields: filter.clone(),
                ..SubscribeOptions::default()
            };
            engine.subscribe(id, None, vec![Pattern::new(pattern).unwrap()], options, 0);
            subscribers.push(Subscriber { outbox, mode });
        }
    };
    subscribe(&mut engine, ">", None);
    for (ns, row) in rows.iter_mut() {
        if let Some(filter) = fields.get(ns) {
            row.filter = Some(filter.clone());
            subscribe(&mut engine, &format!("{ns}.>"), Some(filter.clone()));
        }
    }

    let mut states: HashMap<String, (u64, JsonMap)> = HashMap::new();
    let mut sink: Vec<QueuedFrame> = Vec::new();
    for (now, record) in (1..).zip(records) {
        engine.apply(record, now);
        let channel = record.channel.as_str();
        let ns = namespace(channel).to_owned();
        let row = rows.get_mut(&ns).expect("every namespace has a row");
        let created = !states.contains_key(channel);
        let (seq, state) = states.entry(channel.to_owned()).or_default();
        *seq += 1;
        merge_patch(state, &record.data);
        if !created {
            // Full-state push: the whole state, in the update's envelope.
            row.updates += 1;
            let json = serde_json::to_vec(&*state).unwrap();
            let full = wire::update(channel, *seq, *seq - 1, record.ingest_ns, &json);
            row.modes[0].add(&full);
            let payload = full.len() - header_len(&full);
            let packed = agreed
                .compresses(payload)
                .then(|| deflate_frame(&full))
                .flatten();
            row.modes[1].add(packed.as_deref().unwrap_or(&full));
        }
        let mut plain_text = None;
        for subscriber in &subscribers {
            let Some(_) = subscriber.outbox.take(&mut sink).now_or_never() else {
                continue; // Nothing queued (filtered out).
            };
            for frame in sink.drain(..) {
                let bytes = &frame.bytes;
                let text = text_of(bytes);
                if !text.starts_with(br#"{"type":"update""#) {
                    continue; // The snapshot a new channel starts with.
                }
                rows.get_mut(&ns).unwrap().modes[subscriber.mode].add(bytes);
                match subscriber.mode {
                    2 | 4 => {
                        diffs.push(bytes.to_vec());
                        plain_text = Some(text);
                    }
                    _ => assert_eq!(
                        Some(&text),
                        plain_text.as_ref(),
                        "inflates to the plain frame"
                    ),
                }
            }
            subscriber.outbox.done();
        }
    }
    rows
}

fn per_update(t: &Tally, updates: u64) -> (f64, f64) {
    let n = updates.max(1) as f64;
    (t.payload as f64 / n, t.wire as f64 / n)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut json_out, mut measure, mut feeds) = (None, false, Vec::new());
    let mut fields: HashMap<String, Vec<String>> = DEFAULT_FIELDS
        .iter()
        .map(|(ns, f)| (ns.to_string(), f.iter().map(|s| s.to_string()).collect()))
        .collect();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json_out = args.next(),
            "--measure" => measure = true,
            "--fields" => {
                let spec = args.next().expect("--fields NS=a,b");
                let (ns, list) = spec.split_once('=').expect("--fields NS=a,b");
                fields.insert(ns.to_owned(), list.split(',').map(str::to_owned).collect());
            }
            _ => feeds.push(arg),
        }
    }
    assert!(
        !feeds.is_empty(),
        "usage: wire_cost [--json OUT] [--measure] [--fields NS=a,b] FEED..."
    );
    let config = CompressionConfig::default();
    let agreed = Negotiated::new(config.server_max_window_bits, config.min_bytes);
    println!(
        "Bytes per update a subscriber receives (payload / wire, frame headers included);\n\
         compression.min_bytes = {}, server_max_window_bits = {}.\n",
        config.min_bytes, config.server_max_window_bits
    );
    println!(
        "| feed | namespace | updates | filter | {} |",
        MODES.join(" | ")
    );
    println!("|---|---|---:|---|{}", "---:|".repeat(MODES.len()));
    let mut diffs = Vec::new();
    let mut report = Vec::new();
    // Over every row with a filter: all modes compare on the same updates.
    let (mut total, mut total_updates) = ([Tally::default(); 6], 0);
    for feed in &feeds {
        let records = read_feed(feed);
        let name = std::path::Path::new(feed)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| feed.clone());
        let rows = measure_feed(&records, &fields, agreed, &mut diffs);
        for (ns, row) in &rows {
            if row.filter.is_some() {
                total_updates += row.updates;
                for (sum, t) in total.iter_mut().zip(&row.modes) {
                    sum.messages += t.messages;
                    sum.payload += t.payload;
                    sum.wire += t.wire;
                }
            }
            let cells: Vec<String> = (0..MODES.len())
                .map(|m| {
                    if m >= 4 && row.filter.is_none() {
                        return "-".to_owned();
                    }
                    let (payload, wire) = per_update(&row.modes[m], row.updates);
                    format!("{payload:.0} / {wire:.0}")
                })
                .collect();
            let filter = row.filter.as_ref().map(|f| f.join(",")).unwrap_or_default();
            println!(
                "| {name} | {ns} | {} | {filter} | {} |",
                row.updates,
                cells.join(" | ")
            );
            report.push(serde_json::json!({
                "feed": name,
                "namespace": ns,
                "updates": row.updates,
                "filter": row.filter,
                "modes": MODES.iter().enumerate().map(|(m, mode)| {
                    let (payload, wire) = per_update(&row.modes[m], row.updates);
                    serde_json::json!({
                        "mode": mode,
                        "messages": row.modes[m].messages,
                        "payload_per_update": payload,
                        "wire_per_update": wire,
                        "available": m < 4 || row.filter.is_some(),
                    })
                }).collect::<Vec<_>>(),
            }));
        }
    }
    let cells: Vec<String> = total
        .iter()
        .map(|t| {
            let (payload, wire) = per_update(t, total_updates);
            format!("{payload:.0} / {wire:.0}")
        })
        .collect();
    println!(
        "| all of the above | | {total_updates} | | {} |",
        cells.join(" | ")
    );
    let wire = |m: usize| total[m].wire as f64;
    println!(
        "\nOver all of them, deflate sends {:.0} % fewer wire bytes than plain diffs \
         ({:.0} % fewer with the field filter); plain diffs send {:.0} % fewer than full state.",
        100.0 * (1.0 - wire(3) / wire(2)),
        100.0 * (1.0 - wire(5) / wire(4)),
        100.0 * (1.0 - wire(2) / wire(0)),
    );
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
    if measure {
        measurements(&diffs);
    }
}

/// What the defaults were chosen from, over the plain diff frames.
fn measurements(frames: &[Vec<u8>]) {
    println!(
        "\nSavings by payload size ({} diff frames, filtered or not, compression.min_bytes):\n",
        frames.len()
    );
    println!("| payload bytes | frames | shrink | mean plain | mean sent | saved |");
    println!("|---|---:|---:|---:|---:|---:|");
    let edges = [
        0,
        64,
        80,
        96,
        112,
        128,
        160,
        192,
        256,
        512,
        1024,
        4096,
        usize::MAX,
    ];
    for pair in edges.windows(2) {
        let (lo, hi) = (pair[0], pair[1]);
        let bucket: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|f| (lo..hi).contains(&(f.len() - header_len(f))))
            .collect();
        if bucket.is_empty() {
            continue;
        }
        let plain: usize = bucket.iter().map(|f| f.len()).sum();
        let packed: Vec<Option<usize>> = bucket
            .iter()
            .map(|f| deflate_frame(f).map(|c| c.len()))
            .collect();
        let shrink = packed.iter().flatten().count();
        let packed: usize = packed
            .iter()
            .zip(&bucket)
            .map(|(p, f)| p.unwrap_or(f.len()))
            .sum();
        let n = bucket.len() as f64;
        let hi = if hi == usize::MAX {
            "".to_owned()
        } else {
            hi.to_string()
        };
        println!(
            "| {lo}-{hi} | {} | {:.0} % | {:.0} | {:.0} | {:.0} % |",
            bucket.len(),
            100.0 * shrink as f64 / n,
            plain as f64 / n,
            packed as f64 / n,
            100.0 * (1.0 - packed as f64 / plain as f64)
        );
    }

    // No real diff is under 96 bytes (the envelope alone is about 80): the
    // first L bytes of each stand in for the tiny diffs other feeds send.
    println!("\nThe first L bytes of each diff payload, compressed on their own:\n");
    println!("| L | shrink | mean saved |");
    println!("|---:|---:|---:|");
    for len in [32, 48, 64, 80, 96, 112, 128] {
        let (mut shrink, mut saved, mut n) = (0, 0i64, 0);
        for f in frames {
            let payload = &f[header_len(f)..];
            if payload.len() < len {
                continue;
            }
            let mut prefix = wire::FrameBuilder::with_capacity(len);
            prefix.payload().extend_from_slice(&payload[..len]);
            let prefix = prefix.finish_text();
            n += 1;
            if let Some(packed) = deflate_frame(&prefix) {
                shrink += 1;
                saved += (prefix.len() - packed.len()) as i64;
            }
        }
        println!(
            "| {len} | {:.0} % | {:.1} B |",
            100.0 * shrink as f64 / n.max(1) as f64,
            saved as f64 / n.max(1) as f64
        );
    }

    let min_bytes = CompressionConfig::default().min_bytes;
    println!("\nBy server_max_window_bits (frames longer than the window go plain):\n");
    println!("| bits | frames compressed | wire bytes | vs 15 | compress time |");
    println!("|---:|---:|---:|---:|---:|");
    let mut at_15 = 0.0;
    for bits in (9..=15).rev() {
        let agreed = Negotiated::new(bits, min_bytes);
        let start = Instant::now();
        let (mut wire, mut compressed) = (0usize, 0);
        for f in frames {
            let packed = agreed
                .compresses(f.len() - header_len(f))
                .then(|| deflate_frame(f))
                .flatten();
            compressed += usize::from(packed.is_some());
            wire += packed.map_or(f.len(), |c| c.len());
        }
        let elapsed = start.elapsed();
        if bits == 15 {
            at_15 = wire as f64;
        }
        println!(
            "| {bits} | {compressed} | {wire} | {:+.2} % | {:.1} us/frame |",
            100.0 * (wire as f64 / at_15 - 1.0),
            elapsed.as_secs_f64() * 1e6 / compressed.max(1) as f64
        );
    }

    println!("\nBy level (every frame at or over min_bytes; the server uses 1, fast):\n");
    println!("| level | wire bytes | compress time |");
    println!("|---:|---:|---:|");
    for level in [1, 6, 9] {
        let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
        let start = Instant::now();
        let mut wire = 0;
        for f in frames {
            let payload = &f[header_len(f)..];
            if payload.len() < min_bytes {
                wire += f.len();
                continue;
            }
            c.reset();
            let mut out = Vec::with_capacity(payload.len() + 64);
            c.compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            let packed = out.len() - 4 + header_len(f);
            wire += packed.min(f.len());
        }
        println!(
            "| {level} | {wire} | {:.1} us/frame |",
            start.elapsed().as_secs_f64() * 1e6 / frames.len().max(1) as f64
        );
    }

    println!("\nMemory (heap bytes):\n");
    let before = LIVE.load(Ordering::Relaxed);
    let compressor = flate2::Compress::new(flate2::Compression::fast(), false);
    let compressor_bytes = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    let inflater = flate2::Decompress::new(false);
    let inflater_bytes = LIVE.load(Ordering::Relaxed) - before;
    drop((compressor, inflater));
    // A bomb against the default 64 KiB message bound: what inflating it
    // holds at its peak, the thread's inflater included.
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut bomb = Vec::with_capacity(1 << 20);
    c.compress_vec(
        &vec![b' '; 16 << 20],
        &mut bomb,
        flate2::FlushCompress::Sync,
    )
    .unwrap();
    std::thread::spawn(move || {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        assert!(inflate(&bomb[..bomb.len() - 4], 64 * 1024).is_err());
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!("| what | bytes |\n|---|---:|");
        println!("| compressor, one per fanout thread (level 1) | {compressor_bytes} |");
        println!("| inflater, one per worker thread | {inflater_bytes} |");
        println!("| peak while refusing a 16 MiB bomb at the 64 KiB bound (inflater made then) | {peak} |");
        println!("| kept by a compressed connection between messages | 0 |");
    })
    .join()
    .unwrap();
}
