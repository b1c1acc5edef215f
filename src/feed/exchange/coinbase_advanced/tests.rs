//! The Advanced Trade state machine on real frames (the cryptofeed capture,
//! tests/fixtures/exchanges/README.md), renumbered where a test needs a gap.

use serde_json::{json, Value};

use super::*;

const TICKER: &str = r#"{"channel":"ticker","timestamp":"2026-08-09T21:05:54.29826762Z","sequence_num":250,"events":[{"type":"update","tickers":[{"type":"ticker","product_id":"ETH-USD","price":"1919.48","volume_24_h":"19976.09208272","low_24_h":"1911.04","high_24_h":"1925","low_52_w":"1505","high_52_w":"4955.9","price_percent_chg_24_h":"0.02866180631915","best_bid":"1919.42","best_ask":"1919.49","best_bid_quantity":"1.1531","best_ask_quantity":"0.16191716"}]}]}"#;
const TRADE: &str = r#"{"channel":"market_trades","timestamp":"2026-08-09T21:05:56.178816336Z","sequence_num":325,"events":[{"type":"update","trades":[{"product_id":"ETH-USD","trade_id":"833140788","price":"1919.48","size":"0.058662","time":"2026-08-09T21:05:56.147332Z","side":"SELL"}]}]}"#;
const L2_UPDATE: &str = r#"{"channel":"l2_data","timestamp":"2026-08-09T21:05:48.669312164Z","sequence_num":27,"events":[{"type":"update","product_id":"ETH-USD","updates":[{"side":"bid","event_time":"2026-08-09T21:05:48.653345Z","price_level":"1679.53","new_quantity":"0"}]}]}"#;
const HEARTBEAT: &str = r#"{"channel":"heartbeats","timestamp":"2026-08-09T21:05:48.856364007Z","sequence_num":35,"events":[{"current_time":"2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341","heartbeat_counter":41691}]}"#;

fn feed() -> CoinbaseAdvanced {
    CoinbaseAdvanced::new(vec!["ETH-USD".into()], 100)
}

fn with_sequence(frame: &str, n: u64) -> String {
    let mut v: Value = serde_json::from_str(frame).unwrap();
    v["sequence_num"] = json!(n);
    v.to_string()
}

fn frame(logic: &mut CoinbaseAdvanced, text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    logic.on_frame(text, &mut out);
    out.into_iter()
        .map(|a| match a {
            Action::Publish(r) => (r.channel.as_str().to_owned(), Value::Object(r.data)),
            Action::Reject(reason, _) => ("reject".into(), json!(reason.as_str())),
            Action::Send(text) => ("send".into(), serde_json::from_str(&text).unwrap()),
            Action::Resync { symbol, .. } => ("resync".into(), json!(symbol)),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn snapshot(n: u64) -> String {
    json!({"channel":"l2_data","timestamp":"2026-08-09T21:05:48.483587501Z","sequence_num":n,
        "events":[{"type":"snapshot","product_id":"ETH-USD","updates":[
            {"side":"bid","event_time":"2026-08-09T21:05:48.170326Z","price_level":"1679.53","new_quantity":"2.5"},
            {"side":"offer","event_time":"2026-08-09T21:05:48.170326Z","price_level":"1919.49","new_quantity":"0.0781"}]}]})
    .to_string()
}

#[test]
fn it_subscribes_one_channel_per_message() {
    let mut out = Vec::new();
    feed().on_connect(&mut out);
    let sent: Vec<Value> = out
        .iter()
        .map(|a| match a {
            Action::Send(t) => serde_json::from_str(t).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[0],
        json!({"type":"subscribe","product_ids":["ETH-USD"],"channel":"level2"})
    );
    assert_eq!(sent[3]["channel"], "heartbeats");
}

#[test]
fn ticker_and_trades_map_like_the_converted_feed() {
    let mut c = feed();
    assert_eq!(
        frame(&mut c, TICKER),
        [(
            "quotes.ETH-USD".into(),
            json!({"bid": 1919.42, "bid_size": 1.1531, "ask": 1919.49,
            "ask_size": 0.16191716, "sequence_num": 250, "exch_ts": 1786309554298267620u64})
        )]
    );
    assert_eq!(
        frame(&mut c, &with_sequence(TRADE, 251)),
        [(
            "trades.ETH-USD".into(),
            json!({"price": 1919.48, "size": 0.058662, "side": "buy",
            "maker_side": "sell", "id": "833140788", "sequence_num": 251,
            "exch_ts": 1786309556147332000u64})
        )]
    );
    assert!(frame(&mut c, &with_sequence(HEARTBEAT, 252)).is_empty());
    assert_eq!(c.last_sequence(), Some(252));
}

#[test]
fn the_book_starts_from_a_snapshot_and_a_skipped_number_resyncs_it() {
    let mut c = feed();
    // An update before any snapshot is not applied.
    assert!(frame(&mut c, &with_sequence(L2_UPDATE, 1)).is_empty());
    assert_eq!(
        frame(&mut c, &snapshot(2)),
        [
            ("book.ETH-USD".into(), json!({"bids": null, "asks": null})),
            (
                "book.ETH-USD".into(),
                json!({"bids": {"1679.53": 2.5}, "asks": {"1919.49": 0.0781}})
            ),
        ]
    );
    assert_eq!(
        frame(&mut c, &with_sequence(L2_UPDATE, 3)),
        [("book.ETH-USD".into(), json!({"bids": {"1679.53": null}}))]
    );
    // 4 was lost: the books are out of step and level2 is resubscribed.
    let gap = frame(&mut c, &with_sequence(TICKER, 5));
    assert_eq!(gap[0], ("resync".into(), json!("ETH-USD")));
    assert_eq!(gap[1].1["type"], "unsubscribe");
    assert_eq!(
        gap[2].1,
        json!({"type":"subscribe","product_ids":["ETH-USD"],"channel":"level2"})
    );
    assert_eq!(gap[3].0, "quotes.ETH-USD");
    assert!(frame(&mut c, &with_sequence(L2_UPDATE, 6)).is_empty());
    assert_eq!(frame(&mut c, &snapshot(7)).len(), 2);
}

#[test]
fn what_cannot_be_mapped_is_rejected_with_a_reason() {
    let mut c = feed();
    assert_eq!(
        frame(&mut c, "]"),
        [("reject".into(), json!("invalid_json"))]
    );
    assert_eq!(
        frame(
            &mut c,
            r#"{"channel":"candles","sequence_num":1,"events":[]}"#
        ),
        [("reject".into(), json!("unmapped"))]
    );
    assert_eq!(
        frame(&mut c, r#"{"channel":"ticker","events":[]}"#),
        [("reject".into(), json!("unmapped"))]
    );
    assert_eq!(
        frame(
            &mut c,
            &with_sequence(&TICKER.replace("ETH-USD", "SOL-USD"), 2)
        ),
        [("reject".into(), json!("unmapped"))]
    );
}
