//! Replays every seed (fuzz/seeds/TARGET/*) through its target's checks on
//! stable Rust, without libFuzzer: the corpus is a regression suite.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let data = fs::read(&path).expect("seed file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "seed {} fails", path.display());
        count += 1;
    }
    assert!(count > 0, "no seeds in {}", dir.display());
}

#[test]
fn frames_seeds() {
    replay("frames", tickcast_fuzz::frames::check);
}

#[test]
fn protocol_seeds() {
    replay("protocol", tickcast_fuzz::protocol::check);
}

#[test]
fn record_seeds() {
    replay("record", tickcast_fuzz::record::check);
}

#[test]
fn merge_seeds() {
    replay("merge", tickcast_fuzz::merge::check);
}
