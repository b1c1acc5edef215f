//! `--feed stdin`: the real `tickcast` binary fed records through a pipe.
//! A bad line is rejected with its line number while the lines around it
//! go through; the end of the input finishes the feed, and the server goes
//! on serving its channels with `/healthz` ok.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn stdin_feed(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/stats").await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    stats["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "stdin")
        .expect("the stdin feed is listed in /stats")
        .clone()
}

#[tokio::test]
async fn piped_records_are_served_a_bad_line_is_rejected_by_number_and_eof_finishes() {
    let addr = free_port();
    let mut child = tickcast_binary(addr)
        .args(["--feed", "stdin", "--engine-shards", "1"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tickcast binary starts");
    // The log goes to stdout: keep it to find the rejection in.
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = kept.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    wait_healthy(addr).await;

    let mut input = child.stdin.take().unwrap();
    input
        .write_all(
            b"{\"channel\":\"quotes.PIPE\",\"data\":{\"bid\":1,\"ask\":2}}\n\
              {\"channel\":\"quotes.PIPE\",\"data\":{\"bid\":\n\
              {\"channel\":\"quotes.PIPE\",\"data\":{\"bid\":1.5}}\n",
        )
        .await
        .unwrap();
    input.flush().await.unwrap();
    let snapshot: Value = wait_for(
        || async move {
            let (status, body) = http_get(addr, "/channels/quotes.PIPE").await;
            let snapshot: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && snapshot["seq"] == 2).then_some(snapshot)
        },
        "both good lines applied to quotes.PIPE",
    )
    .await;
    assert_eq!(snapshot["data"], json!({"bid":1.5,"ask":2}));
    wait_for(
        || {
            let log = log.clone();
            async move {
                let log = log.lock().unwrap();
                log.contains("rejected line 2: invalid_json").then_some(())
            }
        },
        "the log to name line 2 as rejected",
    )
    .await;
    let feed = stdin_feed(addr).await;
    assert_eq!(feed["status"], "running");
    assert_eq!(feed["accepted"], 2);
    assert_eq!(feed["rejected"]["invalid_json"], 1);

    // End of input: the feed is finished, the server serves on.
    drop(input);
    wait_for(
        || async move { (stdin_feed(addr).await["status"] == "finished").then_some(()) },
        "the stdin feed to finish at the end of its input",
    )
    .await;
    assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = http_get(addr, "/channels/quotes.PIPE").await;
    assert_eq!(status, 200);
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after["data"], snapshot["data"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server keeps running"
    );
    child.kill().await.unwrap();
}

/// One standard input cannot feed two readers: start-up says so instead of
/// splitting the lines between them.
#[tokio::test]
async fn stdin_given_twice_is_refused_at_start_up() {
    let settings = tickcast::config::Settings {
        feeds: vec![tickcast::feed::FeedSpec::Stdin; 2],
        ..tickcast::config::Settings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tickcast::start(
        listener,
        settings,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .err()
    .expect("two stdin feeds are refused");
    assert!(refused.to_string().contains("more than once"), "{refused}");
}
