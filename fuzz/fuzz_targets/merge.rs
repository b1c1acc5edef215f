#![no_main]
//! Fuzz target: see `tickcast_fuzz::merge` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tickcast_fuzz::merge::check(data));
