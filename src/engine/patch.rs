//! JSON Merge Patch (RFC 7396) and the composition of two patches into one.
//!
//! The state stage merges every record into its channel's state with
//! [`merge_patch`]; fanout shards fold held updates into one diff with
//! [`compose`]. Both live here so that neither side depends on the other.

use serde_json::Value;

use crate::record::JsonMap;

/// Applies `patch` to `target` as RFC 7396 section 2 describes: `null`
/// removes a member, an object merges recursively, anything else replaces.
///
/// Written here rather than taken from a crate because the state is a map,
/// not a `Value`, and the function is ten lines.
///
/// Recurses once per level of `patch`, so callers must bound its depth:
/// every patch from input has passed `json_depth::check` (limit at most
/// `json_depth::HIGHEST_LIMIT`). The result is never deeper than the deeper
/// of `target` and `patch`, so a state built from such patches stays within
/// the limit too, and so do the walks that encode or drop it.
pub fn merge_patch(target: &mut JsonMap, patch: &JsonMap) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                // Look the key up before cloning it: most patches change
                // members that exist, and a key clone is an allocation.
                if !matches!(target.get(key), Some(Value::Object(_))) {
                    target.insert(key.clone(), Value::Object(JsonMap::new()));
                }
                if let Some(Value::Object(inner)) = target.get_mut(key) {
                    merge_patch(inner, inner_patch);
                }
            }
            other => match target.get_mut(key) {
                Some(slot) => *slot = other.clone(),
                None => {
                    target.insert(key.clone(), other.clone());
                }
            },
        }
    }
}

/// Two patches that no single merge patch can express in sequence: the
/// first replaced a member with a non-object (or deleted it) and the second
/// writes an object there. Applied in order they *replace* whatever the
/// client had at that member; one patch could only merge into it, and it
/// cannot delete keys it does not know. The caller sends a snapshot instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsSnapshot;

/// Folds `next` into `pending` so that applying the result to any state
/// gives what applying `pending` and then `next` gives.
///
/// On `Err`, `pending` is left partly merged and must be discarded.
///
/// Like [`merge_patch`], recurses once per level and needs depth-bounded
/// patches; the result is no deeper than the deeper of its two inputs.
pub fn compose(pending: &mut JsonMap, next: &JsonMap) -> Result<(), NeedsSnapshot> {
    for (key, value) in next {
        match value {
            Value::Object(inner_next) => match pending.get_mut(key) {
                // Untouched so far: the object merges into the client's value
                // exactly as it would have on its own.
                None => {
                    pending.insert(key.clone(), value.clone());
                }
                Some(Value::Object(inner_pending)) => compose(inner_pending, inner_next)?,
                Some(_) => return Err(NeedsSnapshot),
            },
            // `null` deletes and scalars or arrays replace, whatever came before.
            other => {
                pending.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

/// Bytes `map` takes as JSON, without keeping them.
pub fn serialized_len(map: &JsonMap) -> usize {
    super::size::counted_len(map)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire;
    use serde_json::json;

    /// A JSON object literal as a map (tests of the engine's modules).
    pub(crate) fn map(v: Value) -> JsonMap {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// The examples of RFC 7396 Appendix A whose target and patch are objects.
    #[test]
    fn rfc7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
            (json!({"a":"x"}), json!({"a":{"b":1}}), json!({"a":{"b":1}})),
        ];
        for (target, patch, want) in cases {
            let mut state = map(target.clone());
            merge_patch(&mut state, &map(patch.clone()));
            assert_eq!(Value::Object(state), want, "{target} + {patch}");
        }
    }

    /// `compose(a, b)` applied once equals `a` then `b` applied in turn, on
    /// targets that hold objects, scalars or nothing at the touched keys.
    #[test]
    fn compose_equals_sequential_application() {
        let targets = [
            json!({}),
            json!({"a": 1, "b": {"x": 1, "y": 2}}),
            json!({"a": {"p": 1}, "b": 5, "c": [1]}),
        ];
        let pairs = [
            (json!({"a": 2}), json!({"b": 3})),
            (json!({"a": 2}), json!({"a": null})),
            (json!({"a": null}), json!({"a": 7})),
            (json!({"b": {"x": null}}), json!({"b": {"z": 3}})),
            (json!({"b": {"x": 9}}), json!({"b": {"y": {"deep": 1}}})),
            (json!({"c": [2]}), json!({"c": [3], "d": {"e": null}})),
            (
                json!({"a": {"q": {"r": 1}}}),
                json!({"a": {"q": {"s": null}}}),
            ),
        ];
        for (first, second) in pairs {
            let mut composed = map(first.clone());
            compose(&mut composed, &map(second.clone())).expect("composable");
            for target in &targets {
                let mut sequential = map(target.clone());
                merge_patch(&mut sequential, &map(first.clone()));
                merge_patch(&mut sequential, &map(second.clone()));
                let mut once = map(target.clone());
                merge_patch(&mut once, &composed);
                assert_eq!(once, sequential, "{target} + {first} + {second}");
            }
        }
    }

    /// Data as deep as the highest depth limit admits is merged, composed,
    /// encoded, re-read for resume and dropped on a stack no bigger than a
    /// tokio worker's (2 MiB), and comes out no deeper than it went in.
    #[test]
    fn the_deepest_admitted_data_is_handled_on_a_worker_sized_stack() {
        use crate::json_depth::{self, HIGHEST_LIMIT};
        let run = || {
            let inner = HIGHEST_LIMIT - 3;
            let line = |leaf: &str| {
                format!(
                    r#"{{"channel":"a","data":{{"x":{{"y":{}{leaf}{}}}}}}}"#,
                    "[".repeat(inner - 1),
                    "]".repeat(inner - 1)
                )
            };
            let parse = |text: String| {
                crate::record::parse_record(&mut text.into_bytes(), HIGHEST_LIMIT)
                    .expect("at the highest limit")
                    .data
            };
            let (first, second) = (parse(line("[1]")), parse(line("[2]")));
            let mut state = JsonMap::new();
            merge_patch(&mut state, &first);
            merge_patch(&mut state, &second);
            let mut pending = first.clone();
            compose(&mut pending, &second).expect("objects compose");
            assert_eq!(pending, state);
            let encoded = serde_json::to_vec(&state).unwrap();
            assert_eq!(encoded.len(), serialized_len(&state));
            assert_eq!(
                json_depth::check(&encoded, usize::MAX),
                Ok(HIGHEST_LIMIT - 1),
                "a patch is one level shallower than its line"
            );
            let frame = wire::snapshot("a", 2, "e", &state, false);
            assert!(json_depth::check(&frame[4..], usize::MAX).is_ok());
            let reread: JsonMap = serde_json::from_slice(&encoded).expect("resume re-reads it");
            assert_eq!(reread, state);
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .expect("no stack overflow");
    }

    /// The trap: a scalar (or a delete) followed by an object replaces the
    /// client's value, which one merge patch cannot say.
    #[test]
    fn an_object_after_a_non_object_needs_a_snapshot() {
        for first in [json!({"a": 1}), json!({"a": null}), json!({"a": [1]})] {
            let mut pending = map(first.clone());
            assert_eq!(
                compose(&mut pending, &map(json!({"a": {"b": 1}}))),
                Err(NeedsSnapshot),
                "{first}"
            );
        }
        let mut nested = map(json!({"o": {"k": "v"}}));
        assert_eq!(
            compose(&mut nested, &map(json!({"o": {"k": {"deeper": true}}}))),
            Err(NeedsSnapshot)
        );
    }
}
