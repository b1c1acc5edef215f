//! The live page in a real browser: headless Chromium loads `/`, connects
//! to the WebSocket and renders quotes and scores that keep changing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Finds a Chromium binary: `$CHROMIUM`, then the usual names.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return name.to_owned();
        }
    }
    panic!("this test needs Chromium: `apt-get install chromium` (scripts/test.sh installs it), or set CHROMIUM=/path");
}

/// Loads `url` headless and returns the DOM after `budget_ms` of page time.
async fn dump_dom(url: &str, budget_ms: u32) -> String {
    let profile = std::env::temp_dir().join(format!("tickcast-chromium-{}", std::process::id()));
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_quotes_and_scores_changing() {
    let server = start_server(&["synthetic"], |_| {}).await;
    let dom = dump_dom(&format!("http://{}/", server.addr), 3000).await;
    let quote_rows = dom.matches("id=\"row-quotes.").count();
    assert!(
        quote_rows >= 40,
        "expected about 50 quote rows, found {quote_rows}:\n{dom}"
    );
    let matches = dom.matches("id=\"match-scores.").count();
    assert_eq!(matches, 4, "four matches shown");
    assert!(dom.contains("class=\"live\""), "the status says live");
    let updates: u64 = dom
        .split("data-updates=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the page reports how many updates it applied");
    assert!(
        updates > 0,
        "the page applied live updates after the snapshots"
    );
    server.shutdown().await;
}
