//! The Binance state machine on real frames (hftbacktest and cryptofeed
//! captures, tests/fixtures/exchanges/README.md) and on small made-up
//! depth diffs for the synchronisation rules.

use serde_json::{json, Value};

use super::*;

/// Real frames, as recorded.
const BOOK_TICKER: &str = r#"{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}"#;
const TRADE: &str = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}"#;
const AGG_TRADE: &str = r#"{"stream":"zilusdt@aggTrade","data":{"e":"aggTrade","E":1617647603484,"s":"ZILUSDT","a":18938405,"p":"0.21448000","q":"2062.90000000","f":23806928,"l":23806928,"T":1617647603483,"m":false,"M":true}}"#;

fn feed(symbols: &[&str]) -> Binance {
    Binance::new(
        symbols.iter().map(|s| s.to_string()).collect(),
        100,
        TradeStream::Trade,
    )
}

fn frame(logic: &mut Binance, text: &str) -> Vec<Action> {
    let mut out = Vec::new();
    logic.on_frame(text, &mut out);
    out
}

/// (channel, data) of each published record; other actions by name.
fn summary(actions: &[Action]) -> Vec<(String, Value)> {
    actions
        .iter()
        .map(|a| match a {
            Action::Publish(r) => (r.channel.as_str().to_owned(), Value::Object(r.data.clone())),
            Action::Reject(reason, _) => ("reject".into(), json!(reason.as_str())),
            Action::FetchSnapshot { symbol, path } => ("fetch".into(), json!([symbol, path])),
            Action::Resync { symbol, .. } => ("resync".into(), json!(symbol)),
            Action::Reconnect(_) => ("reconnect".into(), Value::Null),
            Action::Send(text) => ("send".into(), json!(text)),
        })
        .collect()
}

fn diff(symbol: &str, first: u64, last: u64, bids: Value, asks: Value) -> String {
    json!({"stream": "x@depth@100ms", "data": {"e": "depthUpdate", "E": 1, "s": symbol,
        "U": first, "u": last, "b": bids, "a": asks}})
    .to_string()
}

#[test]
fn book_ticker_and_trades_map_to_quotes_and_trades() {
    let mut b = feed(&["BTCUSDT", "ZILUSDT"]);
    assert_eq!(
        summary(&frame(&mut b, BOOK_TICKER)),
        [(
            "quotes.BTCUSDT".into(),
            json!({"bid": 61837.63, "bid_size": 3.78826,
            "ask": 61837.64, "ask_size": 1.54698, "u": 50093239212u64})
        )]
    );
    assert_eq!(b.last_sequence(), Some(50093239212));
    // m = true: the buyer was the maker, so a seller hit the bid.
    assert_eq!(
        summary(&frame(&mut b, TRADE)),
        [(
            "trades.BTCUSDT".into(),
            json!({"price": 61837.63, "size": 0.02, "side": "sell",
            "id": 3735683259u64, "exch_ts": 1723161255342000000u64})
        )]
    );
    assert_eq!(
        summary(&frame(&mut b, AGG_TRADE)),
        [(
            "trades.ZILUSDT".into(),
            json!({"price": 0.21448, "size": 2062.9, "side": "buy",
            "id": 18938405, "first_id": 23806928, "last_id": 23806928,
            "exch_ts": 1617647603483000000u64})
        )]
    );
}

#[test]
fn the_url_names_every_stream_of_every_symbol() {
    let b = feed(&["BTCUSDT", "ETHUSDT"]);
    assert_eq!(
        b.ws_url("wss://stream.binance.com:9443"),
        "wss://stream.binance.com:9443/stream?streams=btcusdt@bookTicker/btcusdt@trade/\
         btcusdt@depth@100ms/ethusdt@bookTicker/ethusdt@trade/ethusdt@depth@100ms"
    );
}

#[test]
fn what_cannot_be_mapped_is_rejected_with_a_reason() {
    let mut b = feed(&["BTCUSDT"]);
    assert_eq!(
        summary(&frame(&mut b, "not json{")),
        [("reject".into(), json!("invalid_json"))]
    );
    assert_eq!(
        summary(&frame(&mut b, r#"{"e":"kline"}"#)),
        [("reject".into(), json!("unmapped"))]
    );
    // A symbol this feed did not ask for.
    let other = TRADE.replace("BTCUSDT", "DOGEUSDT");
    assert_eq!(
        summary(&frame(&mut b, &other)),
        [("reject".into(), json!("unmapped"))]
    );
    // A price that is not a number.
    let bad = BOOK_TICKER.replace("61837.63000000", "lots");
    assert_eq!(
        summary(&frame(&mut b, &bad)),
        [("reject".into(), json!("unmapped"))]
    );
    // The answer to a SUBSCRIBE is no record and no rejection.
    assert!(frame(&mut b, r#"{"result":null,"id":1}"#).is_empty());
}

#[test]
fn a_snapshot_applies_the_straddling_diffs_and_is_published_as_clear_then_full() {
    let mut b = feed(&["BTCUSDT"]);
    let mut out = Vec::new();
    b.on_connect(&mut out);
    assert_eq!(
        summary(&out),
        [(
            "fetch".into(),
            json!(["BTCUSDT", "/api/v3/depth?symbol=BTCUSDT&limit=100"])
        )]
    );
    // Buffered while the snapshot is fetched: one older, one straddling.
    assert!(frame(
        &mut b,
        &diff("BTCUSDT", 90, 99, json!([["1.0", "5"]]), json!([]))
    )
    .is_empty());
    assert!(frame(
        &mut b,
        &diff(
            "BTCUSDT",
            100,
            105,
            json!([["2.0", "1"]]),
            json!([["3.0", "0"]])
        )
    )
    .is_empty());
    let mut out = Vec::new();
    let snapshot =
        json!({"lastUpdateId": 101, "bids": [["1.0", "7"]], "asks": [["3.0", "4"], ["4.0", "1"]]});
    b.on_snapshot("BTCUSDT", &snapshot.to_string(), &mut out);
    assert_eq!(
        summary(&out),
        [
            ("book.BTCUSDT".into(), json!({"bids": null, "asks": null})),
            // The diff 90..99 is older than the snapshot and not applied.
            (
                "book.BTCUSDT".into(),
                json!({"bids": {"2.0": 1, "1.0": 7}, "asks": {"4.0": 1}})
            ),
        ]
    );
    // In step: a patch.
    assert_eq!(
        summary(&frame(
            &mut b,
            &diff("BTCUSDT", 106, 106, json!([["1.0", "0"]]), json!([]))
        )),
        [("book.BTCUSDT".into(), json!({"bids": {"1.0": null}}))]
    );
}

#[test]
fn a_skipped_update_id_resyncs_from_a_fresh_snapshot() {
    let mut b = feed(&["BTCUSDT"]);
    b.on_connect(&mut Vec::new());
    let mut out = Vec::new();
    b.on_snapshot(
        "BTCUSDT",
        r#"{"lastUpdateId":10,"bids":[["1","1"]],"asks":[]}"#,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    assert_eq!(
        frame(
            &mut b,
            &diff("BTCUSDT", 11, 12, json!([["1", "2"]]), json!([]))
        )
        .len(),
        1
    );
    // 13 and 14 were lost: U 15 does not follow u 12.
    let gap = frame(
        &mut b,
        &diff("BTCUSDT", 15, 16, json!([["1", "3"]]), json!([])),
    );
    assert_eq!(
        summary(&gap),
        [
            ("resync".into(), json!("BTCUSDT")),
            (
                "fetch".into(),
                json!(["BTCUSDT", "/api/v3/depth?symbol=BTCUSDT&limit=100"])
            ),
        ]
    );
    // Nothing is published out of step; the new snapshot is.
    assert!(frame(
        &mut b,
        &diff("BTCUSDT", 17, 17, json!([["1", "4"]]), json!([]))
    )
    .is_empty());
    let mut out = Vec::new();
    b.on_snapshot(
        "BTCUSDT",
        r#"{"lastUpdateId":16,"bids":[["1","3"],["0.5","1"]],"asks":[]}"#,
        &mut out,
    );
    assert_eq!(
        summary(&out),
        [
            ("book.BTCUSDT".into(), json!({"bids": null, "asks": null})),
            (
                "book.BTCUSDT".into(),
                json!({"bids": {"1": 4, "0.5": 1}, "asks": {}})
            ),
        ]
    );
}

#[test]
fn a_snapshot_older_than_the_stream_is_fetched_again_then_the_connection_is_remade() {
    let mut b = feed(&["BTCUSDT"]);
    b.on_connect(&mut Vec::new());
    frame(&mut b, &diff("BTCUSDT", 50, 60, json!([]), json!([])));
    for attempt in 1..=MAX_STALE_SNAPSHOTS {
        let mut out = Vec::new();
        b.on_snapshot(
            "BTCUSDT",
            r#"{"lastUpdateId":10,"bids":[],"asks":[]}"#,
            &mut out,
        );
        let expected = if attempt < MAX_STALE_SNAPSHOTS {
            "fetch"
        } else {
            "reconnect"
        };
        assert_eq!(summary(&out)[0].0, expected, "attempt {attempt}");
    }
}

#[test]
fn a_snapshot_with_no_buffered_diff_waits_for_one_that_straddles_it() {
    let mut b = feed(&["BTCUSDT"]);
    b.on_connect(&mut Vec::new());
    let mut out = Vec::new();
    b.on_snapshot(
        "BTCUSDT",
        r#"{"lastUpdateId":10,"bids":[],"asks":[]}"#,
        &mut out,
    );
    // Older: dropped silently.
    assert!(frame(
        &mut b,
        &diff("BTCUSDT", 5, 10, json!([["1", "1"]]), json!([]))
    )
    .is_empty());
    // Straddles 11: applied.
    assert_eq!(
        frame(
            &mut b,
            &diff("BTCUSDT", 9, 12, json!([["1", "1"]]), json!([]))
        )
        .len(),
        1
    );
    // A buffered-free snapshot followed by a diff starting past L+1: resync.
    let mut b = feed(&["BTCUSDT"]);
    b.on_connect(&mut Vec::new());
    b.on_snapshot(
        "BTCUSDT",
        r#"{"lastUpdateId":10,"bids":[],"asks":[]}"#,
        &mut Vec::new(),
    );
    let gap = frame(&mut b, &diff("BTCUSDT", 12, 13, json!([]), json!([])));
    assert_eq!(summary(&gap)[0].0, "resync");
}

#[test]
fn the_buffer_while_waiting_is_bounded() {
    let mut b = feed(&["BTCUSDT"]);
    b.on_connect(&mut Vec::new());
    for i in 0..(MAX_BUFFERED_DIFFS as u64 + 50) {
        frame(&mut b, &diff("BTCUSDT", i + 1, i + 1, json!([]), json!([])));
    }
    let Sync::Waiting { buffer, .. } = &b.books["BTCUSDT"].sync else {
        panic!("still waiting");
    };
    assert_eq!(buffer.len(), MAX_BUFFERED_DIFFS);
    assert_eq!(buffer.front().unwrap().first, 51);
}
