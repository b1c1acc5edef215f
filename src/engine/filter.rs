//! Field filters: a subscription's `fields`, applied to top-level members of
//! snapshots and patches.
//!
//! Filters are interned once for the whole process (one table shared by
//! every fanout shard, used at subscribe time): every subscription asking
//! for the same set of fields holds the same [`Arc<FieldFilter>`] with the
//! same [`id`](FieldFilter::id), so fanout can group subscribers by it and
//! encode each update once per distinct filter rather than once per
//! subscriber or per shard. Ids are never reused, so a cache keyed by id
//! cannot confuse a freed filter with a new one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::record::JsonMap;

/// A set of top-level field names, sorted and without repeats.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FieldFilter {
    /// Process-wide identity, never 0 (0 means "no filter") and never reused.
    id: u64,
    fields: Box<[String]>,
}

impl FieldFilter {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn contains(&self, key: &str) -> bool {
        self.fields
            .binary_search_by(|f| f.as_str().cmp(key))
            .is_ok()
    }

    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The members of `map` this filter keeps; empty when it keeps none.
    pub fn restrict(&self, map: &JsonMap) -> JsonMap {
        if map.len() <= self.fields.len() {
            map.iter()
                .filter(|(k, _)| self.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            // A big state and a short filter: look the few fields up.
            self.fields
                .iter()
                .filter_map(|f| map.get(f).map(|v| (f.clone(), v.clone())))
                .collect()
        }
    }

    /// Whether `map` has any member this filter keeps.
    pub fn touches(&self, map: &JsonMap) -> bool {
        map.keys().any(|k| self.contains(k))
    }
}

/// The engine's table of live filters, keyed by their field list.
#[derive(Default)]
pub struct FilterInterner {
    filters: HashMap<Box<[String]>, Arc<FieldFilter>>,
    /// Size at which the next sweep of unused filters runs.
    sweep_at: usize,
    /// Ids handed out so far.
    last_id: u64,
}

/// The interner every shard of a process shares.
pub type SharedFilters = std::sync::Arc<std::sync::Mutex<FilterInterner>>;

impl FilterInterner {
    /// The shared filter for `fields` (any order, repeats allowed).
    pub fn intern(&mut self, fields: &[String]) -> Arc<FieldFilter> {
        let mut key: Vec<String> = fields.to_vec();
        key.sort_unstable();
        key.dedup();
        let key = key.into_boxed_slice();
        if let Some(filter) = self.filters.get(&key) {
            return filter.clone();
        }
        if self.filters.len() >= self.sweep_at {
            // Forget filters only this table still holds; amortized, and it
            // keeps the table within twice the filters in use.
            self.filters.retain(|_, f| Arc::strong_count(f) > 1);
            self.sweep_at = (self.filters.len() * 2).max(64);
        }
        self.last_id += 1;
        let filter = Arc::new(FieldFilter {
            id: self.last_id,
            fields: key.clone(),
        });
        self.filters.insert(key, filter.clone());
        filter
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// Identity of an optional filter, for caches that group by it.
pub fn same(a: &Option<Arc<FieldFilter>>, b: &Option<Arc<FieldFilter>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn equal_field_sets_share_one_filter() {
        let mut interner = FilterInterner::default();
        let a = interner.intern(&strings(&["bid", "ask"]));
        let b = interner.intern(&strings(&["ask", "bid", "ask"]));
        let c = interner.intern(&strings(&["bid"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.fields(), ["ask", "bid"]);
    }

    #[test]
    fn unused_filters_are_swept() {
        let mut interner = FilterInterner::default();
        let kept = interner.intern(&strings(&["keep"]));
        for i in 0..1000 {
            interner.intern(&[format!("f{i}")]);
        }
        assert!(interner.len() <= 130, "{} filters held", interner.len());
        assert!(Arc::ptr_eq(&kept, &interner.intern(&strings(&["keep"]))));
    }

    #[test]
    fn restrict_keeps_only_named_top_level_members() {
        let mut interner = FilterInterner::default();
        let filter = interner.intern(&strings(&["a", "n"]));
        let serde_json::Value::Object(map) = json!({"a": 1, "b": 2, "n": {"x": null}}) else {
            unreachable!()
        };
        assert_eq!(
            serde_json::Value::Object(filter.restrict(&map)),
            json!({"a": 1, "n": {"x": null}})
        );
        let serde_json::Value::Object(other) = json!({"b": 1}) else {
            unreachable!()
        };
        assert!(filter.restrict(&other).is_empty());
        assert!(!filter.touches(&other));
        assert!(filter.touches(&map));
    }
}
