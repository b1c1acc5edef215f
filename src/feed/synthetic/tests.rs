//! Tests of the synthetic feed, on simulated time (no sockets, no clocks)
//! except the last one, which drives `run` into a real ring.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::feed::FeedStats;
use crate::record::parse_record;
use crate::ring::Ring;

const MS: Duration = Duration::from_millis(1);

/// Steps `feed` from `from` to `to` (exclusive) every `step`.
fn steps(
    feed: &mut SyntheticFeed,
    from: Duration,
    to: Duration,
    step: Duration,
) -> Vec<FeedRecord> {
    let mut records = Vec::new();
    let mut now = from;
    while now < to {
        records.extend(feed.next_records(now));
        now += step;
    }
    records
}

fn to_line(record: &FeedRecord) -> String {
    let mut object = JsonMap::new();
    object.insert("channel".into(), Value::from(record.channel.as_str()));
    object.insert("data".into(), Value::Object(record.data.clone()));
    serde_json::to_string(&object).expect("a map always serializes")
}

/// RFC 7396 applied in place, as a subscriber would.
fn merge(target: &mut JsonMap, patch: &JsonMap) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(inner) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                if !slot.is_object() {
                    *slot = Value::Object(JsonMap::new());
                }
                if let Value::Object(t) = slot {
                    merge(t, inner);
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

#[test]
fn every_record_round_trips_through_the_parser() {
    let mut feed = SyntheticFeed::new(1, 500.0);
    let records = steps(&mut feed, Duration::ZERO, Duration::from_secs(10), 10 * MS);
    assert!(records.len() > 5_000);
    for record in records {
        let line = to_line(&record);
        let parsed = parse_record(
            &mut line.clone().into_bytes(),
            crate::json_depth::DEFAULT_LIMIT,
        )
        .unwrap_or_else(|(reason, detail)| panic!("{line}: {reason} ({detail})"));
        assert_eq!(parsed.channel, record.channel);
        assert_eq!(parsed.data, record.data, "{line}");
        assert!(!record.data.is_empty(), "empty patch on {}", record.channel);
    }
}

#[test]
fn first_records_are_full_states_and_patches_rebuild_the_state() {
    let mut feed = SyntheticFeed::new(2, 800.0);
    let first = feed.next_records(Duration::ZERO);
    let depth = depth::DEPTH_SYMBOLS.len();
    assert_eq!(first.len(), LISTINGS.len() + 4 + 2 * depth);
    let mut states: HashMap<String, JsonMap> = HashMap::new();
    for record in &first {
        let fields = match record.channel.namespace() {
            "quotes" => 6,
            "book" => 2,
            "trades" => 4,
            _ => 10,
        };
        assert_eq!(record.data.len(), fields, "{}", to_line(record));
        assert!(states
            .insert(record.channel.to_string(), record.data.clone())
            .is_none());
    }
    for record in steps(&mut feed, MS, Duration::from_secs(30), 10 * MS) {
        let state = states
            .get_mut(record.channel.as_str())
            .expect("no new channels");
        merge(state, &record.data);
    }
    for quote in &feed.quotes {
        assert_eq!(states[quote.out.channel.as_str()], quote.state());
        if let Some(depth) = &quote.depth {
            let (bids, asks) = depth.sides();
            let book = &states[depth_channel("book", quote).as_str()];
            assert_eq!(book["bids"].as_object().unwrap().len(), bids.len());
            assert_eq!(book["asks"].as_object().unwrap().len(), asks.len());
            for (price, units) in bids {
                assert_eq!(book["bids"][depth::price_key(*price)], quote.size(*units));
            }
        }
    }
    for game in &feed.matches {
        let state = game.state();
        let same_teams =
            |s: &&JsonMap| s.get("home") == state.get("home") && s.get("away") == state.get("away");
        let merged = states.values().find(same_teams);
        assert_eq!(merged, Some(&state));
    }
}

fn price_text_is_on_the_cent_grid(value: &Value) -> bool {
    let text = value.to_string();
    value.is_number()
        && text
            .split_once('.')
            .is_none_or(|(_, cents)| cents.len() <= 2)
}

#[test]
fn quotes_keep_bid_below_ask_on_a_cent_grid_and_volume_grows() {
    let mut feed = SyntheticFeed::new(3, 2000.0);
    let mut states: HashMap<String, JsonMap> = HashMap::new();
    for record in steps(&mut feed, Duration::ZERO, Duration::from_secs(20), 10 * MS) {
        if record.channel.namespace() != "quotes" {
            continue;
        }
        let state = states.entry(record.channel.to_string()).or_default();
        let volume_before = state.get("volume").and_then(Value::as_f64);
        merge(state, &record.data);
        let num = |field: &str| state[field].as_f64().expect("numeric field");
        assert!(0.0 < num("bid") && num("bid") < num("ask"), "{state:?}");
        for field in ["bid", "ask", "last"] {
            assert!(
                price_text_is_on_the_cent_grid(&state[field]),
                "{field} {state:?}"
            );
        }
        assert!(num("bid_size") > 0.0 && num("ask_size") > 0.0);
        assert!(
            volume_before.is_none_or(|v| v <= num("volume")),
            "volume fell"
        );
    }
    assert_eq!(states.len(), LISTINGS.len());
}

#[test]
fn scores_never_go_down_and_matches_play_out_and_restart() {
    let mut feed = SyntheticFeed::new(4, 1.0);
    let mut states: HashMap<String, JsonMap> = HashMap::new();
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let end = Duration::from_secs(25 * 60);
    for record in steps(&mut feed, Duration::ZERO, end, 200 * MS) {
        if record.channel.namespace() != "scores" {
            continue;
        }
        let state = states.entry(record.channel.to_string()).or_default();
        let before = (
            state.get("home_score").cloned(),
            state.get("away_score").cloned(),
        );
        merge(state, &record.data);
        let status = state["status"]
            .as_str()
            .expect("status is a string")
            .to_string();
        if status != "scheduled" {
            for (was, field) in [(before.0, "home_score"), (before.1, "away_score")] {
                let was = was.and_then(|v| v.as_u64()).unwrap_or(0);
                assert!(
                    state[field].as_u64() >= Some(was),
                    "{field} fell: {state:?}"
                );
            }
        }
        let clock = state["clock"].as_str().expect("clock is a string");
        assert!(
            clock.len() == 5 && clock.as_bytes()[2] == b':',
            "clock {clock}"
        );
        let event = state["last_event"].as_object().expect("last_event object");
        assert!(event.values().all(|v| !v.is_null()) && event.contains_key("text"));
        let statuses = seen.entry(record.channel.to_string()).or_default();
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
    }
    assert_eq!(seen.len(), 4);
    for (channel, statuses) in seen {
        let joined = statuses.join(" ");
        // A whole match, then the next one under way.
        assert!(
            joined.contains("live half_time live full_time scheduled live"),
            "{channel}: {joined}"
        );
    }
}

#[test]
fn quote_rate_over_a_simulated_second_matches_the_asked_rate() {
    let second = Duration::from_secs(1);
    for (rate, step) in [
        (500.0, 10 * MS),
        (500.0, 7 * MS),
        (50.0, 10 * MS),
        (7.5, 3 * MS),
    ] {
        let mut feed = SyntheticFeed::new(5, rate);
        feed.next_records(Duration::ZERO); // the full states, outside the rate
        let records = steps(&mut feed, step, second + step / 2, step);
        let quotes = records.iter().filter(|r| r.channel.namespace() == "quotes");
        let count = quotes.count() as f64;
        let scores = records.iter().filter(|r| r.channel.namespace() == "scores");
        assert!(
            (count - rate).abs() <= 1.0,
            "rate {rate}, step {step:?}: {count}"
        );
        // Matches add their clocks and events on top (about 30/s).
        assert!(scores.count() <= 60, "{} records", records.len());
    }
}

#[test]
fn the_same_seed_gives_the_same_records() {
    let run = |seed| {
        let mut feed = SyntheticFeed::new(seed, 500.0);
        let records = steps(&mut feed, Duration::ZERO, Duration::from_secs(5), 10 * MS);
        records.iter().map(to_line).collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn diff_nulls_vanished_members_and_skips_equal_ones() {
    let old = serde_json::json!({"a": 1, "e": {"type": "goal", "team": "ARS", "minute": 3}});
    let new = serde_json::json!({"a": 1, "e": {"type": "half_time", "minute": 45}});
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        unreachable!()
    };
    let patch = Value::Object(diff(&old, &new));
    let expected = serde_json::json!({"e": {"type": "half_time", "minute": 45, "team": null}});
    assert_eq!(patch, expected);
    assert!(diff(&new, &new).is_empty());
}

#[tokio::test]
async fn run_publishes_until_shutdown() {
    let ring = Ring::with_capacity(1024);
    let mut consumer = ring.consumer();
    let stats = Arc::new(FeedStats::new("synthetic".into()));
    let out = FeedOutput::new(ring.producer(), stats.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(500.0, out, shutdown.clone()));
    let wanted = LISTINGS.len() + 100;
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..wanted {
            let item = consumer.recv().await.expect("ring open");
            let record = item.take().expect("an untaken record");
            assert!(record.ingest_ns > 0, "ingest time stamped");
        }
    })
    .await;
    assert!(received.is_ok(), "fewer than {wanted} records in 10 s");
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "run did not stop at shutdown"
    );
    assert!(stats.accepted() >= wanted as u64);
}

fn depth_channel(namespace: &str, quote: &Quote) -> String {
    format!(
        "{namespace}.{}",
        &quote.out.channel.as_str()["quotes.".len()..]
    )
}

/// A book rebuilt from its records, as a subscriber would.
fn book_side(book: &JsonMap, side: &str) -> Vec<(f64, f64)> {
    let mut levels: Vec<(f64, f64)> = book[side]
        .as_object()
        .expect("a side is an object")
        .iter()
        .map(|(price, size)| {
            let price: f64 = price.parse().expect("price keys are decimal strings");
            (price, size.as_f64().expect("sizes are numbers"))
        })
        .collect();
    levels.sort_by(|a, b| a.0.total_cmp(&b.0));
    levels
}

#[test]
fn books_top_out_at_the_quote_and_stay_uncrossed_and_bounded() {
    let mut feed = SyntheticFeed::new(6, 2000.0);
    let mut states: HashMap<String, JsonMap> = HashMap::new();
    let mut books_checked = 0;
    for record in steps(&mut feed, Duration::ZERO, Duration::from_secs(10), 10 * MS) {
        let name = record.channel.to_string();
        merge(states.entry(name.clone()).or_default(), &record.data);
        // A book record comes right after its quote's record.
        let Some(symbol) = name.strip_prefix("book.") else {
            continue;
        };
        let book = &states[&name];
        let quote = &states[&format!("quotes.{symbol}")];
        let (bids, asks) = (book_side(book, "bids"), book_side(book, "asks"));
        assert!(
            !bids.is_empty() && bids.len() <= depth::LEVELS,
            "{symbol}: {bids:?}"
        );
        assert!(
            !asks.is_empty() && asks.len() <= depth::LEVELS,
            "{symbol}: {asks:?}"
        );
        let best_bid = *bids.last().unwrap();
        let best_ask = asks[0];
        assert_eq!(
            best_bid,
            (
                quote["bid"].as_f64().unwrap(),
                quote["bid_size"].as_f64().unwrap()
            )
        );
        assert_eq!(
            best_ask,
            (
                quote["ask"].as_f64().unwrap(),
                quote["ask_size"].as_f64().unwrap()
            )
        );
        assert!(best_bid.0 < best_ask.0, "{symbol} crossed");
        assert!(bids.iter().chain(&asks).all(|&(p, s)| p > 0.0 && s > 0.0));
        books_checked += 1;
    }
    assert!(books_checked > 1000, "{books_checked} book records");
    for symbol in depth::DEPTH_SYMBOLS {
        assert!(states.contains_key(&format!("book.{symbol}")), "{symbol}");
    }
}

#[test]
fn every_trade_is_whole_prints_at_the_quote_and_ids_count_up() {
    let mut feed = SyntheticFeed::new(7, 2000.0);
    let mut quotes: HashMap<String, JsonMap> = HashMap::new();
    let mut last_id: HashMap<String, u64> = HashMap::new();
    let mut trades = 0;
    for record in steps(&mut feed, Duration::ZERO, Duration::from_secs(10), 10 * MS) {
        let name = record.channel.to_string();
        if let Some(symbol) = name.strip_prefix("quotes.") {
            merge(quotes.entry(symbol.to_owned()).or_default(), &record.data);
            continue;
        }
        let Some(symbol) = name.strip_prefix("trades.") else {
            continue;
        };
        let trade = &record.data;
        let keys: Vec<&str> = trade.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{trade:?}");
        let id = trade["id"].as_u64().expect("id");
        assert_eq!(
            id,
            last_id.get(symbol).map_or(1, |last| last + 1),
            "{symbol}"
        );
        last_id.insert(symbol.to_owned(), id);
        // The quote's record came first; the trade printed at its `last`.
        let quote = &quotes[symbol];
        assert_eq!(
            trade["price"], quote["last"],
            "{symbol}: {trade:?} {quote:?}"
        );
        let side = trade["side"].as_str().expect("side");
        let at = if side == "buy" { "ask" } else { "bid" };
        assert!(
            id == 1 || trade["price"] == quote[at],
            "{side} at the {at}: {trade:?} {quote:?}"
        );
        assert!(trade["size"].as_f64().unwrap() > 0.0);
        trades += 1;
    }
    assert!(trades > 100, "{trades} trades");
    assert_eq!(last_id.len(), depth::DEPTH_SYMBOLS.len());
}
