//! The Coinbase state machine on real frames (the cryptofeed capture,
//! tests/fixtures/exchanges/README.md).

use serde_json::{json, Value};

use super::*;

const TICKER: &str = r#"{"type":"ticker","sequence":333938798,"product_id":"BAND-GBP","price":"14.7775","open_24h":"14.6647","volume_24h":"94381.28000000","low_24h":"14.3691","high_24h":"16.55","volume_30d":"2295579.57000000","best_bid":"14.7550","best_ask":"14.8060","side":"buy","time":"2021-04-17T16:43:30.244075Z","trade_id":881613,"last_size":"0.04"}"#;
const LAST_MATCH: &str = r#"{"type":"last_match","trade_id":881613,"maker_order_id":"27fff20b-af29-4f45-8744-56dd1ef57dc0","taker_order_id":"1da6ce16-c8da-4732-9f71-6049f4c6aaf8","side":"sell","size":"0.04","price":"14.7775","product_id":"BAND-GBP","sequence":333938798,"time":"2021-04-17T16:43:30.244075Z"}"#;
const L2UPDATE: &str = r#"{"type":"l2update","product_id":"SKL-GBP","changes":[["sell","0.5762","335.0"]],"time":"2021-04-17T16:43:37.078325Z"}"#;

fn feed() -> Coinbase {
    Coinbase::new(vec!["BAND-GBP".into(), "SKL-GBP".into()], 100)
}

fn frame(logic: &mut Coinbase, text: &str) -> Vec<(String, Value)> {
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

#[test]
fn the_subscription_names_every_product_and_channel() {
    let mut out = Vec::new();
    feed().on_connect(&mut out);
    assert_eq!(
        out,
        [Action::Send(
            json!({"type":"subscribe","product_ids":["BAND-GBP","SKL-GBP"],
                "channels":["level2_batch","ticker","matches","heartbeat"]})
            .to_string()
        )]
    );
}

#[test]
fn ticker_and_matches_map_to_quotes_and_trades_with_the_aggressor_side() {
    let mut c = feed();
    assert_eq!(
        frame(&mut c, TICKER),
        [(
            "quotes.BAND-GBP".into(),
            json!({"bid": 14.755, "ask": 14.806,
            "sequence": 333938798, "exch_ts": 1618677810244075000u64})
        )]
    );
    // Coinbase's side is the maker's: a resting sell was hit by a buyer.
    assert_eq!(
        frame(&mut c, LAST_MATCH),
        [(
            "trades.BAND-GBP".into(),
            json!({"price": 14.7775, "size": 0.04, "side": "buy",
            "maker_side": "sell", "id": 881613, "sequence": 333938798,
            "exch_ts": 1618677810244075000u64, "last_match": true})
        )]
    );
    assert_eq!(c.last_sequence(), Some(333938798));
}

#[test]
fn level2_publishes_a_snapshot_as_clear_then_full_then_patches() {
    let mut c = feed();
    // Before its snapshot an update is not applied (the snapshot holds it).
    assert!(frame(&mut c, L2UPDATE).is_empty());
    let snapshot = r#"{"type":"snapshot","product_id":"SKL-GBP","asks":[["0.5762","2865.9"],["0.5767","6327.2"]],"bids":[["0.5752","100.0"]]}"#;
    assert_eq!(
        frame(&mut c, snapshot),
        [
            ("book.SKL-GBP".into(), json!({"bids": null, "asks": null})),
            (
                "book.SKL-GBP".into(),
                json!({"bids": {"0.5752": 100}, "asks": {"0.5762": 2865.9, "0.5767": 6327.2}})
            ),
        ]
    );
    assert_eq!(
        frame(&mut c, L2UPDATE),
        [("book.SKL-GBP".into(), json!({"asks": {"0.5762": 335}}))]
    );
    let delete = L2UPDATE.replace("\"335.0\"", "\"0.00000000\"");
    assert_eq!(
        frame(&mut c, &delete),
        [("book.SKL-GBP".into(), json!({"asks": {"0.5762": null}}))]
    );
}

#[test]
fn an_update_that_cannot_be_applied_resubscribes_for_a_fresh_snapshot() {
    let mut c = feed();
    frame(
        &mut c,
        r#"{"type":"snapshot","product_id":"SKL-GBP","asks":[],"bids":[]}"#,
    );
    let bad = L2UPDATE.replace("\"sell\"", "\"sideways\"");
    let out = frame(&mut c, &bad);
    assert_eq!(out[0], ("reject".into(), json!("unmapped")));
    assert_eq!(out[1], ("resync".into(), json!("SKL-GBP")));
    assert_eq!(out[2].1["type"], "unsubscribe");
    assert_eq!(
        out[3].1,
        json!({"type":"subscribe","product_ids":["SKL-GBP"],"channels":["level2_batch"]})
    );
    // Until the new snapshot, updates are not applied.
    assert!(frame(&mut c, L2UPDATE).is_empty());
}

#[test]
fn what_cannot_be_mapped_is_rejected_with_a_reason() {
    let mut c = feed();
    assert_eq!(
        frame(&mut c, "{"),
        [("reject".into(), json!("invalid_json"))]
    );
    assert_eq!(
        frame(&mut c, r#"{"type":"status"}"#),
        [("reject".into(), json!("unmapped"))]
    );
    assert_eq!(
        frame(&mut c, &TICKER.replace("BAND-GBP", "BTC-USD")),
        [("reject".into(), json!("unmapped"))]
    );
    assert_eq!(
        frame(
            &mut c,
            r#"{"type":"error","message":"Failed to subscribe","reason":"level2 requires authentication"}"#
        ),
        [("reject".into(), json!("unmapped"))]
    );
    // Heartbeats and the subscription answer are not records and not errors.
    assert!(frame(&mut c, r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BAND-GBP","time":"2021-04-17T16:43:37.078325Z"}"#).is_empty());
    assert_eq!(c.last_sequence(), Some(90));
    assert!(frame(&mut c, r#"{"type":"subscriptions","channels":[]}"#).is_empty());
}
