//! Who may subscribe to a namespace: anyone (`public`) or holders of a
//! token whose `channels` claim covers the target (`token`). Set per
//! namespace with `subscribe = "public" | "token"` in `[namespace_defaults]`
//! and `[namespaces.<name>]`.

use std::collections::HashMap;

use crate::channel::Pattern;

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who may connect.
    #[default]
    Public,
    /// A connection whose token's `channels` claim covers the target.
    Token,
}

/// The access of every namespace: the named ones, and a default for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeRules {
    pub default: Access,
    pub named: HashMap<String, Access>,
}

impl SubscribeRules {
    pub fn of(&self, namespace: &str) -> Access {
        self.named.get(namespace).copied().unwrap_or(self.default)
    }

    /// Does any namespace need a token?
    pub fn any_need_tokens(&self) -> bool {
        self.default == Access::Token || self.named.values().any(|&a| a == Access::Token)
    }

    /// Does every namespace need a token (so a connection without one could
    /// do nothing)?
    pub fn all_need_tokens(&self) -> bool {
        self.default == Access::Token && self.named.values().all(|&a| a == Access::Token)
    }

    /// The namespaces (or the default) that need a token, for messages.
    pub fn token_namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .named
            .iter()
            .filter(|(_, &a)| a == Access::Token)
            .map(|(n, _)| format!("namespaces.{n}"))
            .collect();
        names.sort();
        if self.default == Access::Token {
            names.insert(0, "namespace_defaults".into());
        }
        names
    }

    /// Does subscribing to `target` need a token? A target whose first
    /// segment is `*` or `>` reaches every namespace, so it is public only
    /// when every namespace is.
    pub fn needs_token(&self, target: &Pattern) -> bool {
        let namespace = target.as_str().split('.').next().unwrap_or_default();
        match namespace {
            "*" | ">" => self.any_need_tokens(),
            namespace => self.of(namespace) == Access::Token,
        }
    }
}
