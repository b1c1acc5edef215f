//! Who may connect, subscribe and publish (issue 11; docs/security.md):
//! JWTs checked before the upgrade (401), a subscribe beyond the token's
//! `channels` claim refused (`forbidden`) while the session lives, a fresh
//! token sent with `{"op":"auth"}` keeping a connection past its first
//! `exp`, close 1008 at `exp` otherwise, public namespaces beside token
//! ones, the Origin check (403) and the publish key of `tcp:` feeds.
//!
//! Everything runs on real sockets against a real server; tokens are
//! minted here with the same crate the server verifies them with, and the
//! RS256/ES256 key pairs are test-only fixtures (tests/fixtures/auth).

mod common;

use std::net::SocketAddr;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use tickcast::config::{Config, ServeArgs, Settings};

/// The HS256 secret the servers below are given (at least 32 bytes).
const SECRET: &str = "a-test-secret-that-is-long-enough-0123";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unix_now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token signed with [`SECRET`] for `channels`, expiring at `exp`.
fn token(channels: &[&str], exp: u64) -> String {
    hs256(SECRET, &json!({ "exp": exp, "channels": channels }))
}

/// Settings as the binary makes them from a config file with `text`.
fn settings(text: &str) -> Settings {
    toml::from_str::<Config>(text)
        .expect("config parses")
        .resolve(&ServeArgs::default(), None)
        .expect("config resolves")
}

/// `tweak` for `start_server`: these settings, with the feeds asked for.
fn with_config(text: &str) -> impl FnOnce(&mut Settings) + '_ {
    move |s: &mut Settings| {
        let feeds = std::mem::take(&mut s.feeds);
        *s = settings(text);
        s.feeds = feeds;
    }
}

fn secret_config() -> String {
    format!("[auth]\njwt_secret = \"{SECRET}\"\n")
}

/// A refused handshake: its status and body.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: String,
}

/// Opens a WebSocket with `request`; `Err` is the HTTP answer that refused it.
async fn connect_with<R: IntoClientRequest + Unpin>(request: R) -> Result<Client, Refused> {
    let attempt = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake within the deadline");
    match attempt {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tungstenite::Error::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(e) => panic!("handshake failed otherwise: {e}"),
    }
}

/// `ws://addr/ws`, with `?token=` when one is given.
async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Client, Refused> {
    match token {
        Some(token) => connect_with(format!("ws://{addr}/ws?token={token}")).await,
        None => connect_with(format!("ws://{addr}/ws")).await,
    }
}

/// A request for `ws://addr/ws` with one extra header.
fn request_with(
    addr: SocketAddr,
    name: &'static str,
    value: &str,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert(name, value.parse().expect("header value"));
    request
}

/// The close frame's code and reason, failing on anything but messages
/// before it.
async fn close_of(client: &mut Client) -> (CloseCode, String) {
    loop {
        match client.next().await {
            Message::Close(Some(frame)) => return (frame.code, frame.reason.to_string()),
            Message::Close(None) => panic!("close frame without a code"),
            _ => continue,
        }
    }
}

/// A ping answered with a pong: the session is alive and reading.
async fn assert_alive(client: &mut Client, id: i64) {
    client.send(json!({"op":"ping","id":id})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","id":id}));
}

#[tokio::test]
async fn a_connection_without_a_valid_token_is_refused_before_the_upgrade() {
    let server = start_server(&[], with_config(&secret_config())).await;
    let addr = server.addr;
    let exp = unix_now() + 600;

    let missing = connect(addr, None).await.err().expect("refused");
    assert_eq!(missing.status, 401);
    assert!(
        missing.body.contains("token is required"),
        "{}",
        missing.body
    );

    let forged = hs256(
        "another-secret-that-is-long-enough-0123",
        &json!({"exp": exp, "channels": [">"]}),
    );
    let refused = connect(addr, Some(&forged)).await.err().expect("refused");
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("signature"), "{}", refused.body);

    let expired = token(&[">"], unix_now() - 60);
    let refused = connect(addr, Some(&expired)).await.err().expect("refused");
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("expired"), "{}", refused.body);

    let no_channels = hs256(SECRET, &json!({"exp": exp}));
    let refused = connect(addr, Some(&no_channels))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("channels claim"), "{}", refused.body);

    let refused = connect(addr, Some("not-a-jwt"))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);

    // A valid token, by query or by header, is let in.
    let good = token(&["quotes.*"], exp);
    let mut by_query = connect(addr, Some(&good)).await.expect("admitted");
    assert_alive(&mut by_query, 1).await;
    let header = request_with(addr, "authorization", &format!("Bearer {good}"));
    let mut by_header = connect_with(header).await.expect("admitted");
    assert_alive(&mut by_header, 2).await;
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("\ntickcast_auth_refused_total 5\n"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscribe_beyond_the_grant_is_forbidden_and_the_session_lives() {
    let (server, feed) = start_with_tcp_feed(with_config(&secret_config())).await;
    let grant = token(&["quotes.*", "scores.epl.>"], unix_now() + 600);
    let mut client = connect(server.addr, Some(&grant)).await.expect("admitted");
    client.subscribe(1, &["quotes.*"]).await;
    client.subscribe(2, &["scores.epl.ARS-CHE"]).await;

    for (id, channels) in [
        (3, json!(["secret.plans"])),
        (4, json!(["quotes.*", "secret.>"])),
        (5, json!(["scores.>"])),
        (6, json!([">"])),
    ] {
        client
            .send(json!({"op":"subscribe","id":id,"channels":channels}))
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["code"], "forbidden", "{reply}");
    }

    // Nothing of the refused subscribes was taken: an update on a channel
    // they named is not delivered, while the granted ones keep flowing
    // (the later record arrives first, and alone).
    let mut producer = Producer::connect(feed).await;
    producer.publish("secret.plans", json!({"x": 1})).await;
    producer.publish("quotes.AAPL", json!({"bid": 1})).await;
    let first = client.recv().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["channel"], "quotes.AAPL", "{first}");
    producer
        .publish("scores.epl.ARS-CHE", json!({"home": 1}))
        .await;
    assert_eq!(client.recv().await["channel"], "scores.epl.ARS-CHE");
    assert_alive(&mut client, 7).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_fresh_token_keeps_a_connection_past_its_first_exp_and_without_one_it_closes_1008() {
    let (server, feed) = start_with_tcp_feed(with_config(&secret_config())).await;
    // The refreshed connection's first token expires a second before the
    // other's: by the time the other is closed, the sweeper has passed the
    // first exp, so a refresh that did not take would show.
    let exp = unix_now() + 3;
    let short = token(&["quotes.*"], exp);
    let mut refreshed = connect(server.addr, Some(&short)).await.expect("admitted");
    let left_exp = exp + 1;
    let left_token = token(&["quotes.*"], left_exp);
    let mut left = connect(server.addr, Some(&left_token))
        .await
        .expect("admitted");
    refreshed.subscribe(1, &["quotes.*"]).await;

    // A bad token changes nothing.
    let forged = hs256(
        "another-secret-that-is-long-enough-0123",
        &json!({"exp": exp + 600, "channels": [">"]}),
    );
    refreshed
        .send(json!({"op":"auth","id":2,"token":forged}))
        .await;
    let reply = refreshed.recv().await;
    assert_eq!(
        (&reply["type"], &reply["id"], &reply["code"]),
        (&json!("error"), &json!(2), &json!("forbidden")),
        "{reply}"
    );

    // A good one replaces the grant: scores now, quotes no longer.
    let long_exp = unix_now() + 600;
    let fresh = token(&["scores.*"], long_exp);
    refreshed
        .send(json!({"op":"auth","id":3,"token":fresh}))
        .await;
    assert_eq!(
        refreshed.recv().await,
        json!({"type":"authed","id":3,"exp":long_exp})
    );
    // What the new token does not cover is revoked, and the client told.
    assert_eq!(
        refreshed.recv().await,
        json!({"type":"unsubscribed","channels":["quotes.*"]})
    );
    refreshed.subscribe(4, &["scores.nba"]).await;
    refreshed
        .send(json!({"op":"subscribe","id":5,"channels":["quotes.MSFT"]}))
        .await;
    assert_eq!(refreshed.recv().await["code"], "forbidden");

    // The connection that sent nothing is closed at its token's exp ...
    let (code, reason) = close_of(&mut left).await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "token expired");
    assert!(
        unix_now_ms() >= u128::from(left_exp) * 1000,
        "closed before its exp"
    );
    // ... after the refreshed one's first exp: it lives, and is served.
    assert_alive(&mut refreshed, 6).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.AAPL", json!({"bid": 1})).await;
    producer.publish("scores.nba", json!({"q": 4})).await;
    // Only what the refreshed token covers arrives (quotes.AAPL would
    // come first, were quotes.* still subscribed).
    assert_eq!(refreshed.recv().await["channel"], "scores.nba");
    let (_, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("\ntickcast_tokens_expired_closed_total 1\n"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_with_a_public_key() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
    for (name, algorithm) in [("rs256", Algorithm::RS256), ("es256", Algorithm::ES256)] {
        let config = format!("[auth]\njwt_public_key = \"{fixtures}/{name}-public.pem\"\n");
        let server = start_server(&[], with_config(&config)).await;
        let private = std::fs::read(format!("{fixtures}/{name}-private.pem")).unwrap();
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let claims = json!({"exp": unix_now() + 600, "channels": ["quotes.*"]});
        let signed = encode(&Header::new(algorithm), &claims, &key).unwrap();
        let mut client = connect(server.addr, Some(&signed)).await.expect("admitted");
        client.subscribe(1, &["quotes.AAPL"]).await;

        // The public key is not an HMAC secret: an HS256 token is refused.
        let hmac = hs256(SECRET, &claims);
        let refused = connect(server.addr, Some(&hmac))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.status, 401, "{name}");
        assert!(refused.body.contains("algorithm HS256"), "{}", refused.body);
        // Nor is a token signed with the other pair's key.
        let other = match algorithm {
            Algorithm::RS256 => "es256",
            _ => "rs256",
        };
        let other_pem = std::fs::read(format!("{fixtures}/{other}-private.pem")).unwrap();
        let (other_alg, other_key) = match algorithm {
            Algorithm::RS256 => (Algorithm::ES256, EncodingKey::from_ec_pem(&other_pem)),
            _ => (Algorithm::RS256, EncodingKey::from_rsa_pem(&other_pem)),
        };
        let wrong = encode(&Header::new(other_alg), &claims, &other_key.unwrap()).unwrap();
        let refused = connect(server.addr, Some(&wrong))
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.status, 401, "{name}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_public_namespace_needs_no_token_while_a_token_namespace_does() {
    let config = format!(
        "{}[namespaces.demo]\nsubscribe = \"public\"\n",
        secret_config()
    );
    let (server, feed) = start_with_tcp_feed(with_config(&config)).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("demo.AAPL", json!({"bid": 1})).await;
    producer.publish("quotes.AAPL", json!({"bid": 2})).await;
    wait_for_channel(&server, "demo.AAPL").await;
    wait_for_channel(&server, "quotes.AAPL").await;

    let mut anonymous = connect(server.addr, None).await.expect("admitted");
    anonymous.subscribe(1, &["demo.*"]).await;
    assert_eq!(anonymous.recv().await["channel"], "demo.AAPL");
    for (id, channel) in [(2, "quotes.AAPL"), (3, ">"), (4, "*.AAPL")] {
        anonymous
            .send(json!({"op":"subscribe","id":id,"channels":[channel]}))
            .await;
        let reply = anonymous.recv().await;
        assert_eq!(reply["code"], "forbidden", "{channel}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains("token"),
            "{reply}"
        );
    }
    assert_alive(&mut anonymous, 5).await;

    // The same rules hold for the HTTP snapshots.
    assert_eq!(http_get(server.addr, "/channels/demo.AAPL").await.0, 200);
    assert_eq!(http_get(server.addr, "/channels/quotes.AAPL").await.0, 401);
    let (_, list) = http_get(server.addr, "/channels").await;
    assert!(
        list.contains("demo.AAPL") && !list.contains("quotes.AAPL"),
        "{list}"
    );
    let grant = token(&["quotes.*"], unix_now() + 600);
    let path = format!("/channels/quotes.AAPL?token={grant}");
    assert_eq!(http_get(server.addr, &path).await.0, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn browsers_are_let_in_only_from_allowed_origins() {
    // No list: the server's own host only.
    let server = start_server(&[], |_| {}).await;
    let addr = server.addr;
    let own = request_with(addr, "origin", &format!("http://{addr}"));
    assert_alive(&mut connect_with(own).await.expect("own host"), 1).await;
    let evil = request_with(addr, "origin", "https://evil.example");
    let refused = connect_with(evil).await.err().expect("refused");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("evil.example"), "{}", refused.body);
    assert_alive(&mut connect(addr, None).await.expect("no Origin"), 2).await;
    server.shutdown().await;

    // A list: exactly its entries.
    let config = "[auth]\nallowed_origins = [\"https://app.example\"]\n";
    let server = start_server(&[], with_config(config)).await;
    let addr = server.addr;
    let listed = request_with(addr, "origin", "https://app.example");
    assert_alive(&mut connect_with(listed).await.expect("listed"), 3).await;
    let own = request_with(addr, "origin", &format!("http://{addr}"));
    assert_eq!(connect_with(own).await.err().expect("refused").status, 403);
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("\ntickcast_origin_refused_total 1\n"),
        "{metrics}"
    );
    server.shutdown().await;
}

/// What the feed sends a producer until it closes the connection.
async fn read_until_closed(producer: &mut Producer) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, producer.0.read_to_end(&mut got))
        .await
        .expect("closed within the deadline")
        .expect("read");
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn a_tcp_producer_must_show_the_publish_key_first() {
    const KEY: &str = "a-publish-key-for-tests";
    let config = format!("[auth]\npublish_key = \"{KEY}\"\n");
    let (server, feed) = start_with_tcp_feed(with_config(&config)).await;

    let mut keyless = Producer::connect(feed).await;
    keyless.publish("k.keyless", json!({"x": 1})).await;
    let said = read_until_closed(&mut keyless).await;
    assert!(said.contains("publish key"), "{said}");

    let mut guesser = Producer::connect(feed).await;
    guesser
        .send_line(r#"{"auth":"a-guessed-key-for-tests"}"#)
        .await;
    guesser.publish("k.guessed", json!({"x": 1})).await;
    let said = read_until_closed(&mut guesser).await;
    assert!(said.contains("wrong publish key"), "{said}");

    let mut holder = Producer::connect(feed).await;
    holder.send_line(&format!(r#"{{"auth":"{KEY}"}}"#)).await;
    holder.publish("k.held", json!({"x": 1})).await;
    wait_for_channel(&server, "k.held").await;
    // The refused ones were closed before this producer connected, and
    // nothing of theirs reached the engine.
    for refused in ["k.keyless", "k.guessed"] {
        assert!(server.engine.snapshot(refused).await.unwrap().is_none());
    }
    assert_eq!(server.feeds[0].producers_unauthorized(), 2);
    assert_eq!(server.feeds[0].accepted(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_tcp_feed_beyond_loopback_without_a_key_is_refused_at_start_up() {
    // Embedded: tickcast::start refuses.
    let settings = Settings {
        feeds: vec!["tcp:0.0.0.0:0".parse().unwrap()],
        ..Settings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tickcast::start(listener, settings, Default::default())
        .await
        .err()
        .expect("start-up refused")
        .to_string();
    assert!(err.contains("--publish-key"), "says what to set: {err}");

    // The command: exits at once with the same advice.
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tickcast"))
            .args(["--listen", "127.0.0.1:0", "--feed", "tcp:0.0.0.0:0"])
            .env_remove("TICKCAST_PUBLISH_KEY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("exits within the deadline")
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--publish-key"), "{stderr}");
    assert!(
        stderr.contains("tcp:127.0.0.1:0"),
        "offers loopback: {stderr}"
    );

    // A namespace that needs tokens, with nothing to check them by.
    let err = toml::from_str::<Config>("[namespaces.private]\nsubscribe = \"token\"\n")
        .unwrap()
        .resolve(&ServeArgs::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("namespaces.private"), "{err}");
    assert!(err.contains("--jwt-secret"), "{err}");
}

/// Without a token key nothing changes for anyone: the demo stays open.
#[tokio::test]
async fn without_a_token_key_every_namespace_is_public() {
    let (server, feed) = start_with_tcp_feed(|_| {}).await;
    let mut client = connect(server.addr, None).await.expect("admitted");
    client.subscribe(1, &[">"]).await;
    let mut producer = Producer::connect(feed).await;
    producer.publish("quotes.AAPL", json!({"bid": 1})).await;
    assert_eq!(client.recv().await["channel"], "quotes.AAPL");
    client
        .send(json!({"op":"auth","id":2,"token":"a.b.c"}))
        .await;
    assert_eq!(client.recv().await["code"], "unsupported");
    server.shutdown().await;
}
