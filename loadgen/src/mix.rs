//! Subscription mixes: which channels client i asks for, which channels the publisher feeds, and
//! the NATS-style pattern match that connects the two when counting expected deliveries.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{Mix, Pick};

/// Whether `pattern` (`*` = one segment, trailing `>` = one or more) matches channel `name`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut names = name.split('.');
    let mut pats = pattern.split('.').peekable();
    while let Some(p) = pats.next() {
        if p == ">" && pats.peek().is_none() {
            return names.next().is_some();
        }
        match names.next() {
            Some(n) if p == "*" || p == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

fn is_pattern(s: &str) -> bool {
    s.split('.').any(|seg| seg == "*" || seg == ">")
}

/// The channels publisher mode feeds, in round-robin order: the numbered channels, then the
/// exact names among `--subscribe` (patterns are skipped; nothing can be published to them).
pub fn published_channels(mix: &Mix) -> Vec<String> {
    let mut out: Vec<String> = (0..mix.channels)
        .map(|i| format!("{}{i}", mix.prefix))
        .collect();
    for name in &mix.subscribe {
        if !is_pattern(name) && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// Picks K distinct ranks among N, by the mix's distribution. Built once, shared by all clients.
#[derive(Debug)]
pub struct Picker {
    pick: Pick,
    /// Cumulative zipf weights, normalised to end at 1.0 (empty for uniform).
    cdf: Vec<f64>,
    n: usize,
    k: usize,
    seed: u64,
}

impl Picker {
    pub fn new(mix: &Mix) -> Picker {
        let mut cdf = Vec::new();
        if let Pick::Zipf { s } = mix.pick {
            let mut sum = 0.0;
            for r in 1..=mix.channels {
                sum += 1.0 / (r as f64).powf(s);
                cdf.push(sum);
            }
            cdf.iter_mut().for_each(|c| *c /= sum);
        }
        Picker {
            pick: mix.pick,
            cdf,
            n: mix.channels,
            k: mix.per_client,
            seed: mix.seed,
        }
    }

    /// Client i's ranks (0-based), distinct, reproducible from the seed.
    pub fn ranks(&self, client: usize) -> Vec<usize> {
        if self.n == 0 {
            return Vec::new();
        }
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        match self.pick {
            Pick::Uniform => rand::seq::index::sample(&mut rng, self.n, self.k).into_vec(),
            Pick::Zipf { .. } => {
                let mut chosen = vec![false; self.n];
                let mut out = Vec::with_capacity(self.k);
                // Weighted draws without replacement; when K is close to N the draws keep
                // hitting taken ranks, so after a bounded number of tries the rest is filled
                // with the most likely ranks not yet taken.
                let mut tries = 0;
                while out.len() < self.k && tries < 32 * self.k {
                    tries += 1;
                    let u: f64 = rng.gen();
                    let r = self.cdf.partition_point(|&c| c < u).min(self.n - 1);
                    if !chosen[r] {
                        chosen[r] = true;
                        out.push(r);
                    }
                }
                let mut r = 0;
                while out.len() < self.k {
                    if !chosen[r] {
                        chosen[r] = true;
                        out.push(r);
                    }
                    r += 1;
                }
                out
            }
        }
    }
}

/// Everything client i subscribes to: the shared `--subscribe` list plus its K picks.
pub fn client_channels(mix: &Mix, picker: &Picker, client: usize) -> Vec<String> {
    let mut out = mix.subscribe.clone();
    for r in picker.ranks(client) {
        let name = format!("{}{r}", mix.prefix);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Indexes (into `published`) of the published channels that `subs` covers.
pub fn covered(subs: &[String], published: &[String]) -> Vec<usize> {
    (0..published.len())
        .filter(|&i| subs.iter().any(|s| pattern_matches(s, &published[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn patterns_follow_nats_rules() {
        assert!(pattern_matches("quotes.*", "quotes.AAPL"));
        assert!(!pattern_matches("quotes.*", "quotes.AAPL.x"));
        assert!(!pattern_matches("quotes.*", "quotes"));
        assert!(pattern_matches("scores.>", "scores.epl.ARS-CHE"));
        assert!(!pattern_matches("scores.>", "scores"));
        assert!(pattern_matches("quotes.AAPL", "quotes.AAPL"));
        assert!(!pattern_matches("quotes.AAPL", "quotes.AAP"));
        assert!(pattern_matches("*.x.>", "a.x.b.c"));
    }

    fn mix(pick: Pick, n: usize, k: usize) -> Mix {
        let mut m = Config::new("ws://x").mix;
        m.pick = pick;
        m.channels = n;
        m.per_client = k;
        m
    }

    #[test]
    fn picks_are_distinct_reproducible_and_in_range() {
        for pick in [Pick::Uniform, Pick::Zipf { s: 1.0 }, Pick::Zipf { s: 3.0 }] {
            for (n, k) in [(10, 3), (10, 10), (1000, 50), (1, 1)] {
                let p = Picker::new(&mix(pick, n, k));
                for c in 0..20 {
                    let mut r = p.ranks(c);
                    assert_eq!(r, p.ranks(c), "same seed, same picks");
                    r.sort_unstable();
                    r.dedup();
                    assert_eq!(r.len(), k);
                    assert!(r.iter().all(|&x| x < n));
                }
            }
        }
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let p = Picker::new(&mix(Pick::Zipf { s: 1.0 }, 100, 1));
        let hits0 = (0..2000).filter(|&c| p.ranks(c) == [0]).count();
        let hits99 = (0..2000).filter(|&c| p.ranks(c) == [99]).count();
        // Expected shares: 1/H(100) ~ 19% for rank 0, ~0.2% for rank 99.
        assert!(hits0 > 250 && hits99 < 40, "rank0 {hits0}, rank99 {hits99}");
    }

    #[test]
    fn published_and_covered_channels() {
        let mut m = mix(Pick::Uniform, 3, 1);
        m.prefix = "q.".into();
        m.subscribe = vec!["q.*".into(), "t.X".into(), "t.>".into()];
        let published = published_channels(&m);
        assert_eq!(published, ["q.0", "q.1", "q.2", "t.X"]);
        assert_eq!(covered(&["q.1".into()], &published), [1]);
        assert_eq!(covered(&["q.*".into()], &published), [0, 1, 2]);
        assert_eq!(covered(&["t.>".into(), "q.2".into()], &published), [2, 3]);
        let picker = Picker::new(&m);
        let subs = client_channels(&m, &picker, 0);
        assert_eq!(subs.len(), 4);
    }
}
