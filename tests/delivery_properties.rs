//! Property test of per-subscription delivery: field filters, `max_hz`,
//! `since`/`epoch` resume, and merge vs stream namespaces.
//!
//! It drives the [`Engine`] directly (no sockets) with a virtual clock:
//! random updates (nested objects, nulls, members flipping between objects
//! and scalars) on two merge channels and one stream channel; one or two
//! clients with random field filters, random `max_hz`, random queue bounds
//! (a small one makes a slow reader that the engine closes with 1013); random
//! reads, re-subscribes, reconnects and server restarts (a new epoch). Each
//! client follows the protocol's rule: apply snapshots, apply updates whose
//! `prev` matches, otherwise subscribe again with `since`.
//!
//! Checked on every message and at the end:
//! (a) a client never holds a wrong state: after every message its state is
//!     the server's state at that seq restricted to its fields, and at the
//!     end it has converged to the server's current state;
//! (b) without filters or `max_hz`, it sees every seq exactly once and in
//!     order (a resync only where history could not serve the resume);
//! (c) a stream channel never skips a seq (nor coalesces) without closing
//!     the connection;
//! and also: `prev` always chains, `ts` is the ingest stamp of the latest
//! update the message carries, throttled channels send at most one update
//! per interval, and every close is a 1013.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 2000).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::FutureExt;
use proptest::prelude::*;
use serde_json::{json, Value};

use tickcast::channel::{ChannelName, Pattern};
use tickcast::engine::{
    Engine, EngineLimits, EngineStats, Mode, NamespacePolicy, Namespaces, SessionId,
};
use tickcast::record::{FeedRecord, JsonMap};
use tickcast::session::outbox::{Outbox, QueuedFrame};
use tickcast::session::protocol::SubscribeOptions;

const CHANNELS: [&str; 3] = ["m.a", "m.b", "s.a"];
const KEYS: [&str; 4] = ["a", "b", "c", "d"];
/// Queue bounds below this may not fit a replay: a resync is then fair.
const ROOMY: usize = 16 * 1024;

// ---------------------------------------------------------------- the case

#[derive(Debug, Clone)]
enum Style {
    /// `m.*`/`s.*` (or the exact names) in two subscribes with their own options.
    Separate { patterns: bool },
    /// One subscribe to `>`: `max_hz` then applies to merge channels only.
    All,
}

#[derive(Debug, Clone)]
struct ClientCfg {
    style: Style,
    merge_fields: Option<Vec<String>>,
    merge_hz: Option<u32>,
    stream_fields: Option<Vec<String>>,
    outbox: usize,
}

impl ClientCfg {
    fn filter(&self, channel: &str) -> Option<&[String]> {
        match (&self.style, is_stream(channel)) {
            (Style::Separate { .. }, true) => self.stream_fields.as_deref(),
            _ => self.merge_fields.as_deref(),
        }
    }

    /// The throttle interval in ns, if this channel is throttled.
    fn interval(&self, channel: &str) -> Option<u64> {
        if is_stream(channel) {
            return None;
        }
        self.merge_hz.map(|hz| 1_000_000_000 / u64::from(hz))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        channel: usize,
        patch: Value,
    },
    /// Several updates in the same instant.
    Burst {
        channel: usize,
        patches: Vec<Value>,
    },
    Tick,
    Read {
        client: usize,
    },
    Resubscribe {
        client: usize,
    },
    Reconnect {
        client: usize,
    },
    Restart,
}

#[derive(Debug, Clone)]
struct Case {
    history: usize,
    clients: Vec<ClientCfg>,
    steps: Vec<(u64, Op)>,
}

fn is_stream(channel: &str) -> bool {
    channel.starts_with("s.")
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..4).prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1, 2])),
        Just(json!("s")),
    ]
}

/// A member value: a leaf, or an object (possibly empty, possibly nested).
fn member() -> impl Strategy<Value = Value> {
    let inner = prop_oneof![3 => leaf(), 1 => leaf().prop_map(|v| json!({ "z": v }))];
    let object = prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), inner, 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![3 => leaf(), 2 => object]
}

fn patch() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), member(), 1..4)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

fn fields() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(
        prop::sample::subsequence(KEYS.to_vec(), 1..=3)
            .prop_map(|f| f.into_iter().map(str::to_owned).collect()),
    )
}

fn client_cfg() -> impl Strategy<Value = ClientCfg> {
    let style = prop_oneof![
        any::<bool>().prop_map(|patterns| Style::Separate { patterns }),
        Just(Style::All),
    ];
    (
        style,
        fields(),
        prop::option::of(prop::sample::select(vec![10u32, 100, 1000])),
        fields(),
        prop::sample::select(vec![65536usize, 4096, 1500]),
    )
        .prop_map(
            |(style, merge_fields, merge_hz, stream_fields, outbox)| ClientCfg {
                style,
                merge_fields,
                merge_hz,
                stream_fields,
                outbox,
            },
        )
}

fn step(clients: usize) -> impl Strategy<Value = (u64, Op)> {
    let dt = prop::sample::select(vec![
        1u64,
        300_000,
        1_000_000,
        7_000_000,
        40_000_000,
        150_000_000,
    ]);
    let op = prop_oneof![
        24 => (0..CHANNELS.len(), patch()).prop_map(|(channel, patch)| Op::Publish { channel, patch }),
        6 => (0..CHANNELS.len(), prop::collection::vec(patch(), 2..10))
            .prop_map(|(channel, patches)| Op::Burst { channel, patches }),
        4 => Just(Op::Tick),
        10 => (0..clients).prop_map(|client| Op::Read { client }),
        2 => (0..clients).prop_map(|client| Op::Resubscribe { client }),
        2 => (0..clients).prop_map(|client| Op::Reconnect { client }),
        1 => Just(Op::Restart),
    ];
    (dt, op)
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![0usize, 2, 8, 64]),
        prop::collection::vec(client_cfg(), 1..=2),
    )
        .prop_flat_map(|(history, clients)| {
            let steps = prop::collection::vec(step(clients.len()), 1..80);
            (Just(history), Just(clients), steps)
        })
        .prop_map(|(history, clients, steps)| Case {
            history,
            clients,
            steps,
        })
}

// ---------------------------------------------------------------- helpers

fn object(v: &Value) -> JsonMap {
    v.as_object().cloned().expect("an object")
}

fn restrict(v: &Value, fields: Option<&[String]>) -> Value {
    match fields {
        None => v.clone(),
        Some(fields) => Value::Object(
            object(v)
                .into_iter()
                .filter(|(k, _)| fields.contains(k))
                .collect(),
        ),
    }
}

fn touches(patch: &Value, fields: Option<&[String]>) -> bool {
    match fields {
        None => true,
        Some(fields) => object(patch).keys().any(|k| fields.contains(k)),
    }
}

/// RFC 7396 on `Value`s, independent of the engine's own.
fn merge(target: &mut Value, patch: &Value) {
    if let Value::Object(patch) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let map = target.as_object_mut().unwrap();
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// (opcode, payload) of one server frame.
fn split(frame: &[u8]) -> (u8, &[u8]) {
    let (len, start) = match frame[1] {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    assert_eq!(frame.len(), start + len);
    (frame[0] & 0x0F, &frame[start..])
}

// ---------------------------------------------------------------- server

/// One channel as the test's own model sees it, indexed by seq.
#[derive(Default)]
struct ChannelModel {
    states: Vec<Value>,
    patches: Vec<Value>,
    ingest: Vec<u64>,
}

struct Server {
    engine: Engine,
    epoch: String,
    restarts: u32,
    history: usize,
    model: BTreeMap<String, ChannelModel>,
    next_ingest: u64,
    next_session: SessionId,
}

impl Server {
    fn new(history: usize) -> Self {
        Self {
            engine: engine("ep0", history),
            epoch: "ep0".into(),
            restarts: 0,
            history,
            model: BTreeMap::new(),
            next_ingest: 1_700_000_000_000_000_000,
            next_session: 1,
        }
    }

    fn restart_with(&mut self, n: u32) {
        self.restarts = n;
        self.epoch = format!("ep{n}");
        self.engine = engine(&self.epoch, self.history);
        self.model.clear();
    }

    fn publish(&mut self, channel: &str, patch: &Value, now: u64) {
        self.next_ingest += 1000;
        let record = FeedRecord {
            channel: ChannelName::new(channel).unwrap(),
            data: object(patch),
            ts: None,
            ingest_ns: self.next_ingest,
        };
        self.engine.apply(&record, now);
        let model = self
            .model
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelModel {
                states: vec![json!({})],
                patches: vec![Value::Null],
                ingest: vec![0],
            });
        let mut state = model.states.last().unwrap().clone();
        merge(&mut state, patch);
        model.states.push(state);
        model.patches.push(patch.clone());
        model.ingest.push(self.next_ingest);
    }

    fn connect(&mut self, bound: usize) -> (SessionId, Arc<Outbox>) {
        let session = self.next_session;
        self.next_session += 1;
        let outbox = Arc::new(Outbox::new(bound));
        self.engine.register(session, outbox.clone());
        (session, outbox)
    }
}

fn engine(epoch: &str, history: usize) -> Engine {
    let limits = EngineLimits {
        max_targets_per_session: 64,
        max_channels: 64,
    };
    let namespaces = Namespaces::default()
        .with(
            "m",
            NamespacePolicy {
                mode: Mode::Merge,
                history,
            },
        )
        .with(
            "s",
            NamespacePolicy {
                mode: Mode::Stream,
                history,
            },
        );
    Engine::new(Arc::from(epoch), limits, Arc::new(EngineStats::default()))
        .with_namespaces(namespaces)
}

// ---------------------------------------------------------------- client

struct Held {
    seq: u64,
    state: Value,
    epoch: String,
}

/// A subscribe the client sent: when, and which resume positions it gave.
#[derive(Clone)]
struct Sent {
    id: i64,
    at: u64,
    since: HashMap<String, u64>,
    epoch_matches: bool,
}

struct Client {
    cfg: ClientCfg,
    session: SessionId,
    outbox: Arc<Outbox>,
    held: BTreeMap<String, Held>,
    epoch: Option<String>,
    next_id: i64,
    sent: Vec<Sent>,
    /// The subscribe whose reply came last: its answers follow it.
    current: Option<Sent>,
    /// Queue time of the last live update per throttled channel.
    last_live: HashMap<String, u64>,
    /// Channels resumed by a subscribe not yet answered (by its id): what
    /// arrives for them before the reply belongs to the old delivery, and
    /// is set aside so the state stays at the `since` that was sent.
    frozen: HashMap<String, i64>,
    gaps: usize,
    closes: usize,
}

impl Client {
    fn new(cfg: ClientCfg, server: &mut Server, now: u64) -> Self {
        let (session, outbox) = server.connect(cfg.outbox);
        let mut client = Self {
            cfg,
            session,
            outbox,
            held: BTreeMap::new(),
            epoch: None,
            next_id: 1,
            sent: Vec::new(),
            current: None,
            last_live: HashMap::new(),
            frozen: HashMap::new(),
            gaps: 0,
            closes: 0,
        };
        client.subscribe_all(server, now);
        client
    }

    /// Resume positions for `channels`: only those held in the epoch sent.
    fn since(&self, channels: impl Fn(&str) -> bool) -> HashMap<String, u64> {
        self.held
            .iter()
            .filter(|(name, h)| channels(name) && Some(&h.epoch) == self.epoch.as_ref())
            .map(|(name, h)| (name.clone(), h.seq))
            .collect()
    }

    fn send_subscribe(
        &mut self,
        server: &mut Server,
        now: u64,
        targets: &[&str],
        fields: Option<Vec<String>>,
        max_hz: Option<u32>,
        since: HashMap<String, u64>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let epoch_matches = self.epoch.as_deref() == Some(server.epoch.as_str());
        for channel in since.keys() {
            self.frozen.insert(channel.clone(), id);
        }
        self.sent.push(Sent {
            id,
            at: now,
            since: since.clone(),
            epoch_matches,
        });
        let options = SubscribeOptions {
            fields,
            max_hz: max_hz.map(f64::from),
            since,
            epoch: self.epoch.clone(),
        };
        let targets = targets.iter().map(|t| Pattern::new(t).unwrap()).collect();
        server
            .engine
            .subscribe(self.session, Some(id), targets, options, now);
    }

    fn subscribe_all(&mut self, server: &mut Server, now: u64) {
        let cfg = self.cfg.clone();
        match cfg.style {
            Style::All => {
                let since = self.since(|_| true);
                self.send_subscribe(server, now, &[">"], cfg.merge_fields, cfg.merge_hz, since);
            }
            Style::Separate { patterns } => {
                let (merge, stream): (&[&str], &[&str]) = if patterns {
                    (&["m.*"], &["s.*"])
                } else {
                    (&["m.a", "m.b"], &["s.a"])
                };
                let since = self.since(|c| !is_stream(c));
                self.send_subscribe(server, now, merge, cfg.merge_fields, cfg.merge_hz, since);
                let since = self.since(is_stream);
                self.send_subscribe(server, now, stream, cfg.stream_fields, None, since);
            }
        }
    }

    /// The protocol's rule on a gap: subscribe to the channel again, with `since`.
    fn resubscribe_channel(&mut self, server: &mut Server, now: u64, channel: &str) {
        let cfg = self.cfg.clone();
        let since = self.since(|c| c == channel);
        let (fields, hz) = match (&cfg.style, is_stream(channel)) {
            (Style::Separate { .. }, true) => (cfg.stream_fields, None),
            _ => (cfg.merge_fields, cfg.merge_hz),
        };
        self.send_subscribe(server, now, &[channel], fields, hz, since);
    }

    fn reconnect(&mut self, server: &mut Server, now: u64) {
        server.engine.deregister(self.session);
        let (session, outbox) = server.connect(self.cfg.outbox);
        self.session = session;
        self.outbox = outbox;
        self.forget_connection();
        self.subscribe_all(server, now);
    }

    /// A new connection owes nothing to the old one's requests.
    fn forget_connection(&mut self) {
        self.sent.clear();
        self.current = None;
        self.last_live.clear();
        self.frozen.clear();
    }

    /// Reads everything queued (one batch), as a reader that was away would.
    /// Returns whether anything was read.
    fn read(&mut self, server: &mut Server, now: u64) -> bool {
        let mut frames: Vec<QueuedFrame> = Vec::new();
        let Some(batch) = self.outbox.take(&mut frames).now_or_never() else {
            return false;
        };
        let mut gapped = Vec::new();
        for frame in &frames {
            let (opcode, payload) = split(&frame.bytes);
            assert_eq!(opcode, 1, "only text frames before a close");
            let message: Value = serde_json::from_slice(payload).unwrap();
            if let Some(channel) = self.on_message(&message, frame.queued_ns, server) {
                if !gapped.contains(&channel) {
                    gapped.push(channel);
                }
            }
        }
        if let Some(close) = batch.close {
            let (opcode, payload) = split(&close);
            assert_eq!(opcode, 8);
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            assert_eq!(code, 1013, "the only close is the slow-consumer close");
            self.closes += 1;
            self.reconnect(server, now);
            return true;
        }
        // As the session's writer does: once everything taken is written,
        // a session the engine held diffs for is reported drained.
        if self.outbox.done() {
            server.engine.drained(self.session, now);
        }
        for channel in gapped {
            self.resubscribe_channel(server, now, &channel);
        }
        true
    }

    /// Applies one message; returns a channel that has a gap.
    fn on_message(&mut self, m: &Value, queued_ns: u64, server: &Server) -> Option<String> {
        match m["type"].as_str().unwrap() {
            "subscribed" => {
                let id = m["id"].as_i64().unwrap();
                let pos = self.sent.iter().position(|s| s.id == id).unwrap();
                self.current = Some(self.sent.remove(pos));
                self.last_live.clear();
                self.frozen.retain(|_, waiting| *waiting != id);
                None
            }
            _ if self.frozen.contains_key(m["channel"].as_str().unwrap()) => None,
            "snapshot" => {
                self.on_snapshot(m, queued_ns, server);
                None
            }
            "update" => self.on_update(m, queued_ns, server),
            other => panic!("unexpected message {other}: {m}"),
        }
    }

    fn answering_subscribe(&self, queued_ns: u64) -> Option<&Sent> {
        self.current.as_ref().filter(|s| s.at == queued_ns)
    }

    fn on_snapshot(&mut self, m: &Value, queued_ns: u64, server: &Server) {
        let channel = m["channel"].as_str().unwrap().to_owned();
        let seq = m["seq"].as_u64().unwrap();
        let epoch = m["epoch"].as_str().unwrap().to_owned();
        let resync = m["resync"].as_bool().unwrap_or(false);
        let fields = self.cfg.filter(&channel);
        assert_eq!(epoch, server.epoch);
        let model = &server.model[&channel];
        // (a): a snapshot is the server's state at its seq, filtered.
        assert_eq!(
            m["data"],
            restrict(&model.states[seq as usize], fields),
            "{m}"
        );
        let held_here = self.held.get(&channel).is_some_and(|h| h.epoch == epoch);
        match self.answering_subscribe(queued_ns) {
            Some(sent) => match sent.since.get(&channel) {
                None => assert!(!resync, "a plain subscribe is not a resync: {m}"),
                Some(&since) => {
                    assert!(resync, "a snapshot answering since is a resync: {m}");
                    // (b), (c): a resync only where the resume could not be served.
                    let fair = !sent.epoch_matches
                        || since > seq
                        || seq - since > server.history as u64
                        || self.cfg.outbox < ROOMY;
                    assert!(
                        fair,
                        "needless resync from {since} (history {}): {m}",
                        server.history
                    );
                }
            },
            None => {
                assert!(!resync, "{m}");
                // A channel's first snapshot, or a held diff flushed as a
                // snapshot (throttled merge channels, or a slow reader's
                // merge channels held while its queue was full).
                assert!(
                    !held_here || self.cfg.interval(&channel).is_some() || self.cfg.outbox < ROOMY,
                    "unasked snapshot on a held channel: {m}"
                );
            }
        }
        if held_here {
            assert!(seq >= self.held[&channel].seq, "a snapshot went back: {m}");
        }
        self.epoch = Some(epoch.clone());
        self.held.insert(
            channel,
            Held {
                seq,
                state: m["data"].clone(),
                epoch,
            },
        );
    }

    fn on_update(&mut self, m: &Value, queued_ns: u64, server: &Server) -> Option<String> {
        let channel = m["channel"].as_str().unwrap().to_owned();
        let seq = m["seq"].as_u64().unwrap();
        let prev = m["prev"].as_u64().unwrap();
        let ts = m["ts"].as_u64().unwrap();
        let data = &m["data"];
        let fields = self.cfg.filter(&channel).map(<[String]>::to_vec);
        let fields = fields.as_deref();
        let interval = self.cfg.interval(&channel);
        let replayed = self.answering_subscribe(queued_ns).is_some();
        let Some(held) = self.held.get_mut(&channel) else {
            panic!("update before any snapshot: {m}");
        };
        assert_eq!(
            held.epoch, server.epoch,
            "an update on a stale channel: {m}"
        );
        if prev != held.seq {
            self.gaps += 1;
            return Some(channel);
        }
        assert!(seq > prev, "{m}");
        let model = &server.model[&channel];
        // `ts` is the ingest stamp of the latest update this message carries.
        let latest = (prev + 1..=seq)
            .rev()
            .find(|&s| touches(&model.patches[s as usize], fields))
            .expect("an update carries at least one change");
        assert_eq!(ts, model.ingest[latest as usize], "{m}");
        // Merge channels of a reader whose queue can fill are coalesced while
        // it lags; everything else is never coalesced.
        let may_coalesce = interval.is_some() || (!is_stream(&channel) && self.cfg.outbox < ROOMY);
        if !may_coalesce {
            // Never coalesced: exactly the update at `seq`, and every
            // update in between touched none of the fields. (c) for stream
            // channels; (b) for the unfiltered merge ones below.
            assert_eq!(*data, restrict(&model.patches[seq as usize], fields), "{m}");
            for s in prev + 1..seq {
                assert!(
                    !touches(&model.patches[s as usize], fields),
                    "seq {s} skipped: {m}"
                );
            }
            if fields.is_none() {
                assert_eq!(seq, prev + 1, "every seq once and in order: {m}");
            }
        }
        merge(&mut held.state, data);
        held.seq = seq;
        // (a): never a wrong state.
        assert_eq!(
            held.state,
            restrict(&model.states[seq as usize], fields),
            "state after {m}"
        );
        if let (Some(interval), false) = (interval, replayed) {
            if let Some(last) = self.last_live.insert(channel.clone(), queued_ns) {
                assert!(
                    queued_ns - last >= interval,
                    "two updates {}ns apart under a {interval}ns interval: {m}",
                    queued_ns - last
                );
            }
        }
        None
    }
}

// ---------------------------------------------------------------- the run

fn run(case: &Case) {
    let mut now = 1_000_000_000u64;
    let mut server = Server::new(case.history);
    let mut clients: Vec<Client> = case
        .clients
        .iter()
        .map(|cfg| Client::new(cfg.clone(), &mut server, now))
        .collect();
    for (dt, op) in &case.steps {
        now += dt;
        // What the engine task does whenever it wakes.
        server.engine.flush_due(now);
        match op {
            Op::Publish { channel, patch } => server.publish(CHANNELS[*channel], patch, now),
            Op::Burst { channel, patches } => {
                for patch in patches {
                    server.publish(CHANNELS[*channel], patch, now);
                }
            }
            Op::Tick => {}
            Op::Read { client } => {
                clients[*client].read(&mut server, now);
            }
            Op::Resubscribe { client } => clients[*client].subscribe_all(&mut server, now),
            Op::Reconnect { client } => clients[*client].reconnect(&mut server, now),
            Op::Restart => {
                let n = server.restarts + 1;
                server.restart_with(n);
                for client in &mut clients {
                    // The old connections died with the server, unread frames too.
                    let (session, outbox) = server.connect(client.cfg.outbox);
                    client.session = session;
                    client.outbox = outbox;
                    client.forget_connection();
                    client.subscribe_all(&mut server, now);
                }
            }
        }
    }
    // Let every held diff fall due and every client catch up.
    let mut settled = false;
    for _ in 0..20 {
        now += 1_000_000_000;
        server.engine.flush_due(now);
        let mut read = false;
        for client in &mut clients {
            for _ in 0..20 {
                if !client.read(&mut server, now) {
                    break;
                }
                read = true;
                now += 1;
                server.engine.flush_due(now);
            }
        }
        if !read && server.engine.next_due().is_none() {
            settled = true;
            break;
        }
    }
    let report: Vec<(usize, usize, u64)> = clients
        .iter()
        .map(|c| (c.gaps, c.closes, c.outbox.queued_bytes() as u64))
        .collect();
    assert!(
        settled,
        "clients did not settle: (gaps, closes, queued) {report:?} next_due {:?}",
        server.engine.next_due()
    );
    for client in &clients {
        assert_eq!(client.gaps, 0, "prev must always chain");
        for (name, model) in &server.model {
            let fields = client.cfg.filter(name);
            let held = client
                .held
                .get(name)
                .unwrap_or_else(|| panic!("{name} never arrived"));
            assert_eq!(held.epoch, server.epoch);
            // (a): converged to the server's state, restricted to its fields.
            assert_eq!(
                held.state,
                restrict(model.states.last().unwrap(), fields),
                "{name}"
            );
            let server_seq = model.states.len() as u64 - 1;
            if fields.is_none() {
                assert_eq!(held.seq, server_seq, "{name}");
            } else {
                assert!(held.seq <= server_seq);
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn clients_never_hold_a_wrong_state(case in case()) {
        run(&case);
    }
}

/// The trap, deterministically: a member set to a scalar and then to an
/// object while throttled must not be sent as one merge patch.
#[test]
fn a_scalar_then_an_object_while_throttled_arrives_as_a_snapshot() {
    let cfg = ClientCfg {
        style: Style::Separate { patterns: false },
        merge_fields: None,
        merge_hz: Some(10),
        stream_fields: None,
        outbox: 65536,
    };
    let case = Case {
        history: 8,
        clients: vec![cfg],
        steps: vec![
            (
                1,
                Op::Publish {
                    channel: 0,
                    patch: json!({"a": {"x": 1, "y": 2}}),
                },
            ),
            (1, Op::Read { client: 0 }),
            (
                1,
                Op::Publish {
                    channel: 0,
                    patch: json!({"b": 1}),
                },
            ),
            (
                1,
                Op::Publish {
                    channel: 0,
                    patch: json!({"a": 5}),
                },
            ),
            (
                1,
                Op::Publish {
                    channel: 0,
                    patch: json!({"a": {"z": 1}}),
                },
            ),
            (1, Op::Read { client: 0 }),
        ],
    };
    run(&case);
}
