//! How deep JSON may nest, checked before any parser sees the bytes.
//!
//! Everything that reads or writes a JSON value here recurses once per
//! level: simd-json's serde bridge building a `serde_json::Value`, dropping
//! that value, [`merge_patch`](crate::engine::patch::merge_patch),
//! [`compose`](crate::engine::patch::compose), and serde_json encoding the
//! state and patches into frames. A message or feed line of a few KB nested
//! a few thousand levels deep would overflow a tokio worker's stack in any
//! of them, so [`check`] counts the nesting first, in one pass with no
//! recursion and no allocation, and input deeper than the limit never
//! reaches a parser.
//!
//! Why one count at the door bounds every walk later:
//!
//! - A parsed value is exactly as deep as its text, so parsing it and
//!   dropping it recurse at most `limit` times.
//! - A record's `data` sits one level inside the record, so every patch is
//!   shallower than the limit. Merging patch `p` into state `s` gives a state
//!   no deeper than the deeper of `s` and `p` (each member is either kept
//!   from `s`, copied from `p`, or merged from one of each); a channel's
//!   state starts empty, so by induction it is never deeper than the deepest
//!   patch ever accepted. `compose` keeps, copies or merges members the same
//!   way, so a held diff is bounded likewise.
//! - Encoding walks those same states and patches, plus a constant envelope
//!   (`{"type":"update",...,"data":...}`), and resume re-reads a stored
//!   patch with serde_json, whose own recursion limit (127 levels) is why
//!   [`HIGHEST_LIMIT`] is 128.

/// Default for `limits.max_json_depth`: far deeper than any real quote or
/// scoreboard, far shallower than what hurts.
pub const DEFAULT_LIMIT: usize = 64;

/// Highest value `limits.max_json_depth` may take. A record's `data` is one
/// level shallower than its line, and resume re-reads stored patches with
/// serde_json, which refuses a 128th level; a higher limit would let in
/// patches that resume then cannot read. [`check`] never uses more.
pub const HIGHEST_LIMIT: usize = 128;

/// JSON text nested deeper than the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// The limit that was exceeded.
    pub limit: usize,
    /// Byte offset of the `[` or `{` that went one level past it.
    pub offset: usize,
}

impl std::fmt::Display for TooDeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nested deeper than limits.max_json_depth ({}) at byte {}",
            self.limit, self.offset
        )
    }
}

/// The deepest nesting of `[` and `{` in `json` (0 for a bare scalar), or
/// [`TooDeep`] as soon as it passes `limit` (capped at [`HIGHEST_LIMIT`]).
///
/// Brackets inside strings do not count; a `\` in a string skips the byte
/// after it, so `"\""` does not end the string. The text need not be valid
/// JSON: on any prefix a parser accepts, the count here equals the parser's
/// own depth, and where the text is invalid the parser stops anyway.
pub fn check(json: &[u8], limit: usize) -> Result<usize, TooDeep> {
    let limit = limit.min(HIGHEST_LIMIT);
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit, offset: i });
                }
                deepest = deepest.max(depth);
            }
            // Unbalanced closers make the text invalid; the parser says so.
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn counts_arrays_and_objects() {
        assert_eq!(check(b"1", 4), Ok(0));
        assert_eq!(check(b"", 4), Ok(0));
        assert_eq!(check(b"{}", 4), Ok(1));
        assert_eq!(check(br#"{"a":[1,{"b":[]}],"c":{}}"#, 4), Ok(4));
        assert_eq!(check(br#"[[1],[2],[3]]"#, 4), Ok(2), "siblings do not add");
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert_eq!(check(br#"{"[[[[":"{{{{"}"#, 1), Ok(1));
        // An escaped quote does not end the string; an escaped backslash
        // before a quote does.
        assert_eq!(check(br#"["\"[[[["]"#, 1), Ok(1));
        assert_eq!(check(br#"["\\",[[]]]"#, 3), Ok(3));
        assert_eq!(
            check(br#"["\\",[[]]]"#, 2),
            Err(TooDeep {
                limit: 2,
                offset: 7
            })
        );
        assert_eq!(check(br#"["\u005b[",1]"#, 1), Ok(1));
        // An unterminated string hides whatever follows it.
        assert_eq!(check(br#"["[[[[[[[["#, 1), Ok(1));
        assert_eq!(check(br#"["\"#, 1), Ok(1));
    }

    #[test]
    fn exactly_at_the_limit_passes_and_one_more_fails_early() {
        assert_eq!(check(nested(64).as_bytes(), 64), Ok(64));
        assert_eq!(
            check(nested(65).as_bytes(), 64),
            Err(TooDeep {
                limit: 64,
                offset: 64
            })
        );
        // Stops at the first bracket past the limit, whatever follows.
        let mut deep = "{\"x\":".to_owned() + &"[".repeat(1_000_000);
        deep.push_str("garbage");
        assert_eq!(
            check(deep.as_bytes(), 8),
            Err(TooDeep {
                limit: 8,
                offset: 12
            })
        );
    }

    #[test]
    fn closers_end_levels_and_stray_ones_do_not_go_negative() {
        assert_eq!(check(b"[][][][]", 1), Ok(1));
        assert_eq!(check(b"]]]][[", 2), Ok(2));
        assert!(check(b"]]]][[[", 2).is_err());
    }

    #[test]
    fn the_limit_is_capped() {
        assert_eq!(check(nested(HIGHEST_LIMIT).as_bytes(), usize::MAX), Ok(128));
        assert_eq!(
            check(nested(HIGHEST_LIMIT + 1).as_bytes(), usize::MAX),
            Err(TooDeep {
                limit: HIGHEST_LIMIT,
                offset: HIGHEST_LIMIT
            })
        );
    }

    /// Resume re-reads stored patches with serde_json; the deepest `data`
    /// the highest limit lets in must still be readable by it.
    #[test]
    fn serde_json_reads_the_deepest_patch_the_highest_limit_admits() {
        let line = format!(
            r#"{{"channel":"a","data":{{"x":{}}}}}"#,
            nested(HIGHEST_LIMIT - 2)
        );
        assert_eq!(check(line.as_bytes(), HIGHEST_LIMIT), Ok(HIGHEST_LIMIT));
        let data = format!(r#"{{"x":{}}}"#, nested(HIGHEST_LIMIT - 2));
        let value: Result<serde_json::Value, _> = serde_json::from_str(&data);
        assert!(value.is_ok(), "{value:?}");
        let one_more = format!(r#"{{"x":{}}}"#, nested(HIGHEST_LIMIT - 1));
        assert!(serde_json::from_str::<serde_json::Value>(&one_more).is_err());
    }
}
