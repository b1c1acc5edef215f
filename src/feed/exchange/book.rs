//! A price-level order book shared by the exchange feeds, which turns each
//! change into the `book.<SYM>` record's merge patch.
//!
//! Levels are keyed by the exchange's own price string (the record's key)
//! and ordered by its value. At most `depth` levels are kept per side: a new
//! level worse than the worst kept one of a full side is not tracked, and a
//! better one pushes the worst out (published as `null`). So with a cap, a
//! side can hold fewer than `depth` levels after deletions near the top
//! until the next snapshot (docs/feeds.md, "Order books").

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::record::JsonMap;

/// A price ordered by its numeric value.
#[derive(Debug, Clone, Copy)]
struct Price(f64);

impl PartialEq for Price {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Price {}
impl PartialOrd for Price {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Price {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Bids,
    Asks,
}

impl Side {
    pub fn key(self) -> &'static str {
        match self {
            Side::Bids => "bids",
            Side::Asks => "asks",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Levels {
    /// price -> (the exchange's price string, size as a JSON number)
    levels: BTreeMap<Price, (String, Value)>,
}

#[derive(Debug, Clone)]
pub struct Book {
    bids: Levels,
    asks: Levels,
    depth: usize,
}

/// The changes of one update, as the two halves of a merge patch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Patch {
    bids: JsonMap,
    asks: JsonMap,
}

impl Patch {
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    fn side(&mut self, side: Side) -> &mut JsonMap {
        match side {
            Side::Bids => &mut self.bids,
            Side::Asks => &mut self.asks,
        }
    }

    /// The record data: only the sides that changed.
    pub fn into_data(self) -> JsonMap {
        let mut data = JsonMap::new();
        if !self.bids.is_empty() {
            data.insert("bids".into(), Value::Object(self.bids));
        }
        if !self.asks.is_empty() {
            data.insert("asks".into(), Value::Object(self.asks));
        }
        data
    }
}

/// The record that empties a book before a (re)snapshot.
pub fn clear_data() -> JsonMap {
    let mut data = JsonMap::new();
    data.insert("bids".into(), Value::Null);
    data.insert("asks".into(), Value::Null);
    data
}

impl Book {
    pub fn new(depth: usize) -> Self {
        Self {
            bids: Levels::default(),
            asks: Levels::default(),
            depth: depth.max(1),
        }
    }

    pub fn clear(&mut self) {
        self.bids.levels.clear();
        self.asks.levels.clear();
    }

    pub fn len(&self, side: Side) -> usize {
        self.levels(side).levels.len()
    }

    fn levels(&self, side: Side) -> &Levels {
        match side {
            Side::Bids => &self.bids,
            Side::Asks => &self.asks,
        }
    }

    fn levels_mut(&mut self, side: Side) -> &mut Levels {
        match side {
            Side::Bids => &mut self.bids,
            Side::Asks => &mut self.asks,
        }
    }

    /// Sets (size `Some`) or deletes (`None`) one level, noting the change
    /// in `patch`. `false` if `price` is not a number.
    pub fn set(&mut self, side: Side, price: &str, size: Option<Value>, patch: &mut Patch) -> bool {
        let Ok(value) = price.trim().parse::<f64>() else {
            return false;
        };
        if !value.is_finite() {
            return false;
        }
        let key = Price(value);
        let depth = self.depth;
        let levels = &mut self.levels_mut(side).levels;
        let Some(size) = size else {
            if let Some((old, _)) = levels.remove(&key) {
                patch.side(side).insert(old, Value::Null);
            }
            return true;
        };
        if let Some((old, kept)) = levels.get_mut(&key) {
            if old != price {
                // Same price written differently: move the key.
                patch.side(side).insert(std::mem::take(old), Value::Null);
                *old = price.to_owned();
            }
            *kept = size.clone();
            patch.side(side).insert(price.to_owned(), size);
            return true;
        }
        if levels.len() >= depth {
            let worst = worst(levels, side).expect("a full side has a worst level");
            let better = match side {
                Side::Bids => key > worst,
                Side::Asks => key < worst,
            };
            if !better {
                return true;
            }
            if let Some((old, _)) = levels.remove(&worst) {
                patch.side(side).insert(old, Value::Null);
            }
        }
        levels.insert(key, (price.to_owned(), size.clone()));
        patch.side(side).insert(price.to_owned(), size);
        true
    }

    /// The whole book as record data, best levels first.
    pub fn full_data(&self) -> JsonMap {
        let mut data = JsonMap::new();
        for side in [Side::Bids, Side::Asks] {
            let levels = &self.levels(side).levels;
            let mut map = JsonMap::new();
            let mut put = |(p, s): &(String, Value)| {
                map.insert(p.clone(), s.clone());
            };
            match side {
                Side::Bids => levels.values().rev().for_each(&mut put),
                Side::Asks => levels.values().for_each(&mut put),
            }
            data.insert(side.key().into(), Value::Object(map));
        }
        data
    }

    /// The best level of a side: (price string, size).
    pub fn best(&self, side: Side) -> Option<(&str, &Value)> {
        let levels = &self.levels(side).levels;
        let best = match side {
            Side::Bids => levels.values().next_back(),
            Side::Asks => levels.values().next(),
        };
        best.map(|(p, s)| (p.as_str(), s))
    }
}

fn worst(levels: &BTreeMap<Price, (String, Value)>, side: Side) -> Option<Price> {
    match side {
        Side::Bids => levels.keys().next().copied(),
        Side::Asks => levels.keys().next_back().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(book: &mut Book, side: Side, price: &str, size: Option<f64>) -> Value {
        let mut patch = Patch::default();
        assert!(book.set(side, price, size.map(|s| json!(s)), &mut patch));
        Value::Object(patch.into_data())
    }

    #[test]
    fn levels_are_set_deleted_and_listed_best_first() {
        let mut book = Book::new(10);
        set(&mut book, Side::Bids, "10.0", Some(1.0));
        set(&mut book, Side::Bids, "11.0", Some(2.0));
        set(&mut book, Side::Asks, "13.0", Some(3.0));
        set(&mut book, Side::Asks, "12.0", Some(4.0));
        assert_eq!(
            set(&mut book, Side::Bids, "10.0", None),
            json!({"bids": {"10.0": null}})
        );
        // Deleting a level that is not there changes nothing.
        assert_eq!(set(&mut book, Side::Bids, "9.0", None), json!({}));
        let full = Value::Object(book.full_data());
        assert_eq!(
            full,
            json!({"bids": {"11.0": 2.0}, "asks": {"12.0": 4.0, "13.0": 3.0}})
        );
        assert_eq!(
            serde_json::to_string(&full).unwrap(),
            r#"{"bids":{"11.0":2.0},"asks":{"12.0":4.0,"13.0":3.0}}"#
        );
        assert_eq!(book.best(Side::Asks).unwrap().0, "12.0");
    }

    #[test]
    fn a_depth_cap_keeps_the_best_levels_and_says_which_left() {
        let mut book = Book::new(2);
        set(&mut book, Side::Asks, "10", Some(1.0));
        set(&mut book, Side::Asks, "11", Some(1.0));
        // Worse than the worst kept: not tracked, nothing published.
        assert_eq!(set(&mut book, Side::Asks, "12", Some(1.0)), json!({}));
        // Better: the worst is pushed out.
        assert_eq!(
            set(&mut book, Side::Asks, "9", Some(1.0)),
            json!({"asks": {"11": null, "9": 1.0}})
        );
        set(&mut book, Side::Bids, "5", Some(1.0));
        set(&mut book, Side::Bids, "6", Some(1.0));
        assert_eq!(
            set(&mut book, Side::Bids, "7", Some(2.0)),
            json!({"bids": {"5": null, "7": 2.0}})
        );
        assert_eq!(book.len(Side::Bids), 2);
        assert_eq!(book.len(Side::Asks), 2);
    }

    #[test]
    fn a_price_that_is_not_a_number_is_refused() {
        let mut book = Book::new(2);
        let mut patch = Patch::default();
        assert!(!book.set(Side::Bids, "NaN", Some(json!(1)), &mut patch));
        assert!(!book.set(Side::Bids, "x", Some(json!(1)), &mut patch));
        assert!(patch.is_empty());
    }
}
