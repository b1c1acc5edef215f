//! What a verified token allows: the channel patterns of its `channels`
//! claim, until its `exp`.

use crate::channel::Pattern;

/// The rights one verified token gives a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The `channels` claim: names and patterns the holder may subscribe to.
    patterns: Box<[Pattern]>,
    /// The `exp` claim, Unix seconds.
    expires_at: u64,
}

impl Grant {
    pub fn new(patterns: Vec<Pattern>, expires_at: u64) -> Self {
        Self {
            patterns: patterns.into_boxed_slice(),
            expires_at,
        }
    }

    /// The `exp` claim, in Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Does the claim cover every channel `target` can match? A target must
    /// fall within one pattern of the claim (`quotes.*` covers `quotes.AAPL`
    /// and `quotes.*`, not `quotes.>` nor `>`); targets that only a union
    /// of several claim patterns would cover are refused, which errs on the
    /// safe side and keeps the check a simple walk.
    pub fn covers(&self, target: &Pattern) -> bool {
        self.patterns
            .iter()
            .any(|allowed| pattern_covers(allowed.as_str(), target.as_str()))
    }
}

/// True when every channel name `inner` matches is also matched by
/// `outer` (both valid patterns; NATS rules: `*` one segment, `>` as the
/// last segment one or more).
pub fn pattern_covers(outer: &str, inner: &str) -> bool {
    let mut inner_segments = inner.split('.');
    for segment in outer.split('.') {
        match segment {
            // One or more segments, whatever they are (`*` and `>` included:
            // each stands for at least one segment).
            ">" => return inner_segments.next().is_some(),
            // Exactly one segment: a literal or `*`, not `>` (which may be
            // several).
            "*" => match inner_segments.next() {
                None | Some(">") => return false,
                Some(_) => {}
            },
            literal => {
                if inner_segments.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    inner_segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;

    #[test]
    fn containment_follows_the_matching_rules() {
        let yes = [
            ("quotes.AAPL", "quotes.AAPL"),
            ("quotes.*", "quotes.AAPL"),
            ("quotes.*", "quotes.*"),
            ("quotes.>", "quotes.AAPL"),
            ("quotes.>", "quotes.*"),
            ("quotes.>", "quotes.>"),
            ("quotes.>", "quotes.a.b.c"),
            ("quotes.>", "quotes.*.>"),
            (">", ">"),
            (">", "anything.at.all"),
            ("*.AAPL", "quotes.AAPL"),
            ("scores.*.ARS-CHE", "scores.epl.ARS-CHE"),
        ];
        for (outer, inner) in yes {
            assert!(pattern_covers(outer, inner), "{outer} covers {inner}");
        }
        let no = [
            ("quotes.AAPL", "quotes.MSFT"),
            ("quotes.AAPL", "quotes.*"),
            ("quotes.*", "quotes.>"),
            ("quotes.*", "quotes.a.b"),
            ("quotes.*", "quotes"),
            ("quotes.>", "quotes"),
            ("quotes.>", ">"),
            ("quotes.>", "*.AAPL"),
            ("*", ">"),
            ("*.AAPL", "*.MSFT"),
            ("secret.>", "secrets.x"),
            ("quotes", "quotes.AAPL"),
        ];
        for (outer, inner) in no {
            assert!(
                !pattern_covers(outer, inner),
                "{outer} must not cover {inner}"
            );
        }
    }

    /// Whatever `pattern_covers` says yes to, the matcher agrees on every
    /// name drawn from a small alphabet of segments.
    #[test]
    fn containment_agrees_with_matching() {
        let segments = ["a", "b", "*", ">"];
        let mut patterns = Vec::new();
        for len in 1..=3 {
            let mut stack = vec![String::new()];
            for depth in 0..len {
                stack = stack
                    .iter()
                    .flat_map(|p| {
                        segments.iter().filter_map(move |s| {
                            if *s == ">" && depth + 1 != len {
                                return None;
                            }
                            Some(if p.is_empty() {
                                (*s).to_owned()
                            } else {
                                format!("{p}.{s}")
                            })
                        })
                    })
                    .collect();
            }
            patterns.extend(stack);
        }
        let mut names: Vec<ChannelName> = patterns
            .iter()
            .filter_map(|p| ChannelName::new(p).ok())
            .collect();
        names.extend(["a.a.a.a", "b.a.b.a"].map(|n| ChannelName::new(n).unwrap()));
        for outer in &patterns {
            let outer_p = Pattern::new(outer).unwrap();
            for inner in &patterns {
                if !pattern_covers(outer, inner) {
                    continue;
                }
                let inner_p = Pattern::new(inner).unwrap();
                for name in &names {
                    if inner_p.matches(name) {
                        assert!(
                            outer_p.matches(name),
                            "{outer} said to cover {inner}, but misses {name}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_grant_covers_what_one_of_its_patterns_covers() {
        let grant = Grant::new(
            vec![
                Pattern::new("quotes.*").unwrap(),
                Pattern::new("scores.epl.>").unwrap(),
            ],
            1,
        );
        assert!(grant.covers(&Pattern::new("quotes.AAPL").unwrap()));
        assert!(grant.covers(&Pattern::new("scores.epl.*").unwrap()));
        assert!(!grant.covers(&Pattern::new("scores.>").unwrap()));
        assert!(!grant.covers(&Pattern::new(">").unwrap()));
        assert_eq!(grant.expires_at(), 1);
    }
}
