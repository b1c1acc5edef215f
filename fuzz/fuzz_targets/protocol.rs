#![no_main]
//! Fuzz target: see `tickcast_fuzz::protocol` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tickcast_fuzz::protocol::check(data));
