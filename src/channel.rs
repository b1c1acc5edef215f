//! Channel names and subscription patterns, validated once at the edge.
//!
//! A channel name is 1 to 16 dot-separated segments of `A-Z a-z 0-9 _ - :`,
//! at most 128 bytes in all (PROTOCOL.md, "Channels"). A pattern is a name in
//! which a segment may be `*` (exactly one segment) or, as the last segment,
//! `>` (one or more segments), as in NATS subjects.

use std::fmt;
use std::sync::Arc;

/// Most segments a name or pattern may have.
pub const MAX_SEGMENTS: usize = 16;
/// Most bytes a name or pattern may have.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a string is not a valid channel name or pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("channel name has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("channel name has an empty segment")]
    EmptySegment,
    #[error("channel name segments may only hold A-Z a-z 0-9 _ - :")]
    BadCharacter,
    #[error("a pattern (`*` or `>`) is not allowed here")]
    Wildcard,
    #[error("`>` may only be the last segment")]
    TailNotLast,
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')
}

/// Checks the shape shared by names and patterns; `wildcards` allows `*`/`>`.
fn validate(s: &str, wildcards: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    let mut segments = 0;
    let mut saw_tail = false;
    for segment in s.split('.') {
        segments += 1;
        if segments > MAX_SEGMENTS {
            return Err(NameError::TooManySegments);
        }
        if saw_tail {
            return Err(NameError::TailNotLast);
        }
        match segment {
            "" => return Err(NameError::EmptySegment),
            "*" | ">" if !wildcards => return Err(NameError::Wildcard),
            "*" => {}
            ">" => saw_tail = true,
            _ if segment.bytes().all(is_segment_byte) => {}
            _ if segment.bytes().any(|b| b == b'*' || b == b'>') && !wildcards => {
                return Err(NameError::Wildcard)
            }
            _ => return Err(NameError::BadCharacter),
        }
    }
    Ok(())
}

/// A valid channel name (no wildcards). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate(s, false)?;
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment, which selects the per-namespace policy.
    pub fn namespace(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

// Lets maps keyed by name be searched with a plain `&str`; the hash of an
// `Arc<str>` is the hash of its `str`, so this is consistent.
impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A subscription target: an exact name or a `*`/`>` pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    wildcard: bool,
}

impl Pattern {
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate(s, true)?;
        let wildcard = s.split('.').any(|seg| seg == "*" || seg == ">");
        Ok(Self {
            text: Arc::from(s),
            wildcard,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `*`/`>` patterns; false when the pattern is one exact name.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Does this pattern cover `name`?
    pub fn matches(&self, name: &ChannelName) -> bool {
        if !self.wildcard {
            return *self.text == *name.0;
        }
        let mut names = name.as_str().split('.');
        for segment in self.text.split('.') {
            match segment {
                // `>` needs at least one more segment and swallows the rest.
                ">" => return names.next().is_some(),
                "*" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn names_follow_the_protocol_rules() {
        assert!(ChannelName::new("quotes.AAPL").is_ok());
        assert!(ChannelName::new("scores.epl.ARS-CHE").is_ok());
        assert!(ChannelName::new("a:b_c-d").is_ok());
        assert_eq!(ChannelName::new(""), Err(NameError::Empty));
        assert_eq!(ChannelName::new("a..b"), Err(NameError::EmptySegment));
        assert_eq!(ChannelName::new("a."), Err(NameError::EmptySegment));
        assert_eq!(ChannelName::new("quotes.*"), Err(NameError::Wildcard));
        assert_eq!(ChannelName::new("quotes.>"), Err(NameError::Wildcard));
        assert_eq!(ChannelName::new("quo tes"), Err(NameError::BadCharacter));
        assert_eq!(ChannelName::new("é"), Err(NameError::BadCharacter));
        let sixteen = vec!["a"; 16].join(".");
        assert!(ChannelName::new(&sixteen).is_ok());
        let seventeen = vec!["a"; 17].join(".");
        assert_eq!(
            ChannelName::new(&seventeen),
            Err(NameError::TooManySegments)
        );
        assert!(ChannelName::new(&"x".repeat(128)).is_ok());
        assert_eq!(ChannelName::new(&"x".repeat(129)), Err(NameError::TooLong));
    }

    #[test]
    fn patterns_match_like_nats_subjects() {
        let star = Pattern::new("quotes.*").unwrap();
        assert!(star.matches(&name("quotes.AAPL")));
        assert!(!star.matches(&name("quotes")));
        assert!(!star.matches(&name("quotes.AAPL.x")));
        assert!(!star.matches(&name("trades.AAPL")));

        let tail = Pattern::new("scores.>").unwrap();
        assert!(tail.matches(&name("scores.epl.ARS-CHE")));
        assert!(tail.matches(&name("scores.x")));
        assert!(!tail.matches(&name("scores")));

        let mid = Pattern::new("scores.*.ARS-CHE").unwrap();
        assert!(mid.matches(&name("scores.epl.ARS-CHE")));
        assert!(!mid.matches(&name("scores.epl.LIV-MCI")));

        assert!(Pattern::new(">").unwrap().matches(&name("anything.at.all")));
        let exact = Pattern::new("quotes.AAPL").unwrap();
        assert!(!exact.is_wildcard());
        assert!(exact.matches(&name("quotes.AAPL")));
        assert!(!exact.matches(&name("quotes.AAP")));
        assert_eq!(Pattern::new("a.>.b"), Err(NameError::TailNotLast));
        assert_eq!(Pattern::new("a.b*"), Err(NameError::BadCharacter));
    }
}
