//! What the pages show, read from the DOM, and what the server holds, read
//! over HTTP; the fixture replay they are compared on.

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::common::{http_get, tickcast_binary, wait_healthy, DEADLINE};
use crate::devtools::{Page, Poll};

/// the trades, the status and counters.
pub const SHOWN: &str = r#"JSON.stringify((() => {
  const rows = {};
  for (const row of document.querySelectorAll('#quotes tr[id^="row-quotes."]')) {
    const cells = { seq: row.children[7].textContent };
    for (const td of row.querySelectorAll('td[data-field]')) cells[td.dataset.field] = td.textContent;
    rows[row.id.slice(4)] = cells;
  }
  const ladder = { asks: [], bids: [] };
  for (const tr of document.querySelectorAll('#ladder tr.ask, #ladder tr.bid')) {
    ladder[tr.classList.contains('ask') ? 'asks' : 'bids'].push([tr.dataset.price, tr.querySelector('td.size span').textContent]);
  }
  const trades = [...document.querySelectorAll('#trades tr[data-id]')].map(tr =>
    ({ id: tr.dataset.id, price: tr.children[1].textContent, size: tr.children[2].textContent, side: tr.children[3].textContent }));
  const matches = document.querySelectorAll('[id^="match-scores."]').length;
  return { rows, ladder, trades, matches, search: location.search,
    status: document.getElementById('status').dataset.state,
    latency: document.getElementById('latency').textContent, rate: document.getElementById('rate').textContent,
    connects: Number(document.body.dataset.connects || 0),
    updates: Number(document.body.dataset.updates || 0) };
})())"#;

/// Levels the ladder shows a side (web/app.js `LADDER_LEVELS`).
pub const LADDER_LEVELS: usize = 10;

/// A shown number equals the server's value.
pub fn same_number(shown: &Value, server: &Value) -> bool {
    match (
        shown.as_str().and_then(|s| s.parse::<f64>().ok()),
        server.as_f64(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The server's state of `channel` over HTTP: (seq, data).
pub async fn server_state(addr: SocketAddr, channel: &str) -> Option<(u64, Value)> {
    let (status, body) = http_get(addr, &format!("/channels/{channel}")).await;
    if status != 200 {
        return None;
    }
    let snapshot: Value = serde_json::from_str(&body).unwrap();
    Some((snapshot["seq"].as_u64()?, snapshot["data"].clone()))
}

/// Whether the quote row of `symbol` shows the server's state and seq.
pub async fn quote_row_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((seq, data)) = server_state(addr, &format!("quotes.{symbol}")).await else {
        return false;
    };
    let row = &shown["rows"][format!("quotes.{symbol}")];
    row["seq"] == json!(seq.to_string())
        && ["bid", "ask", "bid_size", "ask_size"]
            .iter()
            .all(|f| same_number(&row[*f], &data[*f]))
}

/// The best `LADDER_LEVELS` levels a side of a book state, best first:
/// (price key, size).
pub fn best_levels(side: &Value, ascending: bool) -> Vec<(String, f64)> {
    let mut levels: Vec<(String, f64)> = side
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(p, s)| Some((p.clone(), s.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    levels.sort_by(|a, b| {
        let (x, y) = (a.0.parse::<f64>().unwrap(), b.0.parse::<f64>().unwrap());
        if ascending {
            x.total_cmp(&y)
        } else {
            y.total_cmp(&x)
        }
    });
    levels.truncate(LADDER_LEVELS);
    levels
}

/// Whether the ladder shows the server's book of `symbol`, level by level.
pub async fn ladder_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((_, book)) = server_state(addr, &format!("book.{symbol}")).await else {
        return false;
    };
    let side = |name: &str, best_first_is_last: bool| -> Vec<(String, Value)> {
        let mut rows: Vec<(String, Value)> = shown["ladder"][name]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| (r[0].as_str().unwrap_or("").to_owned(), r[1].clone()))
                    .collect()
            })
            .unwrap_or_default();
        if best_first_is_last {
            rows.reverse();
        }
        rows
    };
    let same = |shown: Vec<(String, Value)>, server: Vec<(String, f64)>| {
        shown.len() == server.len()
            && shown
                .iter()
                .zip(&server)
                .all(|((p, s), (q, t))| p == q && same_number(s, &json!(t)))
    };
    // Asks are drawn best (lowest) at the bottom, bids best at the top.
    same(side("asks", true), best_levels(&book["asks"], true))
        && same(side("bids", false), best_levels(&book["bids"], false))
        && !book["bids"].as_object().is_none_or(|m| m.is_empty())
}

/// Whether the newest trade shown is the server's trades.<symbol> state.
pub async fn last_trade_matches(addr: SocketAddr, shown: &Value, symbol: &str) -> bool {
    let Some((_, trade)) = server_state(addr, &format!("trades.{symbol}")).await else {
        return false;
    };
    let first = &shown["trades"][0];
    first["id"] == json!(trade["id"].to_string())
        && same_number(&first["price"], &trade["price"])
        && same_number(&first["size"], &trade["size"])
        && first["side"] == trade["side"]
}

/// `/stats` of the server at `addr`.
pub async fn stats(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// POST one feed record (loopback needs no key).
pub async fn publish(addr: SocketAddr, record: &Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = record.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("publish answered")
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

/// The fixture replay (tests/fixtures/browser/README.md).
pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/browser/binance-btcusdt-ethusdt-2024-08-08.ndjson"
);

/// The real binary on `addr`, replaying the fixture at a quarter of its
/// pace (about 3.4 s), with a short restart spread so the page comes back
/// quickly; returns once it answers `/healthz`.
pub async fn start_replay(addr: SocketAddr, config: &std::path::Path) -> tokio::process::Child {
    let child = tickcast_binary(addr)
        .args(["--feed", &format!("replay:{FIXTURE}"), "--speed", "0.25"])
        .args(["--config".as_ref(), config.as_os_str()])
        .spawn()
        .expect("the tickcast binary starts");
    wait_healthy(addr).await;
    child
}

/// Waits until the replay has played every record.
pub async fn replay_finished(addr: SocketAddr) {
    let mut poll = Poll::new("the fixture replay to finish");
    loop {
        let feeds = stats(addr).await["feeds"].clone();
        let replay = feeds
            .as_array()
            .and_then(|f| {
                f.iter()
                    .find(|f| f["name"].as_str().is_some_and(|n| n.starts_with("replay")))
            })
            .cloned()
            .unwrap_or_default();
        if replay["status"] == "finished" {
            assert_eq!(replay["accepted"], 600, "every fixture record taken");
            return;
        }
        poll.tick(&replay).await;
    }
}

/// Waits until the page shows the server's quotes for both symbols, and
/// the ladder and last trade of `selected` (if given).
pub async fn page_matches_server(
    page: &mut Page,
    addr: SocketAddr,
    selected: Option<&str>,
    what: &'static str,
) -> Value {
    let mut poll = Poll::new(what);
    loop {
        let shown = page.probe(SHOWN).await;
        let mut ok = shown["status"] == "open";
        for symbol in ["BTCUSDT", "ETHUSDT"] {
            ok = ok && quote_row_matches(addr, &shown, symbol).await;
        }
        if let Some(symbol) = selected {
            ok = ok && last_trade_matches(addr, &shown, symbol).await;
        }
        if selected == Some("BTCUSDT") {
            ok = ok && ladder_matches(addr, &shown, "BTCUSDT").await;
        }
        if ok {
            return shown;
        }
        poll.tick(&format!("{shown} (page errors {:?})", page.errors))
            .await;
    }
}
