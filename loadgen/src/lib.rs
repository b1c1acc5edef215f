//! tickcast-loadgen: opens many WebSocket subscribers against a tickcast-protocol server,
//! optionally drives its feed on a fixed schedule, and measures what comes back.
//!
//! The flow of one run, and where each part lives:
//!
//! - `cli.rs`       flags -> [`Config`] (`config.rs`: the typed settings and their checks)
//! - `run.rs`       the phases: fd limit, ramp, subscribe, warm-up, window, drain, close, report
//! - `mix.rs`       which channels client i subscribes to (names, patterns, K of N zipf/uniform)
//! - `ws.rs`        one connection: TCP connect from a chosen 127.0.0.x, hand-rolled upgrade
//! - `client.rs`    one subscriber task: read loop, clean close, reconnect with `since`
//! - `stalled.rs`   `--stalled` connections: subscribe, then never read (a slow consumer)
//! - `chain.rs`     the prev-chain gap detector
//! - `scan.rs`      the per-message field scanner (no JSON tree per delivery)
//! - `publisher.rs` publisher mode: fixed-rate NDJSON feed with scheduled-time stamps (CO-corrected)
//! - `stats.rs`     clock, per-thread tallies and histograms, counters
//! - `report.rs`    figures, table, result.json; `hgrm.rs` the .hgrm file; `plot.rs` the SVG
//! - `progress.rs`  the live status line
//!
//! [`run()`] is the library entry point used by the binary and by the integration tests.

pub mod chain;
pub mod cli;
pub mod client;
pub mod config;
pub mod hgrm;
pub mod inflate;
pub mod mix;
pub mod plot;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod run;
pub mod scan;
pub mod stalled;
pub mod stats;
pub mod ws;

pub use config::{Config, Mix, Pick, Publish};
pub use report::Report;
pub use run::run;
