//! What the fanout benches share: market-board quote updates on one
//! channel, and an engine with that many subscribers, each with its own
//! outbox (compressed ones when `deflate` is given).

use std::sync::Arc;

use tickcast::channel::{ChannelName, Pattern};
use tickcast::deflate::Negotiated;
use tickcast::engine::{Engine, EngineLimits, EngineStats};
use tickcast::record::{record_from_value, FeedRecord};
use tickcast::session::outbox::Outbox;
use tickcast::session::protocol::SubscribeOptions;

const FIXTURE: &str = include_str!("../../tests/fixtures/replay-mixed.ndjson");
pub const CHANNEL: &str = "quotes.A";

/// `count` quote records for `CHANNEL`, cycling through the fixture's
/// quotes (150 to 200 bytes of JSON each).
pub fn records(count: usize) -> Vec<FeedRecord> {
    let channel = ChannelName::new(CHANNEL).unwrap();
    let quotes: Vec<FeedRecord> = FIXTURE
        .lines()
        .filter(|l| l.starts_with(r#"{"channel":"quotes."#))
        .map(|l| record_from_value(serde_json::from_str(l).unwrap()).unwrap())
        .collect();
    (0..count)
        .map(|i| FeedRecord {
            channel: channel.clone(),
            ingest_ns: 1_700_000_000_000_000_000 + i as u64,
            ..quotes[i % quotes.len()].clone()
        })
        .collect()
}

/// An engine with `sessions` subscribers of `CHANNEL`, and their outboxes
/// (64 MiB each: nothing is refused between two drains).
pub fn subscribed_engine(sessions: u64, deflate: Option<Negotiated>) -> (Engine, Vec<Arc<Outbox>>) {
    let limits = EngineLimits {
        max_targets_per_session: 16,
        max_channels: 16,
    };
    let mut engine = Engine::new(Arc::from("bench"), limits, Arc::new(EngineStats::default()));
    let outboxes: Vec<Arc<Outbox>> = (0..sessions)
        .map(|_| Arc::new(Outbox::new(64 << 20).with_deflate(deflate)))
        .collect();
    for (id, outbox) in (1..).zip(&outboxes) {
        engine.register(id, outbox.clone());
        engine.subscribe(
            id,
            Some(1),
            vec![Pattern::new(CHANNEL).unwrap()],
            SubscribeOptions::default(),
            0,
        );
    }
    (engine, outboxes)
}
