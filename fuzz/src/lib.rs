//! The checks behind tickcast's fuzz targets (fuzz/README.md).
//!
//! Each module's `check` takes the fuzzer's bytes, drives one parser with
//! them and panics if a property the server relies on breaks. They are plain
//! functions so that the corpus replay test (tests/replay.rs) runs them on
//! stable Rust without libFuzzer.
//!
//! The calls into tickcast are kept in one place per target (`fn read_all`,
//! `fn parse_message`, `fn parse_one_line` / `fn split_lines`, `fn merge` /
//! `fn compose`), so a signature change upstream is a one-line edit here.

pub mod frames;
pub mod merge;
pub mod meter;
pub mod protocol;
pub mod record;
mod schedule;

/// Counts heap use so targets can check how much a parser allocates.
#[global_allocator]
static METER: meter::Meter = meter::Meter;
