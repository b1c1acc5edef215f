//! What a subscribe asks of the engine beyond its channels. The session's
//! protocol parser builds it; the engine owns the type so that it depends
//! on nothing session-side.

use std::collections::HashMap;

/// What a subscribe asks for beyond its channels (PROTOCOL.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeOptions {
    /// Top-level fields to keep; `None` keeps every field.
    pub fields: Option<Vec<String>>,
    /// At most this many updates per second per channel (finite, > 0).
    pub max_hz: Option<f64>,
    /// Resume positions: channel name -> the last seq the client applied.
    pub since: HashMap<String, u64>,
    /// The epoch the `since` positions belong to.
    pub epoch: Option<String>,
}
