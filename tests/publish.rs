//! `POST /publish` over real sockets: records reach subscribers and
//! `/channels`, bad lines are answered by number while the good ones go
//! through, the publish key guards it (loopback only without one), and a
//! body over `limits.max_publish_body_bytes` is refused whole with 413.
//!
//! A full ring (503) needs an engine that stops reading, which a running
//! server never does on cue: that answer is tested in
//! `http::publish::tests` with a real ring whose consumer does not read.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use tickcast::auth::PublishKey;
use tickcast::http::client_ip::TrustedProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "a-publish-key-of-some-length";

/// One HTTP/1.1 request; returns (status, head, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} /publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413, 401) without reading all of it.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("response within deadline");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn publish(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let (status, _, body) = request(addr, "POST", headers, body.as_bytes()).await;
    let answer = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, answer)
}

async fn channel(addr: SocketAddr, name: &str) -> Option<Value> {
    let (status, body) = http_get(addr, &format!("/channels/{name}")).await;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn records_reach_subscribers_and_bad_lines_are_answered_by_number() {
    let server = start_server(&[], |_| {}).await;
    let addr = server.addr;
    let mut client = Client::connect(addr).await;
    client.subscribe(1, &["quotes.>"]).await;

    let body = "{\"channel\":\"quotes.HTTP\",\"data\":{\"bid\":1,\"ask\":2}}\n\
                {\"channel\":\"quotes.HTTP\",\"data\":{\"bid\":\n\
                \n\
                {\"channel\":\"quotes.*\",\"data\":{}}\n\
                {\"channel\":\"quotes.HTTP\",\"data\":{\"bid\":1.5}}\n";
    let (status, answer) = publish(addr, &[], body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2);
    let rejected = answer["rejected"].as_array().unwrap();
    let lines: Vec<&Value> = rejected.iter().map(|r| &r["line"]).collect();
    assert_eq!(lines, [&json!(2), &json!(4)]);
    assert!(rejected[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid_json"));
    assert!(rejected[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("bad_channel"));

    // The subscriber sees the channel appear and both updates.
    let mut follower = Follower::default();
    while follower
        .channels
        .get("quotes.HTTP")
        .is_none_or(|(seq, _)| *seq < 2)
    {
        follower.apply(&client.recv().await);
    }
    assert_eq!(
        follower.channels["quotes.HTTP"].1,
        json!({"bid":1.5,"ask":2})
    );
    let snapshot = channel(addr, "quotes.HTTP").await.expect("the channel");
    assert_eq!(snapshot["seq"], 2);
    assert_eq!(snapshot["data"], json!({"bid":1.5,"ask":2}));

    // Counted as the feed `http`, like any feed's lines.
    let (_, stats) = http_get(addr, "/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let http = stats["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "http")
        .expect("the http feed in /stats");
    assert_eq!(http["accepted"], 2);
    assert_eq!(http["status"], "running");
    let (_, metrics) = http_get(addr, "/metrics").await;
    for line in [
        "tickcast_feed_records_total{feed=\"http\",result=\"accepted\"} 2",
        "tickcast_feed_records_total{feed=\"http\",result=\"rejected\",reason=\"invalid_json\"} 1",
        "tickcast_feed_records_total{feed=\"http\",result=\"rejected\",reason=\"bad_channel\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }

    // One record alone, no trailing newline; a body of bad lines only is 400.
    let (status, answer) = publish(
        addr,
        &[],
        "{\"channel\":\"quotes.HTTP\",\"data\":{\"ask\":3}}",
    )
    .await;
    assert_eq!((status, answer), (200, json!({"accepted":1,"rejected":[]})));
    let (status, answer) = publish(addr, &[], "nope\n").await;
    assert_eq!(status, 400);
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejected"][0]["line"], 1);
    // Only POST publishes.
    let (status, head, _) = request(addr, "GET", &[], b"").await;
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");
    server.shutdown().await;
}

#[tokio::test]
async fn with_a_key_only_its_bearer_publishes() {
    let server = start_server(&[], |s| {
        s.publish_key = Some(PublishKey::new(KEY).unwrap());
    })
    .await;
    let addr = server.addr;
    let body = "{\"channel\":\"quotes.KEYED\",\"data\":{\"bid\":1}}\n";
    let wrong = format!("Bearer {KEY}x");
    for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
        let (status, head, _) = request(addr, "POST", &headers, body.as_bytes()).await;
        assert_eq!(status, 401, "{headers:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    assert_eq!(channel(addr, "quotes.KEYED").await, None, "nothing taken");
    let right = format!("Bearer {KEY}");
    let (status, answer) = publish(addr, &[("Authorization", right.as_str())], body).await;
    assert_eq!((status, answer), (200, json!({"accepted":1,"rejected":[]})));
    assert_eq!(channel(addr, "quotes.KEYED").await.unwrap()["seq"], 1);
    server.shutdown().await;
}

/// The peer is loopback here, but behind a trusted proxy the client is the
/// forwarded address: a remote client without a key is refused with 403.
#[tokio::test]
async fn without_a_key_a_remote_client_is_told_to_set_one() {
    let server = start_server(&[], |s| {
        s.trusted_proxy = TrustedProxy {
            header: Some("x-forwarded-for".parse().unwrap()),
            proxies: vec!["127.0.0.1".parse().unwrap()],
        };
    })
    .await;
    let addr = server.addr;
    let body = "{\"channel\":\"quotes.REMOTE\",\"data\":{\"bid\":1}}\n";
    let (status, _, answer) = request(
        addr,
        "POST",
        &[("X-Forwarded-For", "192.0.2.7")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(answer.contains("--publish-key"), "{answer}");
    assert_eq!(channel(addr, "quotes.REMOTE").await, None);
    // A loopback client through the same proxy may.
    let (status, _) = publish(addr, &[("X-Forwarded-For", "127.0.0.1")], body).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_whole_with_413() {
    let server = start_server(&[], |s| s.limits.max_publish_body_bytes = 1024).await;
    let addr = server.addr;
    let line = "{\"channel\":\"quotes.BIG\",\"data\":{\"bid\":1}}\n";
    let big = line.repeat(2048 / line.len() + 1);
    let (status, _, answer) = request(addr, "POST", &[], big.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("limits.max_publish_body_bytes"), "{answer}");
    assert_eq!(channel(addr, "quotes.BIG").await, None, "nothing taken");
    // Under the limit, the same lines are taken.
    let small = line.repeat(1024 / line.len());
    let (status, answer) = publish(addr, &[], &small).await;
    assert_eq!(status, 200, "{answer}");
    server.shutdown().await;
}

/// A request that is still sending its body holds its place: with one
/// place, a second request gets 503 with `Retry-After` until it is done.
#[tokio::test]
async fn requests_past_the_concurrency_limit_get_503() {
    let server = start_server(&[], |s| s.limits.max_concurrent_publishes = 1).await;
    let addr = server.addr;
    let line = "{\"channel\":\"quotes.SLOW\",\"data\":{\"bid\":1}}\n";
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        line.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&line.as_bytes()[..10]).await.unwrap();
    // Once the slow request holds the place, another is refused, unread.
    let head = wait_for(
        || async move {
            let (status, head, _) = request(addr, "POST", &[], b"").await;
            (status == 503).then_some(head)
        },
        "a second request to be refused while the first one holds the place",
    )
    .await;
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    slow.write_all(&line.as_bytes()[10..]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut response))
        .await
        .expect("the slow request is answered")
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    // Its place is given back.
    let (status, _) = publish(addr, &[], line).await;
    assert_eq!(status, 200);
    assert_eq!(channel(addr, "quotes.SLOW").await.unwrap()["seq"], 2);
    server.shutdown().await;
}
