//! The browser side in a real browser: headless Chromium loads `/` (which
//! talks to the server only through `/tickcast.js`) and `/dashboard`, and
//! what they show is compared with what the server holds
//! (`/channels/<name>`), before and after the server restarts.
//!
//! The test drives Chromium over the DevTools protocol (a WebSocket, spoken
//! with the same client the other tests use) and polls the page's DOM until
//! the condition holds or the deadline passes: no fixed waits, no virtual
//! time (which stalls while a page keeps streaming).

mod common;
#[path = "browser/devtools.rs"]
mod devtools;
#[path = "browser/shown.rs"]
mod shown;

use std::path::PathBuf;

use common::*;
use devtools::*;
use serde_json::{json, Value};
use shown::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_servers_states_and_resyncs_after_a_restart() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let config = tmp.join(format!("browser-{}.toml", std::process::id()));
    std::fs::write(&config, "[limits]\nshutdown_reconnect_spread_ms = 300\n").unwrap();
    let addr = free_port();
    let mut server = start_replay(addr, &config).await;
    let profile = tmp.join(format!("chromium-replay-{}", std::process::id()));
    let (mut chromium, mut page) =
        open(&format!("http://{addr}/?symbols=BTCUSDT,ETHUSDT"), &profile).await;

    // The first row to show is selected by itself; pick ETHUSDT (no book),
    // then BTCUSDT, as a user clicks rows.
    replay_finished(addr).await;
    page_matches_server(
        &mut page,
        addr,
        None,
        "the page to show the replayed states",
    )
    .await;
    page.eval("document.getElementById('row-quotes.ETHUSDT').click()")
        .await;
    let shown = page_matches_server(&mut page, addr, Some("ETHUSDT"), "ETHUSDT's trades").await;
    assert_eq!(
        shown["ladder"],
        json!({"asks": [], "bids": []}),
        "ETHUSDT has no book"
    );
    assert!(
        shown["search"]
            .as_str()
            .unwrap()
            .contains("symbols=BTCUSDT,ETHUSDT")
            && shown["search"].as_str().unwrap().contains("sym=ETHUSDT"),
        "filter and selection are kept in the URL: {shown}"
    );
    page.eval("document.getElementById('row-quotes.BTCUSDT').click()")
        .await;
    // At most 2 updates/s per channel from now on, resumed with it too.
    page.eval("const s = document.getElementById('maxhz'); s.value = '2'; s.dispatchEvent(new Event('change'))")
        .await;
    let shown =
        page_matches_server(&mut page, addr, Some("BTCUSDT"), "BTCUSDT's book ladder").await;
    assert_eq!(
        shown["ladder"]["bids"].as_array().unwrap().len(),
        LADDER_LEVELS
    );
    assert!(
        shown["search"].as_str().unwrap().contains("hz=2"),
        "max_hz in the URL: {shown}"
    );
    assert_eq!(shown["connects"], 1);
    page.screenshot("ticker-replay-desktop.png").await;

    // Restart on the same port: SIGTERM (close 1001 with a reconnect hint),
    // then a new process, a new epoch and seqs from 1 again.
    let epoch_before = stats(addr).await["epoch"].clone();
    let pid = server.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::time::timeout(BROWSER_DEADLINE, server.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(status)) if status.success()),
        "{exited:?}"
    );
    let mut server = start_replay(addr, &config).await;
    assert_ne!(stats(addr).await["epoch"], epoch_before, "a new epoch");
    replay_finished(addr).await;
    // Something the first run never had, so only a resync can show it.
    let (_, book) = server_state(addr, "book.BTCUSDT").await.expect("the book");
    let best_bid = best_levels(&book["bids"], false)[0].0.clone();
    publish(
        addr,
        &json!({"channel": "quotes.BTCUSDT", "data": {"bid_size": 12.345}}),
    )
    .await;
    publish(
        addr,
        &json!({"channel": "book.BTCUSDT", "data": {"bids": {best_bid.as_str(): 12.345}}}),
    )
    .await;
    publish(addr, &json!({"channel": "trades.BTCUSDT", "data": {"id": 1, "price": 61000.5, "size": 0.5, "side": "buy"}})).await;
    let shown = page_matches_server(
        &mut page,
        addr,
        Some("BTCUSDT"),
        "the page to resync after the restart",
    )
    .await;
    assert_eq!(shown["connects"], 2, "reconnected once: {shown}");
    assert_eq!(shown["rows"]["quotes.BTCUSDT"]["bid_size"], "12.345");

    // The dashboard: its charts fill from /stats and /metrics.
    page.navigate(&format!("http://{addr}/dashboard")).await;
    let mut poll = Poll::new("the dashboard charts to receive data");
    let probe = r#"JSON.stringify(Object.fromEntries([...document.querySelectorAll('canvas[id^="chart-"]')]
        .map(c => [c.id.slice(6), { points: Number(c.dataset.points), last: JSON.parse(c.dataset.last || 'null') }])
        .concat([['feeds', [...document.querySelectorAll('#feeds tr')].map(r => [...r.children].map(td => td.textContent))]])))"#;
    let mut bid = 0.0;
    let charts = loop {
        // Records keep arriving, so rates and latencies move.
        bid += 0.01;
        publish(
            addr,
            &json!({"channel": "quotes.BTCUSDT", "data": {"bid": 61000.0 + bid}}),
        )
        .await;
        let charts = page.probe(probe).await;
        let filled = charts.as_object().is_some_and(|c| {
            c.len() == 11
                && c.iter()
                    .filter(|(name, _)| *name != "feeds")
                    .all(|(_, c)| c["points"].as_u64() >= Some(3))
        });
        let moving = charts["throughput"]["last"][0]
            .as_f64()
            .is_some_and(|v| v > 0.0)
            && charts["latency-ring_to_engine"]["last"][0]
                .as_f64()
                .is_some();
        if filled && moving {
            break charts;
        }
        poll.tick(&format!("{charts} (page errors {:?})", page.errors))
            .await;
    };
    assert!(
        charts["sessions"]["last"][0].is_u64(),
        "connections charted: {charts}"
    );
    // The feeds table: the replay (finished, 600 records) and the publish API.
    let feeds = charts["feeds"].as_array().unwrap();
    let replay_row = |row: &Value| {
        row[0].as_str().unwrap_or("").starts_with("replay:")
            && row[1] == "finished"
            && row[2] == "600"
    };
    assert!(feeds.iter().any(replay_row), "{charts}");
    page.screenshot("dashboard-desktop.png").await;
    page.viewport(390, 844, true).await;
    page.screenshot("dashboard-phone.png").await;

    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = chromium.kill().await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_quotes_scores_a_book_and_trades_changing() {
    let server = start_server(&["synthetic"], |_| {}).await;
    let addr = server.addr;
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-demo-{}", std::process::id()));
    let (mut child, mut page) = open(&format!("http://{addr}/?sym=BTC-USD"), &profile).await;

    let mut poll = Poll::new("live quotes, scores, the BTC-USD book and its trades");
    let mut first_updates = None;
    let seen = loop {
        let shown = page.probe(SHOWN).await;
        let updates = shown["updates"].as_u64().unwrap_or(0);
        let rows = shown["rows"].as_object().map_or(0, |r| r.len());
        let ready = rows >= 40
            && shown["matches"] == 4
            && shown["status"] == "open"
            && shown["ladder"]["asks"].as_array().map_or(0, Vec::len) == LADDER_LEVELS
            && shown["ladder"]["bids"].as_array().map_or(0, Vec::len) == LADDER_LEVELS
            && !shown["trades"].as_array().is_none_or(Vec::is_empty);
        if ready {
            // Two readings apart in time: the count must keep growing.
            match first_updates {
                None => first_updates = Some(updates),
                Some(first) if updates > first => break shown,
                Some(_) => {}
            }
        }
        poll.tick(&format!("{shown} (page errors {:?})", page.errors))
            .await;
    };
    let rows = seen["rows"].as_object().unwrap().len();
    assert!(rows <= 60, "about 50 quotes: {rows}");
    // The ladder is a book: asks above bids, best ask over best bid.
    let price = |side: &str, i: usize| {
        seen["ladder"][side][i][0]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert!(
        price("asks", LADDER_LEVELS - 1) > price("bids", 0),
        "{seen}"
    );
    // The status bar counts updates per second and measures latency.
    let mut poll = Poll::new("the status bar to show updates/s and latency");
    loop {
        let shown = page.probe(SHOWN).await;
        let rate = shown["rate"].as_str().unwrap_or("");
        let latency = shown["latency"].as_str().unwrap_or("");
        let per_sec = rate
            .strip_suffix(" upd/s")
            .and_then(|n| n.parse::<u64>().ok());
        if per_sec.is_some_and(|n| n > 0)
            && latency.starts_with("latency ")
            && latency.ends_with(" ms")
        {
            eprintln!("demo page status bar: {rate}, {latency}");
            break;
        }
        poll.tick(&shown).await;
    }
    // Chromium offers permessage-deflate and the server agrees to it by
    // default, so the values above came through compressed frames (quote
    // updates are over `compression.min_bytes`). A socket opened the same
    // way shows what was agreed.
    let agreed = page
        .page(
            "Runtime.evaluate",
            json!({
                "expression": "new Promise((ok, fail) => { \
                    const ws = new WebSocket(`ws://${location.host}/ws`); \
                    ws.onopen = () => { ok(ws.extensions); ws.close(); }; \
                    ws.onerror = () => fail('no connection'); })",
                "awaitPromise": true,
                "returnByValue": true,
            }),
        )
        .await;
    assert_eq!(
        agreed["result"]["value"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "{agreed}"
    );
    page.screenshot("ticker-demo-desktop.png").await;
    // A phone, in the other theme.
    page.viewport(390, 844, true).await;
    page.eval("document.getElementById('theme').click()").await;
    page.screenshot("ticker-demo-phone.png").await;

    // The filter box narrows the quotes to the symbols typed, kept in the URL.
    page.eval("const f = document.getElementById('filter'); f.value = 'aapl, BTC-USD'; f.dispatchEvent(new Event('change'))")
        .await;
    let mut poll = Poll::new("the filter to leave AAPL and BTC-USD");
    loop {
        let shown = page.probe(SHOWN).await;
        let mut rows: Vec<&String> = shown["rows"]
            .as_object()
            .map(|r| r.keys().collect())
            .unwrap_or_default();
        rows.sort();
        if rows == ["quotes.AAPL", "quotes.BTC-USD"]
            && shown["search"]
                .as_str()
                .is_some_and(|s| s.contains("symbols=AAPL,BTC-USD"))
        {
            break;
        }
        poll.tick(&shown).await;
    }

    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    server.shutdown().await;
}

/// The page docs/client.md tells people to copy, as written there.
fn docs_example() -> String {
    let doc = include_str!("../docs/client.md");
    let start = doc
        .find("```html\n")
        .expect("docs/client.md has an html example")
        + 8;
    let len = doc[start..].find("```").expect("the example ends");
    doc[start..start + len].to_owned()
}

/// Serves `page` to every request on `listener` (a site other than
/// tickcast), until the test ends.
fn serve_page(listener: tokio::net::TcpListener, page: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = tokio::time::timeout(DEADLINE, stream.read(&mut head)).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_example_page_works_from_another_site() {
    // The example's site, on its own port: a different origin.
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_addr = site.local_addr().unwrap();
    let (addr, feed) = (free_port(), free_port());
    let mut server = tickcast_binary(addr)
        .args(["--feed", &format!("tcp:{feed}")])
        .args(["--allowed-origin", &format!("http://{site_addr}")])
        .spawn()
        .expect("the tickcast binary starts");
    wait_healthy(addr).await;
    let example = docs_example().replace("127.0.0.1:8080", &addr.to_string());
    assert!(example.contains(&format!("ws://{addr}/ws")), "{example}");
    serve_page(site, example);
    let mut producer = wait_for(
        || async move { tokio::net::TcpStream::connect(feed).await.ok() },
        "the tcp feed to take connections",
    )
    .await;

    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-example-{}", std::process::id()));
    let (mut chromium, mut page) = open(&format!("http://{site_addr}/"), &profile).await;
    let probe = "JSON.stringify({status: document.getElementById('status').textContent, \
                 bid: document.getElementById('bid').textContent, ask: document.getElementById('ask').textContent})";
    for (bid, ask) in [(101.25, 101.5), (101.5, 101.75)] {
        let line = json!({"channel": "quotes.AAPL", "data": {"bid": bid, "ask": ask, "volume": 7}});
        tokio::io::AsyncWriteExt::write_all(&mut producer, format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut poll = Poll::new("the docs example to show the published quote");
        loop {
            let shown = page.probe(probe).await;
            if shown == json!({"status": "open", "bid": bid.to_string(), "ask": ask.to_string()}) {
                break;
            }
            poll.tick(&format!("{shown} (page errors {:?})", page.errors))
                .await;
        }
    }
    assert!(page.errors.is_empty(), "page errors: {:?}", page.errors);
    let _ = chromium.kill().await;
    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}
