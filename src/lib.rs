//! tickcast: market data and live scores pushed to WebSocket clients.
//!
//! The data path, in the order an update travels:
//!
//! 1. [`feed`] adapters (synthetic, replay, tcp) read input and parse each
//!    line with [`record`] into a [`record::FeedRecord`] on a [`channel`].
//! 2. The sequenced [`ring`] carries records from every feed to the engine.
//! 3. The [`engine`]'s state stage applies each record once to its
//!    channel's state (JSON Merge Patch, seq + 1) and history, and hands
//!    updates that have subscribers to the fanout shards, which encode each
//!    distinct shape once for the process as a [`wire`] frame shared by all
//!    its subscribers; `max_hz` subscriptions hold and merge diffs until
//!    their next allowed instant.
//! 4. Each [`session`] has a bounded [`outbox::Outbox`] (the engine pushes,
//!    the session's writer drains); its writer
//!    sends everything queued in one vectored write, its reader turns client
//!    messages into engine commands.
//! 5. [`http`] serves `/ws`, `/channels`, `/healthz` and the live page.
//!
//! [`auth`] decides who may do what: tokens and Origin at the handshake,
//! the token's grant on each subscribe, the publish key on `tcp:` feeds.
//!
//! [`json_depth`] bounds how deep client messages and feed lines may nest
//! before anything parses them. [`config`] holds every flag and limit; [`server`] wires the parts together.
//! [`rate`] is the one-timestamp token bucket behind the rate limits;
//! [`shutdown`] stops the server so that clients come back spread out.
//! [`nats`] (`--nats`) spreads one ingest's records over edge nodes through
//! a NATS JetStream stream (docs/scaling.md).

#![deny(unsafe_code)]

pub mod activity;
pub mod auth;
pub mod channel;
pub mod clock;
pub mod config;
pub mod deflate;
pub mod engine;
pub mod fault;
pub mod feed;
pub mod handoff;
pub mod http;
pub mod json_depth;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod rate;
pub mod record;
pub mod ring;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod strict_json;
pub mod tls;
pub mod wire;

pub use server::{start, RunningServer};
