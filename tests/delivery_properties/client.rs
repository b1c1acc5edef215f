//! A client that follows the protocol's rule, checking everything it gets
//! against the model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::Value;

use tickcast::channel::Pattern;
use tickcast::engine::SessionId;
use tickcast::session::outbox::{Outbox, QueuedFrame};
use tickcast::session::protocol::SubscribeOptions;

use super::model::{merge, restrict, split, touches, Server};
use super::{is_stream, ClientCfg, Style};

/// Queue bounds below this may not fit a replay: a resync is then fair.
const ROOMY: usize = 16 * 1024;

pub struct Held {
    pub seq: u64,
    pub state: Value,
    pub epoch: String,
}

/// A subscribe the client sent: when, and which resume positions it gave.
#[derive(Clone)]
pub struct Sent {
    pub id: i64,
    pub at: u64,
    pub since: HashMap<String, u64>,
    pub epoch_matches: bool,
}

pub struct Client {
    pub cfg: ClientCfg,
    pub session: SessionId,
    pub outbox: Arc<Outbox>,
    pub held: BTreeMap<String, Held>,
    pub epoch: Option<String>,
    pub next_id: i64,
    pub sent: Vec<Sent>,
    /// The subscribe whose reply came last: its answers follow it.
    pub current: Option<Sent>,
    /// Queue time of the last live update per throttled channel.
    pub last_live: HashMap<String, u64>,
    /// Channels resumed by a subscribe not yet answered (by its id): what
    /// arrives for them before the reply belongs to the old delivery, and
    /// is set aside so the state stays at the `since` that was sent.
    pub frozen: HashMap<String, i64>,
    pub gaps: usize,
    pub closes: usize,
}

impl Client {
    pub fn new(cfg: ClientCfg, server: &mut Server, now: u64) -> Self {
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
    pub fn since(&self, channels: impl Fn(&str) -> bool) -> HashMap<String, u64> {
        self.held
            .iter()
            .filter(|(name, h)| channels(name) && Some(&h.epoch) == self.epoch.as_ref())
            .map(|(name, h)| (name.clone(), h.seq))
            .collect()
    }

    pub fn send_subscribe(
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

    pub fn subscribe_all(&mut self, server: &mut Server, now: u64) {
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
    pub fn resubscribe_channel(&mut self, server: &mut Server, now: u64, channel: &str) {
        let cfg = self.cfg.clone();
        let since = self.since(|c| c == channel);
        let (fields, hz) = match (&cfg.style, is_stream(channel)) {
            (Style::Separate { .. }, true) => (cfg.stream_fields, None),
            _ => (cfg.merge_fields, cfg.merge_hz),
        };
        self.send_subscribe(server, now, &[channel], fields, hz, since);
    }

    pub fn reconnect(&mut self, server: &mut Server, now: u64) {
        server.engine.deregister(self.session);
        let (session, outbox) = server.connect(self.cfg.outbox);
        self.session = session;
        self.outbox = outbox;
        self.forget_connection();
        self.subscribe_all(server, now);
    }

    /// A new connection owes nothing to the old one's requests.
    pub fn forget_connection(&mut self) {
        self.sent.clear();
        self.current = None;
        self.last_live.clear();
        self.frozen.clear();
    }

    /// Reads everything queued (one batch), as a reader that was away would.
    /// Returns whether anything was read.
    pub fn read(&mut self, server: &mut Server, now: u64) -> bool {
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
    pub fn on_message(&mut self, m: &Value, queued_ns: u64, server: &Server) -> Option<String> {
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

    pub fn answering_subscribe(&self, queued_ns: u64) -> Option<&Sent> {
        self.current.as_ref().filter(|s| s.at == queued_ns)
    }

    pub fn on_snapshot(&mut self, m: &Value, queued_ns: u64, server: &Server) {
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
                // snapshot (throttled merge channels only).
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

    pub fn on_update(&mut self, m: &Value, queued_ns: u64, server: &Server) -> Option<String> {
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
