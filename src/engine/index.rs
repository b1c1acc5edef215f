//! Who is subscribed to what: each session's targets (names and patterns),
//! and the reverse index used when a channel first appears.
//!
//! Delivery lists live on the channels themselves (see `Channel::subscribers`)
//! so an update walks exactly its own subscribers; this index is consulted
//! only on subscribe, unsubscribe and channel creation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::channel::{ChannelName, Pattern};
use crate::session::outbox::Outbox;

pub type SessionId = u64;
pub type ChannelId = usize;

/// One connected session as the engine sees it.
pub struct SessionEntry {
    pub outbox: Arc<Outbox>,
    /// Names and patterns this session subscribed to, without repeats.
    pub targets: Vec<Pattern>,
    /// Channels currently delivered to this session.
    pub attached: HashSet<ChannelId>,
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
