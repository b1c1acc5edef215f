//! JSON Merge Patch and patch composition (`tickcast::engine::patch`).
//!
//! Input: either JSON text `[target, first, second]` (three objects; the
//! readable seeds) or any other bytes, read as a recipe for three small
//! objects over a few shared keys (so patches collide often). Checked:
//! - `merge_patch` never panics, and applying a patch twice is applying it
//!   once (RFC 7396 patches are idempotent);
//! - where `compose(first, second)` succeeds, applying the composed patch
//!   once equals applying `first` then `second`, on the target;
//! - `compose` refuses exactly when `second` writes an object under a key
//!   that `first` replaced with a non-object or deleted (the case one patch
//!   cannot express).

use serde_json::{Map, Value};
use tickcast::engine::patch;

type JsonMap = Map<String, Value>;

pub fn check(data: &[u8]) {
    let Some([target, first, second]) = objects(data) else {
        return;
    };

    let mut sequential = target.clone();
    merge(&mut sequential, &first);
    let mut twice = sequential.clone();
    merge(&mut twice, &first);
    assert_eq!(twice, sequential, "a patch applied twice differs from once");
    merge(&mut sequential, &second);

    let mut composed = first.clone();
    match compose(&mut composed, &second) {
        Ok(()) => {
            assert!(
                !needs_snapshot(&first, &second),
                "composed patches that one patch cannot express"
            );
            let mut once = target.clone();
            merge(&mut once, &composed);
            assert_eq!(
                once, sequential,
                "composed patch differs from the two applied in turn"
            );
        }
        Err(patch::NeedsSnapshot) => assert!(
            needs_snapshot(&first, &second),
            "compose refused patches it could have composed"
        ),
    }
}

/// The one place the target calls `merge_patch`.
fn merge(target: &mut JsonMap, patch: &JsonMap) {
    patch::merge_patch(target, patch);
}

/// The one place the target calls `compose`.
fn compose(pending: &mut JsonMap, next: &JsonMap) -> Result<(), patch::NeedsSnapshot> {
    patch::compose(pending, next)
}

/// True if `second` puts an object where `first` left a non-object (or a
/// deletion): applied in turn that object *replaces* the client's value,
/// which a single merge patch cannot say.
fn needs_snapshot(first: &JsonMap, second: &JsonMap) -> bool {
    second
        .iter()
        .any(|(key, value)| match (first.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => needs_snapshot(before, after),
            (Some(_), Value::Object(_)) => true,
            _ => false,
        })
}

/// Target, first and second patch from the input.
fn objects(data: &[u8]) -> Option<[JsonMap; 3]> {
    if data.first() == Some(&b'[') {
        let values: Vec<Value> = serde_json::from_slice(data).ok()?;
        let [Value::Object(a), Value::Object(b), Value::Object(c)] =
            <[Value; 3]>::try_from(values).ok()?
        else {
            return None;
        };
        return Some([a, b, c]);
    }
    let mut recipe = Recipe { data, pos: 0 };
    Some([recipe.object(0), recipe.object(0), recipe.object(0)])
}

/// Builds JSON from bytes: each byte picks the next shape or value; running
/// out of bytes ends every object, so any input makes three objects.
struct Recipe<'a> {
    data: &'a [u8],
    pos: usize,
}

/// Few keys, so the three objects touch the same members.
const KEYS: [&str; 4] = ["a", "b", "c", "d"];
/// Deep enough for nested conflicts, far from any recursion limit.
const MAX_DEPTH: usize = 6;

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn object(&mut self, depth: usize) -> JsonMap {
        let members = self.byte() % 4;
        let mut map = JsonMap::new();
        for _ in 0..members {
            let key = KEYS[usize::from(self.byte()) % KEYS.len()];
            let value = self.value(depth + 1);
            map.insert(key.to_owned(), value);
        }
        map
    }

    fn value(&mut self, depth: usize) -> Value {
        let pick = self.byte();
        let shapes = if depth >= MAX_DEPTH { 4 } else { 7 };
        match pick % shapes {
            0 => Value::Null,
            1 => Value::Bool(pick & 0x80 != 0),
            2 => Value::from(pick >> 3),
            3 => Value::from(KEYS[usize::from(pick >> 3) % KEYS.len()]),
            4 => Value::Array(vec![self.value(depth + 1)]),
            _ => Value::Object(self.object(depth)),
        }
    }
}
