//! Per-namespace policy: delivery mode and history depth
//! (`[namespaces.<name>]` in the config file).

use std::collections::HashMap;

/// How a namespace's channels are delivered (PROTOCOL.md, "Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// State-like data: diffs may be filtered and coalesced (`max_hz`).
    #[default]
    Merge,
    /// Event-like data: every update in order, never coalesced; `max_hz` is
    /// refused, and a subscriber that falls behind is closed with 1013.
    Stream,
}

/// Updates each channel keeps for resume when the config does not say.
pub const DEFAULT_HISTORY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub mode: Mode,
    /// Recent updates kept per channel for `since`.
    pub history: usize,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        Self {
            mode: Mode::Merge,
            history: DEFAULT_HISTORY,
        }
    }
}

/// The policy of every namespace: the named ones, and a default for the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespaces {
    pub default: NamespacePolicy,
    pub named: HashMap<String, NamespacePolicy>,
}

impl Namespaces {
    pub fn policy(&self, namespace: &str) -> NamespacePolicy {
        self.named.get(namespace).copied().unwrap_or(self.default)
    }

    /// Sets one namespace's policy (handy in tests and embedding).
    pub fn with(mut self, namespace: &str, policy: NamespacePolicy) -> Self {
        self.named.insert(namespace.to_owned(), policy);
        self
    }
}
