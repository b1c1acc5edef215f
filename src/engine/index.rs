//! Who is subscribed to what: each session's targets (names and patterns),
//! and the reverse index used when a channel first appears.
//!
//! Delivery lists are kept per channel on each shard (`Shard::deliveries`)
//! so an update walks exactly its own subscribers; this index is consulted
//! only on subscribe, unsubscribe and channel creation.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use super::filter::FieldFilter;
use crate::channel::{ChannelName, Pattern};
use crate::outbox::Outbox;

pub type SessionId = u64;
pub type ChannelId = usize;

/// Hashes ids the server hands out, which no client can pick to collide,
/// so without per-map random keys: a set of them is 16 bytes smaller, and
/// every session entry holds one (docs/benchmarks.md, memory).
pub type IdHasher = BuildHasherDefault<DefaultHasher>;

/// What one subscribe asked for, shared by every target it named.
#[derive(Debug)]
pub struct DeliveryOptions {
    pub filter: Option<Arc<FieldFilter>>,
    pub max_hz: Option<f64>,
    /// Order of subscribes within the engine: when several targets cover a
    /// channel that appears later, the latest subscribe's options win.
    pub generation: u64,
}

/// A name or pattern a session subscribed to, with the options it came with.
pub struct Target {
    pub pattern: Pattern,
    pub options: Arc<DeliveryOptions>,
}

/// One connected session as the engine sees it.
pub struct SessionEntry {
    pub outbox: Arc<Outbox>,
    /// Names and patterns this session subscribed to, without repeats.
    pub targets: Vec<Target>,
    /// Channels currently delivered to this session.
    pub attached: HashSet<ChannelId, IdHasher>,
}

impl SessionEntry {
    pub fn has_target(&self, pattern: &Pattern) -> bool {
        self.targets.iter().any(|t| t.pattern == *pattern)
    }

    /// The options of the latest subscribe covering `name`.
    pub fn options_for(&self, name: &ChannelName) -> Option<Arc<DeliveryOptions>> {
        self.targets
            .iter()
            .filter(|t| t.pattern.matches(name))
            .max_by_key(|t| t.options.generation)
            .map(|t| t.options.clone())
    }
}

/// Reverse index from targets to sessions, for channels that appear later.
#[derive(Default)]
pub struct TargetIndex {
    exact: HashMap<Arc<str>, Vec<SessionId>>,
    wildcard: Vec<(Pattern, SessionId)>,
}

impl TargetIndex {
    pub fn add(&mut self, target: &Pattern, session: SessionId) {
        if target.is_wildcard() {
            self.wildcard.push((target.clone(), session));
        } else {
            self.exact
                .entry(Arc::from(target.as_str()))
                .or_default()
                .push(session);
        }
    }

    pub fn remove(&mut self, target: &Pattern, session: SessionId) {
        if target.is_wildcard() {
            self.wildcard
                .retain(|(p, s)| !(*s == session && p == target));
        } else if let Some(list) = self.exact.get_mut(target.as_str()) {
            list.retain(|s| *s != session);
            if list.is_empty() {
                self.exact.remove(target.as_str());
            }
        }
    }

    /// Sessions with a target covering `name`, each once.
    pub fn sessions_for(&self, name: &ChannelName) -> Vec<SessionId> {
        let mut found: Vec<SessionId> = self.exact.get(name.as_str()).cloned().unwrap_or_default();
        found.extend(
            self.wildcard
                .iter()
                .filter(|(p, _)| p.matches(name))
                .map(|(_, s)| *s),
        );
        found.sort_unstable();
        found.dedup();
        found
    }
}
