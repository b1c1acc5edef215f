//! The size of a channel's state as JSON, kept up to date per update
//! without serializing the state: `limits.max_state_bytes` is checked
//! before a patch is merged, so a record that is too big leaves the state
//! (and seq) untouched.
//!
//! The size is that of `serde_json`'s compact encoding: an object is `{}`
//! around its members joined by `,`, a member is `"key":value`. A patch's
//! effect on it is worked out from the patch and the members it touches:
//! the cost is that of the patch plus the encoding of values it removes or
//! replaces (each removed value was paid for once, when it was added).
//! Walking nested objects follows the patch's own nesting, exactly as
//! `patch::merge_patch` does, so it goes no deeper than the merge itself.

use serde_json::Value;

use crate::record::JsonMap;

/// Bytes of an empty object, `{}`.
pub const EMPTY_OBJECT: usize = 2;

/// The size of `state` (whose size is `state_len`) once `patch` is merged
/// into it (RFC 7396), without merging.
pub fn merged_len(state: &JsonMap, state_len: usize, patch: &JsonMap) -> usize {
    let grown = state_len as i128 + object_delta(Some(state), patch);
    usize::try_from(grown.max(0)).unwrap_or(usize::MAX)
}

/// Bytes of `value` in compact JSON.
pub fn encoded_len(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::String(s) => string_len(s),
        other => counted_len(other),
    }
}

/// Bytes of `s` as a JSON string: quotes, and serde_json's escapes (`\"`,
/// `\\`, the short forms of five controls, `\u00XX` for the other controls).
pub fn string_len(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    s.len() + escapes + 2
}

/// Change in size of an object (`target`, or an empty one for `None`) when
/// `patch` is merged into it.
fn object_delta(target: Option<&JsonMap>, patch: &JsonMap) -> i128 {
    let before = target.map_or(0, JsonMap::len);
    let mut after = before as i128;
    let mut delta: i128 = 0;
    for (key, value) in patch {
        let old = target.and_then(|t| t.get(key));
        let member = |value_len: i128| string_len(key) as i128 + 1 + value_len;
        match (value, old) {
            (Value::Null, None) => {}
            (Value::Null, Some(old)) => {
                delta -= member(encoded_len(old) as i128);
                after -= 1;
            }
            (Value::Object(inner), Some(Value::Object(old_inner))) => {
                delta += object_delta(Some(old_inner), inner);
            }
            (new, old) => {
                let new_len = match new {
                    // Merged into nothing: the patch without its nulls.
                    Value::Object(inner) => EMPTY_OBJECT as i128 + object_delta(None, inner),
                    other => encoded_len(other) as i128,
                };
                match old {
                    Some(old) => delta += new_len - encoded_len(old) as i128,
                    None => {
                        delta += member(new_len);
                        after += 1;
                    }
                }
            }
        }
    }
    let commas = |members: i128| (members - 1).max(0);
    delta + commas(after) - commas(before as i128)
}

/// Bytes of `value` serialized as compact JSON, counted without keeping
/// them.
pub fn counted_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("serializing JSON");
    count.0
}

/// Counts bytes written, keeping none.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::patch::merge_patch;
    use crate::engine::patch::tests::map;
    use serde_json::json;

    fn len(m: &JsonMap) -> usize {
        serde_json::to_vec(m).unwrap().len()
    }

    /// The predicted size equals the size of the merged state, over a
    /// sequence of patches that add, replace, delete and nest.
    #[test]
    fn predicted_size_matches_the_merged_state() {
        let patches = [
            json!({}),
            json!({"a": 1}),
            json!({"a": null, "b": "x\"y\n\u{1}\u{e9}"}),
            json!({"o": {"p": {"q": [1, 2.5, null]}, "r": null}}),
            json!({"o": {"p": {"q": null, "s": true}}, "b": null}),
            json!({"o": 7}),
            json!({"o": {"back": {"x": null, "y": {}}}}),
            json!({"n": null, "o": null}),
            json!({"k1": 1, "k2": 2, "k3": {"a": 1e300}}),
            json!({"k2": null, "k3": {"a": null}}),
        ];
        let mut state = JsonMap::new();
        let mut state_len = EMPTY_OBJECT;
        for patch in patches {
            let patch = map(patch);
            let predicted = merged_len(&state, state_len, &patch);
            merge_patch(&mut state, &patch);
            assert_eq!(predicted, len(&state), "after {patch:?}: {state:?}");
            state_len = predicted;
        }
    }

    #[test]
    fn string_lengths_follow_serde_json_escapes() {
        for s in [
            "",
            "plain",
            "q\"b\\",
            "\u{0}\u{1f}\t\u{7f}",
            "caf\u{e9} \u{1F600}",
        ] {
            assert_eq!(
                string_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    /// The recordings in feeds/ (order books, match events), record by
    /// record: the tracked size of every channel equals its JSON at the end.
    #[test]
    fn tracked_sizes_match_the_recorded_feeds() {
        for file in [
            "coinbase-advanced-trade_2026-08-09_BTC-USD-ETH-USD.ndjson",
            "statsbomb_euro2020_TUR-ITA_2021-06-11.ndjson",
        ] {
            let path = format!("{}/feeds/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("recording");
            let mut channels: std::collections::HashMap<String, (JsonMap, usize)> =
                Default::default();
            for line in text.lines() {
                let mut bytes = line.as_bytes().to_vec();
                let record =
                    crate::record::parse_record(&mut bytes, crate::json_depth::DEFAULT_LIMIT)
                        .expect("a clean recording");
                let (state, state_len) = channels
                    .entry(record.channel.to_string())
                    .or_insert_with(|| (JsonMap::new(), EMPTY_OBJECT));
                *state_len = merged_len(state, *state_len, &record.data);
                merge_patch(state, &record.data);
            }
            for (name, (state, state_len)) in &channels {
                assert_eq!(*state_len, len(state), "{file}: {name}");
            }
        }
    }
}
