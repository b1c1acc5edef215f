//! Channel state: one JSON object per channel, changed only by JSON Merge
//! Patch (RFC 7396), with a seq that grows by one per applied update.

use serde_json::Value;

use crate::record::JsonMap;

/// Applies `patch` to `target` as RFC 7396 section 2 describes: `null`
/// removes a member, an object merges recursively, anything else replaces.
///
/// Written here rather than taken from a crate because the state is a map,
/// not a `Value`, and the function is ten lines.
pub fn merge_patch(target: &mut JsonMap, patch: &JsonMap) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner_patch) => {
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(JsonMap::new()));
                if !slot.is_object() {
                    *slot = Value::Object(JsonMap::new());
                }
                if let Value::Object(inner) = slot {
                    merge_patch(inner, inner_patch);
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> JsonMap {
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
}
