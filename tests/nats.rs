//! Scale-out over NATS JetStream (docs/scaling.md), with a real
//! `nats-server -js` on a free loopback port and a temporary store, and
//! the real `tickcast` binary for every node (processes that must die).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::{free_port, http_get, tickcast_binary, wait_for, wait_healthy, Client, Producer};

/// `nats.writer_lease_ms` for the tests: short, so a takeover is quick.
const LEASE_MS: u64 = 1000;

/// A `nats-server -js` on 127.0.0.1, killed (and its store removed) on drop.
struct NatsServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    /// More `nats-server` flags (authorization).
    extra: Vec<String>,
}

impl NatsServer {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Self {
        let addr = free_port();
        let dir = std::env::temp_dir().join(format!(
            "tickcast-nats-test-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            addr,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.run().await;
        server
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Starts the process (again) on the same port and store.
    async fn run(&mut self) {
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.addr.port().to_string(),
            ])
            .arg("-sd")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = self.addr;
        wait_for(
            || async move { TcpStream::connect(addr).await.ok().map(|_| ()) },
            "nats-server to listen",
        )
        .await;
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One tickcast process; killed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// The tcp feed producers write to (ingest nodes).
    feed: Option<SocketAddr>,
}

impl Node {
    async fn start(nats: &NatsServer, role: &str) -> Node {
        Node::start_with(nats, role, "").await
    }

    /// A node with more `[nats]` keys in its config file.
    async fn start_with(nats: &NatsServer, role: &str, nats_keys: &str) -> Node {
        let addr = free_port();
        let config = nats.dir.join(format!("tickcast-{}.toml", addr.port()));
        let text = format!("[nats]\nwriter_lease_ms = {LEASE_MS}\n{nats_keys}");
        std::fs::write(&config, text).unwrap();
        let mut command = tickcast_binary(addr);
        command
            .args(["--nats", &nats.url(), "--role", role])
            .arg("--config")
            .arg(&config);
        let feed = (role != "edge").then(free_port);
        if let Some(feed) = feed {
            command.args(["--feed", &format!("tcp:{feed}")]);
        }
        let child = command.spawn().expect("tickcast starts");
        wait_healthy(addr).await;
        Node { child, addr, feed }
    }

    /// An ingest node that has become the stream's writer.
    async fn ingest(nats: &NatsServer) -> Node {
        Node::ingest_with(nats, "").await
    }

    /// [`Node::ingest`] with more `[nats]` keys.
    async fn ingest_with(nats: &NatsServer, nats_keys: &str) -> Node {
        let node = Node::start_with(nats, "ingest", nats_keys).await;
        node.wait_phase("writing").await;
        node
    }

    async fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").await.1
    }

    async fn in_phase(&self, phase: &str) -> bool {
        self.metrics()
            .await
            .contains(&format!("phase=\"{phase}\"}} 1"))
    }

    async fn wait_phase(&self, phase: &str) {
        wait_for(
            || async move { self.in_phase(phase).await.then_some(()) },
            &format!("node {} to be {phase}", self.addr),
        )
        .await;
    }

    async fn producer(&self) -> Producer {
        Producer::connect(self.feed.expect("an ingest node")).await
    }

    async fn channel(&self, name: &str) -> Option<Value> {
        let (status, body) = http_get(self.addr, &format!("/channels/{name}")).await;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Waits until channel `name` is at `seq` here; returns its snapshot.
    async fn wait_seq(&self, name: &str, seq: u64) -> Value {
        wait_for(
            || async move {
                let snapshot = self.channel(name).await?;
                (snapshot["seq"] == seq).then_some(snapshot)
            },
            &format!("{name} at seq {seq} on {}", self.addr),
        )
        .await
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Every channel message a client gets, applied with the protocol's rule
/// (`prev` must be the seq held), until `name` reaches `seq`; returns them.
async fn follow_until(
    client: &mut Client,
    states: &mut std::collections::BTreeMap<String, (u64, Value)>,
    name: &str,
    seq: u64,
) -> Vec<Value> {
    let mut seen = Vec::new();
    while states.get(name).map_or(0, |(s, _)| *s) < seq {
        let message = client.recv().await;
        seen.push(message.clone());
        let channel = message["channel"].as_str().unwrap().to_owned();
        let at = message["seq"].as_u64().unwrap();
        match message["type"].as_str().unwrap() {
            "snapshot" => {
                states.insert(channel, (at, message["data"].clone()));
            }
            "update" => {
                let (held, state) = states.get_mut(&channel).expect("snapshot first");
                assert_eq!(message["prev"], *held, "gap on {channel}: {message}");
                common::merge(state, &message["data"]);
                *held = at;
            }
            other => panic!("unexpected {other}: {message}"),
        }
    }
    seen
}

/// A counter or gauge from `/metrics`.
fn figure(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .parse()
        .ok()
}

/// The test's own JetStream handle on the nodes' stream.
async fn stream(nats: &NatsServer) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .get_stream("TICKCAST")
        .await
        .unwrap()
}

/// Deletes from the stream the records of `channel` whose seqs are in
/// `seqs`, as an operator's purge or a lost disk block would.
async fn delete_records(nats: &NatsServer, channel: &str, seqs: std::ops::RangeInclusive<u64>) {
    let mut stream = stream(nats).await;
    let last = stream.info().await.unwrap().state.last_sequence;
    let subject = format!("tickcast.rec.{channel}");
    let mut deleted = 0;
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let seq = serde_json::from_slice::<Value>(&message.payload)
            .ok()
            .and_then(|v| v["seq"].as_u64());
        if message.subject.as_str() == subject && seq.is_some_and(|s| seqs.contains(&s)) {
            stream.delete_message(sequence).await.unwrap();
            deleted += 1;
        }
    }
    assert_eq!(deleted, seqs.count(), "records to delete");
}

/// Publishes `{"n": i}` for each i in `range` on `channel`.
async fn publish(producer: &mut Producer, channel: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        producer.publish(channel, json!({ "n": i })).await;
    }
}

/// An ingest's state runs ahead of the stream, so it serves no WebSocket
/// clients: one that tries is told where to go instead (and could
/// otherwise see a record whose seq a crash would reuse). Its HTTP views
/// still answer.
#[tokio::test]
async fn an_ingest_refuses_websocket_clients_and_says_where_to_go() {
    let nats = NatsServer::start().await;
    let ingest = Node::ingest(&nats).await;
    let mut producer = ingest.producer().await;
    producer.publish("quotes.A", json!({ "n": 1 })).await;
    ingest.wait_seq("quotes.A", 1).await;
    let url = format!("ws://{}/ws", ingest.addr);
    let attempt = tokio::time::timeout(common::DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("an answer within the deadline");
    match attempt {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            assert!(body.contains("--role edge"), "{body}");
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("an ingest took a WebSocket client"),
    }
}

/// A record whose stream message the NATS server would refuse (over its
/// `max_payload`) is dropped before it takes a seq, and counted with its
/// reason; the records after it go through (the writer, which publishes in
/// order, is not stuck retrying it), with no hole in the seqs. So is one
/// that would make its channel's state too big for one snapshot.
#[tokio::test]
async fn a_record_over_the_nats_max_payload_is_dropped_and_the_rest_flow() {
    let config = std::env::temp_dir().join(format!(
        "tickcast-nats-max-payload-{}.conf",
        std::process::id()
    ));
    std::fs::write(&config, "max_payload: 8192\n").unwrap();
    let nats = NatsServer::start_with(&["-c", config.to_str().unwrap()]).await;
    let ingest = Node::ingest(&nats).await;
    let edge = Node::start(&nats, "edge").await;
    let mut producer = ingest.producer().await;
    producer.publish("quotes.A", json!({ "n": 1 })).await;
    let blob = "x".repeat(10_000);
    producer
        .publish("quotes.A", json!({ "n": 2, "blob": blob }))
        .await;
    producer.publish("quotes.A", json!({ "n": 3 })).await;
    let on_edge = edge.wait_seq("quotes.A", 2).await;
    assert_eq!(on_edge["data"], json!({ "n": 3 }));
    assert_eq!(ingest.wait_seq("quotes.A", 2).await, on_edge);
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains("tickcast_records_dropped_total{reason=\"nats_max_payload\"} 1"),
        "{metrics}"
    );

    // Each record fits, but the state they would make together would not
    // fit one snapshot: the second is refused, so every channel can still
    // be snapshotted (and resynced after a hole).
    let half = "y".repeat(5_000);
    producer.publish("quotes.A", json!({ "b": half })).await;
    producer.publish("quotes.A", json!({ "c": half })).await;
    producer.publish("quotes.A", json!({ "n": 4 })).await;
    let on_edge = edge.wait_seq("quotes.A", 4).await;
    assert_eq!(on_edge["data"], json!({ "n": 4, "b": half }));
    let metrics = ingest.metrics().await;
    assert!(
        metrics.contains("tickcast_records_dropped_total{reason=\"max_state_bytes\"} 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_file(&config);
}

/// Reads `client`'s messages until its `feeds.nats` state (kept in
/// `held`) says `state`; returns the message that made it so.
async fn wait_status(client: &mut Client, held: &mut Value, state: &str) -> Value {
    loop {
        let message = client.recv().await;
        if message["channel"] != "feeds.nats" {
            continue;
        }
        match message["type"].as_str() {
            Some("snapshot") => *held = message["data"].clone(),
            Some("update") => common::merge(held, &message["data"]),
            _ => continue,
        }
        if held["state"] == state {
            return message;
        }
    }
}

/// An edge tells its clients whether what they see is live: `feeds.nats`
/// is up while it follows the stream, down with the reason while NATS is
/// unreachable, and up again once it is back. Its seqs are the edge's own,
/// so resuming it on another edge is always a resync, never a replay of
/// another node's updates.
#[tokio::test]
async fn an_edge_tells_its_clients_when_what_they_see_is_stale() {
    let mut nats = NatsServer::start().await;
    let _ingest = Node::ingest(&nats).await;
    let edge = Node::start(&nats, "edge").await;
    let other = Node::start(&nats, "edge").await;
    let mut client = Client::connect(edge.addr).await;
    client.subscribe(1, &["feeds.nats"]).await;
    let mut held = Value::Null;
    wait_status(&mut client, &mut held, "up").await;

    nats.stop().await;
    wait_status(&mut client, &mut held, "down").await;
    let reason = held["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("NATS is unreachable"), "{held}");
    nats.run().await;
    let up = wait_status(&mut client, &mut held, "up").await;
    assert_eq!(held["reason"], "following the stream");

    assert!(up["seq"].as_u64().is_some(), "{up}");
    let epoch = edge.channel("feeds.nats").await.unwrap()["epoch"].clone();
    // The other edge lived through the same outage with its own updates;
    // a client holding this edge's feeds.nats at the seq the other edge
    // has reached must not be told it is up to date there.
    let theirs = wait_for(
        || async {
            let channel = other.channel("feeds.nats").await?;
            (channel["data"]["state"] == "up").then_some(channel)
        },
        "the other edge's feeds.nats to be up",
    )
    .await;
    let mut elsewhere = Client::connect(other.addr).await;
    elsewhere
        .send(json!({"op":"subscribe","id":2,"channels":["feeds.nats"],
            "since":{"feeds.nats": theirs["seq"]},"epoch":epoch}))
        .await;
    assert_eq!(elsewhere.recv().await["type"], "subscribed");
    let first = elsewhere.recv().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["resync"], true, "{first}");
    assert_eq!(first["data"]["state"], "up", "{first}");
}

#[tokio::test]
async fn two_edges_show_the_ingests_seqs_states_and_epoch() {
    let nats = NatsServer::start().await;
    let ingest = Node::ingest(&nats).await;
    let edges = [
        Node::start(&nats, "edge").await,
        Node::start(&nats, "edge").await,
    ];
    let mut clients = Vec::new();
    for edge in &edges {
        let mut client = Client::connect(edge.addr).await;
        client.subscribe(1, &["quotes.>"]).await;
        clients.push(client);
    }
    let mut producer = ingest.producer().await;
    for i in 1..=60u64 {
        let channel = ["quotes.A", "quotes.B", "quotes.C"][(i % 3) as usize];
        producer
            .publish(channel, json!({ "n": i, "last": i * 10 }))
            .await;
    }
    let mut seen = Vec::new();
    for client in &mut clients {
        let mut states = Default::default();
        for name in ["quotes.A", "quotes.B", "quotes.C"] {
            follow_until(client, &mut states, name, 20).await;
        }
        seen.push(states);
    }
    assert_eq!(seen[0], seen[1], "the two edges' clients disagree");
    for name in ["quotes.A", "quotes.B", "quotes.C"] {
        let on_ingest = ingest.wait_seq(name, 20).await;
        for edge in &edges {
            assert_eq!(edge.wait_seq(name, 20).await, on_ingest, "{name}");
        }
    }
    // quotes.A got i = 3, 6, ..., 60: its 20th and last is 60.
    assert_eq!(seen[0]["quotes.A"], (20, json!({"n": 60, "last": 600})));
}

#[tokio::test]
async fn a_client_resumes_on_the_other_edge_when_its_edge_dies() {
    let nats = NatsServer::start().await;
    let ingest = Node::ingest(&nats).await;
    let doomed = Node::start(&nats, "edge").await;
    let other = Node::start(&nats, "edge").await;
    let mut producer = ingest.producer().await;
    let mut client = Client::connect(doomed.addr).await;
    client.subscribe(1, &["quotes.R"]).await;
    publish(&mut producer, "quotes.R", 1..=40).await;
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.R", 40).await;
    let epoch = doomed.channel("quotes.R").await.unwrap()["epoch"].clone();
    doomed.kill().await;
    // More records while the client has no edge.
    publish(&mut producer, "quotes.R", 41..=80).await;
    other.wait_seq("quotes.R", 80).await;
    let mut client = Client::connect(other.addr).await;
    client
        .send(json!({"op":"subscribe","id":2,"channels":["quotes.R"],
            "since":{"quotes.R":40},"epoch":epoch}))
        .await;
    assert_eq!(client.recv().await["type"], "subscribed");
    let first = client.recv().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["prev"].as_u64(),
            first["seq"].as_u64()
        ),
        (Some("update"), Some(40), Some(41)),
        "a resume from 40 on another edge is a replay, not a resync: {first}"
    );
    common::merge(&mut states.get_mut("quotes.R").unwrap().1, &first["data"]);
    states.get_mut("quotes.R").unwrap().0 = 41;
    follow_until(&mut client, &mut states, "quotes.R", 80).await;
    assert_eq!(states["quotes.R"], (80, json!({"n": 80})));
}

#[tokio::test]
async fn a_restarted_ingest_continues_the_seqs_with_the_same_epoch() {
    let nats = NatsServer::start().await;
    let first = Node::ingest(&nats).await;
    let edge = Node::start(&nats, "edge").await;
    let mut client = Client::connect(edge.addr).await;
    client.subscribe(1, &["quotes.S"]).await;
    publish(&mut first.producer().await, "quotes.S", 1..=25).await;
    let before = edge.wait_seq("quotes.S", 25).await;
    first.kill().await;
    let second = Node::ingest(&nats).await;
    assert_eq!(second.channel("quotes.S").await, Some(before.clone()));
    publish(&mut second.producer().await, "quotes.S", 26..=30).await;
    let after = edge.wait_seq("quotes.S", 30).await;
    assert_eq!(after["epoch"], before["epoch"], "the epoch is kept");
    assert_eq!(after["data"], json!({"n": 30}));
    // The client on the edge saw one unbroken chain 1..30.
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.S", 30).await;
    assert_eq!(states["quotes.S"], (30, json!({"n": 30})));
}

#[tokio::test]
async fn nats_down_for_a_while_loses_nothing() {
    let mut nats = NatsServer::start().await;
    let ingest = Node::ingest(&nats).await;
    let edge = Node::start(&nats, "edge").await;
    let mut client = Client::connect(edge.addr).await;
    client.subscribe(1, &["quotes.D"]).await;
    let mut producer = ingest.producer().await;
    publish(&mut producer, "quotes.D", 1..=50).await;
    edge.wait_seq("quotes.D", 50).await;
    nats.stop().await;
    // The ingest says it holds records; the edge goes on serving.
    publish(&mut producer, "quotes.D", 51..=100).await;
    wait_for(
        || async {
            let (status, body) = http_get(ingest.addr, "/healthz").await;
            (status == 503 && body.contains("NATS is unreachable")).then_some(())
        },
        "the ingest to report NATS down",
    )
    .await;
    wait_for(
        || async {
            let metrics = ingest.metrics().await;
            let pending = metrics
                .lines()
                .find_map(|l| l.strip_prefix("tickcast_nats_pending_records "))?
                .parse::<u64>()
                .ok()?;
            (pending > 0 && metrics.contains("tickcast_feed_up{feed=\"nats\",status=\"failed\"} 1"))
                .then_some(())
        },
        "the ingest to hold records and mark the nats feed failed",
    )
    .await;
    assert_eq!(http_get(edge.addr, "/healthz").await.0, 200);
    assert_eq!(edge.channel("quotes.D").await.unwrap()["seq"], 50);
    nats.run().await;
    publish(&mut producer, "quotes.D", 101..=150).await;
    edge.wait_seq("quotes.D", 150).await;
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.D", 150).await;
    assert_eq!(states["quotes.D"], (150, json!({"n": 150})));
    wait_healthy(ingest.addr).await;
}

/// `[nats] user` and `password` reach the NATS connection; without them a
/// server that requires them stops start-up with the reason.
#[tokio::test]
async fn nats_credentials_come_from_the_config() {
    let nats = NatsServer::start_with(&["--user", "tick", "--pass", "cast-secret"]).await;
    let ingest = Node::start_with(
        &nats,
        "ingest",
        "user = \"tick\"\npassword = \"cast-secret\"\n",
    )
    .await;
    ingest.wait_phase("writing").await;
    let config = nats.dir.join("no-credentials.toml");
    std::fs::write(&config, "[nats]\nconnect_timeout_ms = 2000\n").unwrap();
    let refused = tickcast_binary(free_port())
        .args(["--nats", &nats.url(), "--role", "edge"])
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .output();
    let refused = tokio::time::timeout(common::DEADLINE, refused)
        .await
        .expect("start-up gives up within the deadline")
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}

/// `nats.max_pending_records`: while NATS is down the ingest holds that
/// many records and no more (the rest wait in front of the state stage),
/// and every one of them reaches the edge once NATS is back.
#[tokio::test]
async fn the_ingest_holds_at_most_max_pending_records_while_nats_is_down() {
    let mut nats = NatsServer::start().await;
    let ingest = Node::ingest_with(&nats, "max_pending_records = 4\n").await;
    let edge = Node::start(&nats, "edge").await;
    let mut producer = ingest.producer().await;
    publish(&mut producer, "quotes.P", 1..=5).await;
    edge.wait_seq("quotes.P", 5).await;
    nats.stop().await;
    publish(&mut producer, "quotes.P", 6..=40).await;
    let pending = |metrics: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tickcast_nats_pending_records "))?
            .parse()
            .ok()
    };
    wait_for(
        || async { (pending(&ingest.metrics().await) == Some(4)).then_some(()) },
        "the ingest to hold 4 records",
    )
    .await;
    // Held at the bound: the stage applied 4 more and waits with the 5th.
    assert_eq!(ingest.channel("quotes.P").await.unwrap()["seq"], 5 + 4);
    assert_eq!(pending(&ingest.metrics().await), Some(4));
    nats.run().await;
    let done = edge.wait_seq("quotes.P", 40).await;
    assert_eq!(done["data"], json!({"n": 40}));
}

#[tokio::test]
async fn a_second_ingest_cannot_assign_seqs() {
    let nats = NatsServer::start().await;
    let first = Node::ingest(&nats).await;
    let edge = Node::start(&nats, "edge").await;
    let second = Node::start(&nats, "ingest").await;
    publish(&mut second.producer().await, "quotes.X", 1..=3).await;
    // While the first writes (its heartbeats keep the lease), the second
    // stands by and its records go nowhere, for several leases.
    let mut producer = first.producer().await;
    let watched = Instant::now();
    let mut n = 0;
    while watched.elapsed() < Duration::from_millis(3 * LEASE_MS) {
        n += 1;
        publish(&mut producer, "quotes.M", n..=n).await;
        edge.wait_seq("quotes.M", n).await;
        assert!(
            second.in_phase("standby").await,
            "the second ingest must stand by"
        );
        assert_eq!(edge.channel("quotes.X").await, None);
    }
    // Another writer's message lands in the stream: the first ingest's
    // next publish expects an older last sequence, is refused, and it stops.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("tickcast.meta.writer", "intruder".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&mut producer, "quotes.M", n + 1..=n + 1).await;
    first.wait_phase("fenced").await;
    let (status, body) = http_get(first.addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains("fenced"), "{body}");
    // The second takes over once the stream is quiet, after applying
    // everything in it: its held records continue from the stream's seqs.
    second.wait_phase("writing").await;
    let x = edge.wait_seq("quotes.X", 3).await;
    assert_eq!(x["data"], json!({"n": 3}));
    // The fenced ingest's last record never got a seq anywhere.
    assert_eq!(edge.channel("quotes.M").await.unwrap()["seq"], n);
    assert_eq!(second.channel("quotes.M").await.unwrap()["seq"], n);
}

/// What the writer's retry relies on: JetStream answers a publish whose
/// `Nats-Msg-Id` it already stored as a duplicate, with the first copy's
/// sequence, before it checks `Nats-Expected-Last-Sequence`. So a record
/// stored but not acknowledged (NATS died before the ack) is sent again
/// with the same expectation and is not taken for another writer's.
#[tokio::test]
async fn jetstream_takes_a_resent_record_as_a_duplicate_not_a_conflict() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "DEDUP".into(),
        subjects: vec!["dedup.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let send = |id: &'static str, expected: u64| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
            js.publish_with_headers("dedup.a", headers, "x".into())
                .await
                .unwrap()
                .await
        }
    };
    let first = send("w.1", 0).await.unwrap();
    assert_eq!((first.sequence, first.duplicate), (1, false));
    let again = send("w.1", 0)
        .await
        .expect("a duplicate, not a wrong last sequence");
    assert_eq!((again.sequence, again.duplicate), (1, true));
    let other = send("w.2", 0).await.unwrap_err();
    assert_eq!(
        other.kind(),
        async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
    );
}

/// A hole in the stream (records of a channel gone before an edge read
/// them) is not a frozen channel nor a silent gap: the edge's clients get
/// a `resync` snapshot as soon as the stream has the channel's next
/// snapshot, and the chain goes on from it, ending at the ingest's state.
#[tokio::test]
async fn records_missing_from_the_stream_become_a_resync_at_the_client() {
    let nats = NatsServer::start().await;
    // Snapshots after every 50 records only, so the edge meets the hole
    // before any snapshot covers it.
    let keys = "snapshot_interval_records = 50\nsnapshot_interval_ms = 600000\n";
    let ingest = Node::ingest_with(&nats, keys).await;
    let mut producer = ingest.producer().await;
    publish(&mut producer, "quotes.H", 1..=40).await;
    ingest.wait_seq("quotes.H", 40).await;
    wait_for(
        || async {
            let published = figure(&ingest.metrics().await, "tickcast_nats_published_total")?;
            (published == 40).then_some(())
        },
        "the stream to hold the 40 records",
    )
    .await;
    delete_records(&nats, "quotes.H", 25..=30).await;
    // A new edge reads the stream: 1..24, then a hole.
    let edge = Node::start(&nats, "edge").await;
    assert_eq!(edge.channel("quotes.H").await.unwrap()["seq"], 24);
    let mut client = Client::connect(edge.addr).await;
    client.subscribe(1, &["quotes.H"]).await;
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.H", 24).await;
    // More records: the 50th since the writer started brings a snapshot
    // cycle, and with it the channel's state at its seq then.
    publish(&mut producer, "quotes.H", 41..=70).await;
    let seen = follow_until(&mut client, &mut states, "quotes.H", 70).await;
    let resyncs: Vec<&Value> = seen
        .iter()
        .filter(|m| m["type"] == "snapshot" && m["resync"] == true)
        .collect();
    assert_eq!(resyncs.len(), 1, "one resync snapshot: {seen:?}");
    let at = resyncs[0]["seq"].as_u64().unwrap();
    assert!((50..=70).contains(&at), "resynced at {at}");
    assert_eq!(resyncs[0]["data"], json!({ "n": at }));
    // Nothing from inside the hole reached the client as an update.
    assert!(
        seen.iter()
            .all(|m| m["type"] != "update" || m["seq"].as_u64().unwrap() > at),
        "{seen:?}"
    );
    assert_eq!(states["quotes.H"], (70, json!({"n": 70})));
    assert_eq!(
        edge.wait_seq("quotes.H", 70).await,
        ingest.wait_seq("quotes.H", 70).await
    );
    let metrics = edge.metrics().await;
    assert_eq!(figure(&metrics, "tickcast_nats_resyncs_total"), Some(1));
}

/// A starting edge loads each channel's latest snapshot and reads only
/// the records after the last checkpoint, not the whole stream, and
/// still shows exactly the ingest's states, seqs and epoch.
#[tokio::test]
async fn a_new_edge_starts_from_the_snapshots_and_reads_only_the_tail() {
    let nats = NatsServer::start().await;
    let keys = "snapshot_interval_records = 100\nsnapshot_interval_ms = 600000\n";
    let ingest = Node::ingest_with(&nats, keys).await;
    let mut producer = ingest.producer().await;
    for i in 1..=240u64 {
        let channel = ["quotes.T1", "quotes.T2", "quotes.T3"][(i % 3) as usize];
        producer.publish(channel, json!({ "n": i })).await;
    }
    for name in ["quotes.T1", "quotes.T2", "quotes.T3"] {
        ingest.wait_seq(name, 80).await;
    }
    // A snapshot cycle after 100 records: a snapshot of each channel (at
    // the seq the ingest's state had reached then) and a checkpoint.
    wait_for(
        || async {
            let metrics = ingest.metrics().await;
            let published = figure(&metrics, "tickcast_nats_snapshots_published_total")?;
            (published >= 3).then_some(())
        },
        "the ingest to publish its snapshots",
    )
    .await;
    let edge = Node::start(&nats, "edge").await;
    for name in ["quotes.T1", "quotes.T2", "quotes.T3"] {
        assert_eq!(
            edge.wait_seq(name, 80).await,
            ingest.wait_seq(name, 80).await,
            "{name}"
        );
    }
    let metrics = edge.metrics().await;
    let read = figure(&metrics, "tickcast_nats_catchup_records_total").unwrap();
    let loaded = figure(&metrics, "tickcast_nats_snapshots_loaded_total").unwrap();
    // Only the records after the checkpoint (the 100 before it are not).
    assert!(read <= 140, "read {read} of the stream's 240 records");
    assert_eq!(loaded, 3, "one snapshot per channel");
    // It goes on following the stream.
    publish(&mut producer, "quotes.T1", 81..=85).await;
    assert_eq!(
        edge.wait_seq("quotes.T1", 85).await["data"],
        json!({"n": 85})
    );
}

/// `--role both` serves its clients from the stream, like an edge: a
/// record NATS has not stored reaches no client (so a crash cannot have
/// shown a record a restarted writer numbers differently), and once NATS
/// is back every record arrives, in order, with no gap.
#[tokio::test]
async fn a_both_node_shows_its_clients_only_records_nats_has_stored() {
    let mut nats = NatsServer::start().await;
    let node = Node::start(&nats, "both").await;
    node.wait_phase("writing").await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe(1, &["quotes.B"]).await;
    let mut producer = node.producer().await;
    publish(&mut producer, "quotes.B", 1..=10).await;
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.B", 10).await;
    nats.stop().await;
    publish(&mut producer, "quotes.B", 11..=20).await;
    // All ten are applied by the ingest side and held for NATS ...
    wait_for(
        || async {
            let pending = figure(&node.metrics().await, "tickcast_nats_pending_records")?;
            (pending == 10).then_some(())
        },
        "the node to hold 10 records for NATS",
    )
    .await;
    // ... and none is shown: the channel clients see is still at 10.
    assert_eq!(node.channel("quotes.B").await.unwrap()["seq"], 10);
    nats.run().await;
    follow_until(&mut client, &mut states, "quotes.B", 20).await;
    assert_eq!(states["quotes.B"], (20, json!({"n": 20})));
}

/// A `both` node killed (SIGKILL) while NATS is down and it holds records:
/// its client never saw them, so after a restart the client resumes with
/// `since` on the new node as a plain replay of the stream's records (the
/// new writer's, under the same epoch), never a seq it saw with other
/// content.
#[tokio::test]
async fn a_both_node_killed_while_holding_records_showed_none_of_them() {
    use futures_util::StreamExt;
    let mut nats = NatsServer::start().await;
    let node = Node::start(&nats, "both").await;
    node.wait_phase("writing").await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe(1, &["quotes.K"]).await;
    publish(&mut node.producer().await, "quotes.K", 1..=10).await;
    let mut states = Default::default();
    follow_until(&mut client, &mut states, "quotes.K", 10).await;
    let epoch = node.channel("quotes.K").await.unwrap()["epoch"].clone();
    nats.stop().await;
    publish(&mut node.producer().await, "quotes.K", 11..=20).await;
    wait_for(
        || async {
            let pending = figure(&node.metrics().await, "tickcast_nats_pending_records")?;
            (pending == 10).then_some(())
        },
        "the node to hold 10 records for NATS",
    )
    .await;
    node.kill().await;
    // Everything the client got before its node died, checked as it goes.
    while let Ok(Some(Ok(message))) = tokio::time::timeout(common::DEADLINE, client.ws.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let message: Value = serde_json::from_str(&text).unwrap();
            let (held, state) = states.get_mut("quotes.K").unwrap();
            assert_eq!(message["prev"], *held, "{message}");
            common::merge(state, &message["data"]);
            *held = message["seq"].as_u64().unwrap();
        }
    }
    let held = states["quotes.K"].0;
    assert_eq!(held, 10, "the client saw only what NATS stored");
    nats.run().await;
    let restarted = Node::start(&nats, "both").await;
    restarted.wait_phase("writing").await;
    let mut producer = restarted.producer().await;
    for i in 11..=15u64 {
        producer
            .publish("quotes.K", json!({ "n": i, "restarted": true }))
            .await;
    }
    let at_15 = restarted.wait_seq("quotes.K", 15).await;
    assert_eq!(at_15["epoch"], epoch);
    let mut client = Client::connect(restarted.addr).await;
    client
        .send(json!({"op":"subscribe","id":2,"channels":["quotes.K"],
            "since":{"quotes.K":held},"epoch":epoch}))
        .await;
    assert_eq!(client.recv().await["type"], "subscribed");
    let seen = follow_until(&mut client, &mut states, "quotes.K", 15).await;
    assert_eq!(
        (seen[0]["type"].as_str(), seen[0]["prev"].as_u64()),
        (Some("update"), Some(10)),
        "a replay from 10, not a resync: {seen:?}"
    );
    assert_eq!(states["quotes.K"].1, at_15["data"]);
    assert_eq!(at_15["data"], json!({"n": 15, "restarted": true}));
}
