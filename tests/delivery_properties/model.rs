//! The server side of the property test: the engine under test, and the
//! test's own model of every channel (state, patch and ingest stamp by seq).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use tickcast::channel::ChannelName;
use tickcast::engine::{
    Engine, EngineLimits, EngineStats, Mode, NamespacePolicy, Namespaces, SessionId,
};
use tickcast::record::{FeedRecord, JsonMap};
use tickcast::session::outbox::Outbox;

pub fn object(v: &Value) -> JsonMap {
    v.as_object().cloned().expect("an object")
}

pub fn restrict(v: &Value, fields: Option<&[String]>) -> Value {
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

pub fn touches(patch: &Value, fields: Option<&[String]>) -> bool {
    match fields {
        None => true,
        Some(fields) => object(patch).keys().any(|k| fields.contains(k)),
    }
}

/// RFC 7396 on `Value`s, independent of the engine's own (shared with the
/// socket tests).
pub use crate::common::merge;

/// (opcode, payload) of one server frame.
pub fn split(frame: &[u8]) -> (u8, &[u8]) {
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

/// One channel as the test's own model sees it, indexed by seq.
#[derive(Default)]
pub struct ChannelModel {
    pub states: Vec<Value>,
    pub patches: Vec<Value>,
    pub ingest: Vec<u64>,
}

pub struct Server {
    pub engine: Engine,
    pub epoch: String,
    pub restarts: u32,
    pub history: usize,
    pub model: BTreeMap<String, ChannelModel>,
    pub next_ingest: u64,
    pub next_session: SessionId,
}

impl Server {
    pub fn new(history: usize) -> Self {
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

    pub fn restart_with(&mut self, n: u32) {
        self.restarts = n;
        self.epoch = format!("ep{n}");
        self.engine = engine(&self.epoch, self.history);
        self.model.clear();
    }

    pub fn publish(&mut self, channel: &str, patch: &Value, now: u64) {
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

    pub fn connect(&mut self, bound: usize) -> (SessionId, Arc<Outbox>) {
        let session = self.next_session;
        self.next_session += 1;
        let outbox = Arc::new(Outbox::new(bound));
        self.engine.register(session, outbox.clone());
        (session, outbox)
    }
}

pub fn engine(epoch: &str, history: usize) -> Engine {
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
