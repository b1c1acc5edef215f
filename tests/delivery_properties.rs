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

#[path = "delivery_properties/client.rs"]
mod client;
mod common;
#[path = "delivery_properties/model.rs"]
mod model;

use proptest::prelude::*;
use serde_json::{json, Value};

use client::Client;
use model::{restrict, Server};

const CHANNELS: [&str; 3] = ["m.a", "m.b", "s.a"];
const KEYS: [&str; 4] = ["a", "b", "c", "d"];

// The case: what the generator draws.

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
