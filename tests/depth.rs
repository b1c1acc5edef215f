//! Deeply nested JSON cannot take the server down: a client message or feed
//! line nested past `limits.max_json_depth` is refused before anything
//! parses it, the connection or feed goes on, and so does the server.
//! Without the depth check each of these tests overflows a stack and aborts
//! the whole test process.

mod common;

use common::*;
use serde_json::json;
use tickcast::record::RejectReason;

/// `{"op":"ping","id":ID,"x":[[...]]}`, `depth` levels deep in all.
fn ping_nested(id: i64, depth: usize) -> String {
    let inner = depth - 1;
    format!(
        r#"{{"op":"ping","id":{id},"x":{}{}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
}

/// A feed record whose line is `depth` levels deep in all.
fn record_nested(channel: &str, depth: usize) -> String {
    let inner = depth - 2;
    format!(
        r#"{{"channel":"{channel}","data":{{"x":{}{}}}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
}

#[tokio::test]
async fn a_too_deep_message_gets_bad_request_and_the_connection_lives() {
    let server = start_server(&[], |s| {
        s.limits.max_message_bytes = 4 << 20;
        s.limits.max_json_depth = 16;
    })
    .await;
    let mut client = Client::connect(server.addr).await;

    // Exactly at the configured limit is fine.
    client.send_text(&ping_nested(1, 16)).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":1}));

    // One level more, and a million more (2 MB of brackets), are refused.
    for depth in [17, 1_000_000] {
        client.send_text(&ping_nested(2, depth)).await;
        let reply = client.recv().await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{reply}"
        );
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains("16 levels") && message.contains("limits.max_json_depth"),
            "{message}"
        );
    }

    // The same connection still works, and so does the server.
    client.send(json!({"op":"ping","id":3})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":3}));
    let mut other = Client::connect(server.addr).await;
    other.send(json!({"op":"ping","id":4})).await;
    assert_eq!(other.recv().await, json!({"type":"pong","id":4}));
    server.shutdown().await;
}

#[tokio::test]
async fn a_too_deep_feed_line_is_rejected_by_number_and_the_next_applied() {
    let (server, feed) = start_with_tcp_feed(|s| s.limits.max_json_depth = 16).await;
    let mut producer = Producer::connect(feed).await;
    producer.send_line(&record_nested("t.a", 16)).await;
    producer.send_line(&record_nested("t.a", 17)).await;
    // Valid JSON 500,000 levels deep: 1,000,000 brackets, within the 1 MiB
    // line limit.
    let deep = record_nested("t.a", 500_000);
    assert!(deep.len() < 1 << 20);
    producer.send_line(&deep).await;
    producer.publish("t.a", json!({"n": 2})).await;

    let engine = server.engine.clone();
    let state = wait_for(
        || {
            let engine = engine.clone();
            async move { engine.snapshot("t.a").await.unwrap().filter(|s| s.seq == 2) }
        },
        "the line after the deep ones to be applied",
    )
    .await;
    let mut want = json!({"n": 2, "x": null});
    want["x"] = serde_json::from_str(&format!("{}{}", "[".repeat(14), "]".repeat(14))).unwrap();
    assert_eq!(serde_json::Value::Object(state.data), want);

    let rejected: Vec<(u64, RejectReason, String)> = server.feeds[0]
        .recent_rejections()
        .into_iter()
        .map(|r| (r.line, r.reason, r.detail))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for ((line, reason, detail), want_line) in rejected.iter().zip([2, 3]) {
        assert_eq!((*line, *reason), (want_line, RejectReason::InvalidJson));
        assert!(
            detail.contains("nested deeper than limits.max_json_depth (16)"),
            "{detail}"
        );
    }
    assert_eq!(server.feeds[0].rejected(RejectReason::InvalidJson), 2);
    server.shutdown().await;
}
