//! One applied update as the state stage hands it to the fanout shards, and
//! the frames built from it.
//!
//! Subscribers differ in two ways that change their frame: the field filter
//! (which members `data` keeps) and `prev` (where their chain stands). Each
//! filtered patch and each frame is built once per process: the first shard
//! that needs a shape builds it and leaves it on the [`Applied`] for the
//! others. In the usual case (no filter, chain at `seq - 1`) every
//! subscriber on every shard gets the same frame. Nothing is built that no
//! subscriber needs (an update whose subscribers all filter it out encodes
//! no frame at all).
//!
//! A session that agreed to permessage-deflate gets the compressed form of
//! its frame where its agreement allows (`crate::deflate`): compressed
//! lazily, once per distinct frame, the first time such a session needs
//! it, and shared like the plain frame. Lazily rather than eagerly: an
//! update no compressed subscriber receives costs nothing, and no shard has
//! to know in advance whether any compressed subscriber exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::cell::ChannelCell;
use super::filter::FieldFilter;
use crate::deflate;
use crate::outbox::Outbox;
use crate::record::{FeedRecord, JsonMap};
use crate::wire;

/// What the state stage hands to every fanout shard.
#[derive(Clone)]
pub enum Event {
    /// A record applied to a channel that had subscribers.
    Update(Arc<Applied>),
    /// A channel's first record (`first`, seq 1): shards start the sessions
    /// whose targets cover it (always handed off; creation is rare).
    Created {
        cell: Arc<ChannelCell>,
        first: Arc<FeedRecord>,
    },
    /// A channel's state was replaced wholesale (a NATS edge that could not
    /// get some of its records loaded a later snapshot): every delivery of
    /// it gets a `resync` snapshot.
    Replaced(Arc<ChannelCell>),
}

/// An update's patch restricted to one filter.
pub struct Part {
    pub map: JsonMap,
    pub json: Vec<u8>,
}

/// One update, applied once, shared by reference with every shard.
pub struct Applied {
    pub cell: Arc<ChannelCell>,
    pub seq: u64,
    /// The ingest stamp sent as `ts`.
    pub ts: u64,
    /// When the state stage took the record (its monotonic clock).
    pub taken_ns: u64,
    record: Arc<FeedRecord>,
    data_json: Bytes,
    /// The unfiltered frame with `prev = seq - 1`.
    in_chain: OnceLock<Bytes>,
    /// Its compressed form; `None` when compressing does not shrink it.
    in_chain_deflated: OnceLock<Option<Bytes>>,
    shapes: Mutex<Shapes>,
}

/// Filtered patches and frames of other shapes, built on first demand.
#[derive(Default)]
struct Shapes {
    /// By filter id; `None` when the filter keeps nothing of this update.
    parts: HashMap<u64, Option<Arc<Part>>>,
    /// By (filter id, prev); id 0 is "no filter".
    frames: HashMap<(u64, u64), Bytes>,
    /// Compressed forms of `frames`, by the same key.
    deflated: HashMap<(u64, u64), Option<Bytes>>,
}

/// A filter's process-wide identity (0: no filter).
pub fn filter_id(filter: &Option<Arc<FieldFilter>>) -> u64 {
    filter.as_ref().map_or(0, |f| f.id())
}

impl Applied {
    /// `data_json` is the record's data serialized.
    pub fn new(
        cell: Arc<ChannelCell>,
        seq: u64,
        record: Arc<FeedRecord>,
        data_json: Bytes,
        taken_ns: u64,
    ) -> Self {
        Self {
            cell,
            seq,
            ts: record.ingest_ns,
            taken_ns,
            record,
            data_json,
            in_chain: OnceLock::new(),
            in_chain_deflated: OnceLock::new(),
            shapes: Mutex::new(Shapes::default()),
        }
    }

    pub fn data(&self) -> &JsonMap {
        &self.record.data
    }

    pub fn data_json(&self) -> &[u8] {
        &self.data_json
    }

    /// The filtered patch for `filter` (shared), `None` if the update
    /// touches none of its fields.
    fn part(&self, filter: &Arc<FieldFilter>) -> Option<Arc<Part>> {
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        shapes
            .parts
            .entry(filter.id())
            .or_insert_with(|| {
                let map = filter.restrict(&self.record.data);
                (!map.is_empty()).then(|| {
                    let json = serde_json::to_vec(&map).expect("serializing a JSON map");
                    Arc::new(Part { map, json })
                })
            })
            .clone()
    }

    /// The frame for `filter` and `prev`; the flag says whether this call
    /// encoded it (for the encode-once counter).
    fn frame(&self, filter: &Option<Arc<FieldFilter>>, json: &[u8], prev: u64) -> (Bytes, bool) {
        let name = self.cell.name.as_str();
        if filter.is_none() && prev + 1 == self.seq {
            let mut built = false;
            let frame = self.in_chain.get_or_init(|| {
                built = true;
                wire::update(name, self.seq, prev, self.ts, &self.data_json)
            });
            return (frame.clone(), built);
        }
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(frame) = shapes.frames.get(&(filter_id(filter), prev)) {
            return (frame.clone(), false);
        }
        let frame = wire::update(name, self.seq, prev, self.ts, json);
        shapes
            .frames
            .insert((filter_id(filter), prev), frame.clone());
        (frame, true)
    }
}

impl Applied {
    /// The in-chain unfiltered frame as a session that agreed to `agreed`
    /// is sent it, when both forms are made already: the usual compressed
    /// delivery, without taking (and dropping) the plain frame first.
    fn in_chain_ready(
        &self,
        filter: &Option<Arc<FieldFilter>>,
        prev: u64,
        agreed: deflate::Negotiated,
    ) -> Option<Bytes> {
        if filter.is_some() || prev + 1 != self.seq {
            return None;
        }
        let plain = self.in_chain.get()?;
        let deflated = self.in_chain_deflated.get()?;
        Some(match deflated {
            Some(deflated) if agreed.compresses_frame(plain) => deflated.clone(),
            _ => plain.clone(),
        })
    }

    /// The compressed form of `plain`, the frame for `filter` and `prev`,
    /// compressed by the first caller and shared with the rest; the flag
    /// says whether this call compressed it.
    fn deflated(
        &self,
        filter: &Option<Arc<FieldFilter>>,
        prev: u64,
        plain: &Bytes,
    ) -> (Option<Bytes>, bool) {
        let mut compressed = false;
        let compress = || {
            compressed = true;
            deflate::deflate_frame(plain)
        };
        let frame = if filter.is_none() && prev + 1 == self.seq {
            self.in_chain_deflated.get_or_init(compress).clone()
        } else {
            let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
            shapes
                .deflated
                .entry((filter_id(filter), prev))
                .or_insert_with(compress)
                .clone()
        };
        (frame, compressed)
    }
}

/// One shard's view of an [`Applied`] during its fanout: a local memo in
/// front of the shared shapes, so the shared lock is taken once per shape
/// per shard, not once per subscriber.
pub struct UpdateFrames<'a> {
    applied: &'a Applied,
    parts: HashMap<u64, Option<Arc<Part>>>,
    frames: HashMap<(u64, u64), Bytes>,
    deflated: HashMap<(u64, u64), Option<Bytes>>,
    encoded: usize,
    compressed: usize,
}

impl<'a> UpdateFrames<'a> {
    pub fn new(applied: &'a Applied) -> Self {
        Self {
            applied,
            parts: HashMap::new(),
            frames: HashMap::new(),
            deflated: HashMap::new(),
            encoded: 0,
            compressed: 0,
        }
    }

    /// [`frame`](Self::frame) as `outbox`'s session is sent it: compressed
    /// (shared, compressed once) if it agreed to permessage-deflate and its
    /// agreement allows this frame's size, else plain.
    pub fn frame_for(
        &mut self,
        filter: &Option<Arc<FieldFilter>>,
        prev: u64,
        outbox: &Outbox,
    ) -> Bytes {
        let agreed = outbox.deflate();
        if let Some(frame) = agreed.and_then(|a| self.applied.in_chain_ready(filter, prev, a)) {
            return frame;
        }
        let plain = self.frame(filter, prev);
        match agreed {
            Some(agreed) if agreed.compresses_frame(&plain) => {
                self.deflated(filter, prev, &plain).unwrap_or(plain)
            }
            _ => plain,
        }
    }

    fn deflated(
        &mut self,
        filter: &Option<Arc<FieldFilter>>,
        prev: u64,
        plain: &Bytes,
    ) -> Option<Bytes> {
        let applied = self.applied;
        let compressed = &mut self.compressed;
        let mut shared = || {
            let (frame, built) = applied.deflated(filter, prev, plain);
            *compressed += usize::from(built);
            frame
        };
        if filter.is_none() && prev + 1 == applied.seq {
            return shared();
        }
        self.deflated
            .entry((filter_id(filter), prev))
            .or_insert_with(shared)
            .clone()
    }

    /// The patch a subscriber with `filter` gets, and its serialized length;
    /// `None` if the update touches none of its fields (nothing is sent).
    pub fn part(&mut self, filter: &Option<Arc<FieldFilter>>) -> Option<(&JsonMap, usize)> {
        let Some(filter) = filter else {
            return Some((self.applied.data(), self.applied.data_json.len()));
        };
        let applied = self.applied;
        self.parts
            .entry(filter.id())
            .or_insert_with(|| applied.part(filter))
            .as_ref()
            .map(|p| (&p.map, p.json.len()))
    }

    /// The frame for a subscriber with `filter` whose previous delivery was
    /// `prev`. Precondition: [`part`](Self::part) returned `Some` for `filter`.
    pub fn frame(&mut self, filter: &Option<Arc<FieldFilter>>, prev: u64) -> Bytes {
        let applied = self.applied;
        if filter.is_none() && prev + 1 == applied.seq {
            // The usual shape: shared on the update itself, no memo needed.
            let (frame, built) = applied.frame(filter, &applied.data_json, prev);
            self.encoded += usize::from(built);
            return frame;
        }
        let key = (filter_id(filter), prev);
        if let Some(frame) = self.frames.get(&key) {
            return frame.clone();
        }
        let (frame, built) = match filter {
            None => applied.frame(filter, &applied.data_json, prev),
            Some(f) => {
                let part = self.parts[&f.id()]
                    .clone()
                    .expect("frame() is only asked for a non-empty part");
                applied.frame(filter, &part.json, prev)
            }
        };
        self.encoded += usize::from(built);
        self.frames.insert(key, frame.clone());
        frame
    }

    /// How many distinct frames this shard encoded (for the encode-once metric).
    pub fn encoded(&self) -> usize {
        self.encoded
    }

    /// Frames this shard compressed (each once for the whole process).
    pub fn compressed(&self) -> usize {
        self.compressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::engine::filter::FilterInterner;
    use crate::engine::history::HistoryBudget;
    use crate::engine::policy::NamespacePolicy;
    use crate::engine::state_budget::StateBudget;
    use serde_json::json;

    fn applied(data: serde_json::Value, seq: u64) -> Applied {
        let serde_json::Value::Object(data) = data else {
            panic!("not an object")
        };
        let record = Arc::new(FeedRecord {
            channel: ChannelName::new("q.A").unwrap(),
            data,
            ts: None,
            ingest_ns: 1,
        });
        let cell = ChannelCell::create(
            0,
            &record,
            NamespacePolicy::default(),
            &mut StateBudget::unbounded(),
            &mut HistoryBudget::new(usize::MAX),
        )
        .unwrap();
        let json = Bytes::from(serde_json::to_vec(&record.data).unwrap());
        Applied::new(Arc::new(cell), seq, record, json, 0)
    }

    #[test]
    fn one_encoding_per_distinct_prev_over_every_shard() {
        let update = applied(json!({}), 10);
        let (mut shard_a, mut shard_b) = (UpdateFrames::new(&update), UpdateFrames::new(&update));
        let a = shard_a.frame(&None, 9);
        let b = shard_b.frame(&None, 9);
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes shared, not re-encoded");
        let c = shard_a.frame(&None, 7);
        let d = shard_b.frame(&None, 7);
        assert_eq!(c.as_ptr(), d.as_ptr());
        assert_ne!(a, c);
        assert_eq!(shard_a.encoded() + shard_b.encoded(), 2);
    }

    /// A compressed frame is made once and shared by every compressed
    /// subscriber on every shard; a plain one keeps the plain frame, and
    /// so does a session whose window the frame does not fit.
    #[test]
    fn the_compressed_frame_is_made_once_and_shared() {
        use crate::deflate::Negotiated;
        let text = "x".repeat(600);
        let update = applied(json!({ "note": text }), 3);
        let wide = Outbox::new(1 << 20).with_deflate(Some(Negotiated::new(15, 96)));
        let narrow = Outbox::new(1 << 20).with_deflate(Some(Negotiated::new(9, 96)));
        let plain = Outbox::new(1 << 20);
        let (mut shard_a, mut shard_b) = (UpdateFrames::new(&update), UpdateFrames::new(&update));
        let a = shard_a.frame_for(&None, 2, &wide);
        let b = shard_b.frame_for(&None, 2, &wide);
        assert_eq!(a[0], 0xC1, "FIN, RSV1, text");
        assert_eq!(a.as_ptr(), b.as_ptr(), "compressed once, shared");
        assert!(a.len() < 200, "{} bytes", a.len());
        let p = shard_a.frame_for(&None, 2, &plain);
        assert_eq!(p[0], 0x81);
        assert_eq!(p.as_ptr(), shard_b.frame(&None, 2).as_ptr());
        let n = shard_b.frame_for(&None, 2, &narrow);
        assert_eq!(n.as_ptr(), p.as_ptr(), "over a 512-byte window: plain");
        // Another prev, another shape: its own compressed frame, once.
        let c = shard_a.frame_for(&None, 1, &wide);
        let d = shard_b.frame_for(&None, 1, &wide);
        assert_eq!(c.as_ptr(), d.as_ptr());
        assert_ne!(c.as_ptr(), a.as_ptr());
    }

    #[test]
    fn one_encoding_per_distinct_filter_and_prev() {
        let mut interner = FilterInterner::default();
        let bid = Some(interner.intern(&["bid".to_owned()]));
        let bid_too = Some(interner.intern(&["bid".to_owned()]));
        let other = Some(interner.intern(&["volume".to_owned()]));
        let update = applied(json!({"bid": 1, "ask": 2}), 5);
        let mut frames = UpdateFrames::new(&update);
        assert_eq!(frames.part(&bid).unwrap().1, br#"{"bid":1}"#.len());
        assert!(
            frames.part(&other).is_none(),
            "touches no field: nothing to send"
        );
        let x = frames.frame(&bid, 4);
        let mut elsewhere = UpdateFrames::new(&update);
        assert!(elsewhere.part(&bid_too).is_some());
        let y = elsewhere.frame(&bid_too, 4);
        assert_eq!(x.as_ptr(), y.as_ptr(), "equal filters share the frame");
        let z = frames.frame(&bid, 2);
        assert_ne!(x, z);
        let full = frames.frame(&None, 4);
        assert!(String::from_utf8_lossy(&full).contains(r#""ask":2"#));
        assert!(!String::from_utf8_lossy(&x).contains("ask"));
        assert_eq!(frames.encoded() + elsewhere.encoded(), 3);
    }
}
