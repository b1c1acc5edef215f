//! Turning one applied update into frames for its subscribers.
//!
//! Subscribers differ in two ways that change their frame: the field filter
//! (which members `data` keeps) and `prev` (where their chain stands). The
//! filtered patch is built and serialized once per distinct filter, and each
//! frame once per distinct (filter, prev). In the usual case (no filter,
//! chain at `seq - 1`) every subscriber gets the same frame.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::filter::FieldFilter;
use crate::record::JsonMap;
use crate::wire;

/// An update's patch restricted to one filter.
pub struct Part {
    pub map: JsonMap,
    pub json: Vec<u8>,
}

/// The frames of one update, built lazily and shared by reference.
pub struct UpdateFrames<'a> {
    channel: &'a str,
    seq: u64,
    ts: u64,
    data: &'a JsonMap,
    data_json: &'a [u8],
    in_chain: Option<Bytes>,
    /// Filtered patches by filter identity; `None` when the filter keeps
    /// nothing of this update.
    parts: HashMap<usize, Option<Part>>,
    /// Frames by (filter identity, prev); identity 0 is "no filter".
    frames: HashMap<(usize, u64), Bytes>,
    encoded: usize,
}

fn identity(filter: &Option<Arc<FieldFilter>>) -> usize {
    filter.as_ref().map_or(0, |f| Arc::as_ptr(f) as usize)
}

impl<'a> UpdateFrames<'a> {
    /// `data_json` is `data` serialized.
    pub fn new(
        channel: &'a str,
        seq: u64,
        ts: u64,
        data: &'a JsonMap,
        data_json: &'a [u8],
    ) -> Self {
        Self {
            channel,
            seq,
            ts,
            data,
            data_json,
            in_chain: None,
            parts: HashMap::new(),
            frames: HashMap::new(),
            encoded: 0,
        }
    }

    /// The patch a subscriber with `filter` gets, and its serialized length;
    /// `None` if the update touches none of its fields (nothing is sent).
    pub fn part(&mut self, filter: &Option<Arc<FieldFilter>>) -> Option<(&JsonMap, usize)> {
        let Some(filter) = filter else {
            return Some((self.data, self.data_json.len()));
        };
        let data = self.data;
        self.parts
            .entry(Arc::as_ptr(filter) as usize)
            .or_insert_with(|| {
                let map = filter.restrict(data);
                (!map.is_empty()).then(|| {
                    let json = serde_json::to_vec(&map).expect("serializing a JSON map");
                    Part { map, json }
                })
            })
            .as_ref()
            .map(|p| (&p.map, p.json.len()))
    }

    /// The frame for a subscriber with `filter` whose previous delivery was
    /// `prev`. Precondition: [`part`](Self::part) returned `Some` for `filter`.
    pub fn frame(&mut self, filter: &Option<Arc<FieldFilter>>, prev: u64) -> Bytes {
        let (channel, seq, ts) = (self.channel, self.seq, self.ts);
        let key = identity(filter);
        if key == 0 && prev + 1 == seq {
            if let Some(frame) = &self.in_chain {
                return frame.clone();
            }
            let frame = wire::update(channel, seq, prev, ts, self.data_json);
            self.encoded += 1;
            self.in_chain = Some(frame.clone());
            return frame;
        }
        if let Some(frame) = self.frames.get(&(key, prev)) {
            return frame.clone();
        }
        let json: &[u8] = if key == 0 {
            self.data_json
        } else {
            &self.parts[&key]
                .as_ref()
                .expect("frame() is only asked for a non-empty part")
                .json
        };
        let frame = wire::update(channel, seq, prev, ts, json);
        self.encoded += 1;
        self.frames.insert((key, prev), frame.clone());
        frame
    }

    /// How many distinct frames were encoded (for the encode-once metric).
    pub fn encoded(&self) -> usize {
        self.encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::filter::FilterInterner;
    use serde_json::json;

    fn map(v: serde_json::Value) -> JsonMap {
        match v {
            serde_json::Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn one_encoding_per_distinct_prev() {
        let data = JsonMap::new();
        let mut frames = UpdateFrames::new("a.b", 10, 1, &data, b"{}");
        let a = frames.frame(&None, 9);
        let b = frames.frame(&None, 9);
        assert_eq!(a.as_ptr(), b.as_ptr(), "same bytes shared, not re-encoded");
        let c = frames.frame(&None, 7);
        let d = frames.frame(&None, 7);
        assert_eq!(c.as_ptr(), d.as_ptr());
        assert_ne!(a, c);
        assert_eq!(frames.encoded(), 2);
    }

    #[test]
    fn one_encoding_per_distinct_filter_and_prev() {
        let mut interner = FilterInterner::default();
        let bid = Some(interner.intern(&["bid".to_owned()]));
        let bid_too = Some(interner.intern(&["bid".to_owned()]));
        let other = Some(interner.intern(&["volume".to_owned()]));
        let data = map(json!({"bid": 1, "ask": 2}));
        let json = serde_json::to_vec(&data).unwrap();
        let mut frames = UpdateFrames::new("q.A", 5, 1, &data, &json);
        assert_eq!(frames.part(&bid).unwrap().1, br#"{"bid":1}"#.len());
        assert!(
            frames.part(&other).is_none(),
            "touches no field: nothing to send"
        );
        let x = frames.frame(&bid, 4);
        assert!(frames.part(&bid_too).is_some());
        let y = frames.frame(&bid_too, 4);
        assert_eq!(x.as_ptr(), y.as_ptr(), "equal filters share the frame");
        let z = frames.frame(&bid, 2);
        assert_ne!(x, z);
        let full = frames.frame(&None, 4);
        assert!(String::from_utf8_lossy(&full).contains(r#""ask":2"#));
        assert!(!String::from_utf8_lossy(&x).contains("ask"));
        assert_eq!(frames.encoded(), 3);
    }
}
