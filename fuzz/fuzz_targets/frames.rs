#![no_main]
//! Fuzz target: see `tickcast_fuzz::frames` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tickcast_fuzz::frames::check(data));
