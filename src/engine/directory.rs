//! Every channel by name and in creation order, shared by the state stage
//! (the only writer: it adds a channel when its first record arrives) and
//! the fanout shards and HTTP handlers (readers: subscribe, wildcard scans,
//! `/channels`). Creation is rare, so one read-write lock is enough.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::cell::ChannelCell;
use super::index::ChannelId;
use crate::channel::{ChannelName, Pattern};

#[derive(Default)]
pub struct Directory {
    inner: RwLock<Listing>,
}

#[derive(Default)]
struct Listing {
    by_name: HashMap<ChannelName, Arc<ChannelCell>>,
    /// In creation order: a cell's `id` is its index here.
    list: Vec<Arc<ChannelCell>>,
}

impl Directory {
    /// Adds a new channel; its `id` must be the current length.
    pub fn insert(&self, cell: Arc<ChannelCell>) {
        let mut listing = self.inner.write().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(cell.id, listing.list.len());
        listing.by_name.insert(cell.name.clone(), cell.clone());
        listing.list.push(cell);
    }

    pub fn get(&self, name: &str) -> Option<Arc<ChannelCell>> {
        let listing = self.inner.read().unwrap_or_else(|e| e.into_inner());
        listing.by_name.get(name).cloned()
    }

    pub fn by_id(&self, id: ChannelId) -> Option<Arc<ChannelCell>> {
        let listing = self.inner.read().unwrap_or_else(|e| e.into_inner());
        listing.list.get(id).cloned()
    }

    /// Channels `target` covers, in creation order.
    pub fn matching(&self, target: &Pattern) -> Vec<Arc<ChannelCell>> {
        if !target.is_wildcard() {
            return self.get(target.as_str()).into_iter().collect();
        }
        let listing = self.inner.read().unwrap_or_else(|e| e.into_inner());
        listing
            .list
            .iter()
            .filter(|c| target.matches(&c.name))
            .cloned()
            .collect()
    }

    /// Every channel, in creation order.
    pub fn all(&self) -> Vec<Arc<ChannelCell>> {
        let listing = self.inner.read().unwrap_or_else(|e| e.into_inner());
        listing.list.clone()
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
