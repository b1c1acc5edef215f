//! Feeds through the whole server: replay and tcp records end in exactly the
//! expected channel states, bad lines are rejected by number and reason, and
//! the lines around them go through.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use tickcast::feed::{FeedStatus, Speed};
use tickcast::record::RejectReason;
use tickcast::RunningServer;

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    path.display().to_string()
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

async fn replay_to_the_end(file: &str) -> RunningServer {
    let spec = format!("replay:{}", fixture(file));
    let server = start_server(&[&spec], |s| s.replay.speed = Speed::Max).await;
    let stats = server.feeds[0].clone();
    wait_for(
        || {
            let stats = stats.clone();
            async move { (stats.status() == FeedStatus::Finished).then_some(()) }
        },
        "replay finished",
    )
    .await;
    server
}

/// Waits until the engine has applied `total` records, then returns every
/// channel's (seq, state).
async fn engine_states(server: &RunningServer, total: u64) -> Vec<(String, u64, Value)> {
    let engine = server.engine.clone();
    let list = wait_for(
        || {
            let engine = engine.clone();
            async move {
                let list = engine.channel_list().await.unwrap();
                (list.iter().map(|c| c.seq).sum::<u64>() == total).then_some(list)
            }
        },
        "every record applied",
    )
    .await;
    let mut out = Vec::new();
    for info in list {
        let snapshot = server.engine.snapshot(&info.name).await.unwrap().unwrap();
        out.push((info.name, snapshot.seq, Value::Object(snapshot.data)));
    }
    out
}

#[tokio::test]
async fn replaying_a_recorded_feed_gives_exactly_the_expected_states() {
    let expect = load("replay-mixed.expect.json");
    let channels = expect["channels"].as_object().unwrap();
    let total: u64 = channels.values().map(|c| c["seq"].as_u64().unwrap()).sum();
    let server = replay_to_the_end("replay-mixed.ndjson").await;
    let states = engine_states(&server, total).await;
    assert_eq!(states.len(), channels.len());
    for (name, seq, state) in states {
        let want = &channels[&name];
        assert_eq!(Some(seq), want["seq"].as_u64(), "seq of {name}");
        assert_eq!(state, want["state"], "state of {name}");
    }
    assert_eq!(server.feeds[0].rejected_total(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_dirty_feed_rejects_exactly_the_expected_lines() {
    let expect = load("dirty-sample.expect.json");
    let server = replay_to_the_end("dirty-sample.ndjson").await;
    let stats = &server.feeds[0];
    assert_eq!(Some(stats.accepted()), expect["accepted_count"].as_u64());
    for reason in RejectReason::ALL {
        let want = expect["rejected_by_reason"][reason.as_str()]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(stats.rejected(reason), want, "rejections for {reason}");
    }
    // The recent-rejection log keeps line numbers and reasons.
    let kept: Vec<(u64, String)> = stats
        .recent_rejections()
        .iter()
        .map(|r| (r.line, r.reason.as_str().to_owned()))
        .collect();
    let listed: Vec<(u64, String)> = expect["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(kept, listed);
    // The accepted lines around the bad ones all went through.
    let channels = expect["channels"].as_object().unwrap();
    let total: u64 = channels
        .values()
        .map(|c| c["updates"].as_u64().unwrap())
        .sum();
    let states = engine_states(&server, total).await;
    for (name, seq, state) in states {
        assert_eq!(
            Some(seq),
            channels[&name]["updates"].as_u64(),
            "seq of {name}"
        );
        assert_eq!(state, channels[&name]["state"], "state of {name}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_producers_bad_lines_are_rejected_and_the_rest_go_through() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut client = Client::connect(server.addr).await;
    client.subscribe(1, &["t.>"]).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("t.a", json!({"n": 1})).await;
    producer.send_line("{\"channel\":\"t.a\",\"data\":").await;
    producer
        .send_line("{\"channel\":\"t.*\",\"data\":{}}")
        .await;
    producer.send_line("").await;
    producer.publish("t.a", json!({"n": 2})).await;

    let first = client.recv().await;
    assert_eq!(
        (first["type"].as_str(), first["data"].clone()),
        (Some("snapshot"), json!({"n": 1}))
    );
    let second = client.recv().await;
    assert_eq!(
        (
            second["seq"].as_u64(),
            second["prev"].as_u64(),
            second["data"].clone()
        ),
        (Some(2), Some(1), json!({"n": 2}))
    );
    let rejected: Vec<(u64, RejectReason)> = server.feeds[0]
        .recent_rejections()
        .iter()
        .map(|r| (r.line, r.reason))
        .collect();
    assert_eq!(
        rejected,
        [
            (2, RejectReason::InvalidJson),
            (3, RejectReason::BadChannel)
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_replay_file_stops_start_up_with_a_clear_error() {
    let err = start_up_error("replay:/no/such/file.ndjson").await;
    assert!(err.contains("/no/such/file.ndjson"), "{err}");
}

/// Starts a server with one feed, expecting start-up to fail; its message.
async fn start_up_error(feed: &str) -> String {
    let settings = tickcast::config::Settings {
        feeds: vec![feed.parse().unwrap()],
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tickcast::start(listener, settings, Default::default())
        .await
        .err()
        .expect("start-up fails")
        .to_string()
}

#[tokio::test]
async fn a_tcp_feed_on_a_busy_port_stops_start_up_naming_the_port() {
    let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = start_up_error(&format!("tcp:127.0.0.1:{port}")).await;
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("free port"), "says what to do: {err}");
}

/// A feed that fails after start-up (here: a "file" that is a directory, so
/// the first read fails) turns /healthz to 503 naming it.
#[tokio::test]
async fn a_failed_feed_makes_healthz_not_ready() {
    let dir = std::env::temp_dir();
    let spec = format!("replay:{}", dir.display());
    let server = start_server(&["synthetic", &spec], |_| {}).await;
    let body = wait_for(
        || async {
            let (status, body) = http_get(server.addr, "/healthz").await;
            (status == 503).then_some(body)
        },
        "healthz reports the failed feed",
    )
    .await;
    assert!(body.contains(&spec), "{body}");
    server.shutdown().await;
}
